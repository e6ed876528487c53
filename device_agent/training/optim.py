"""Optimizers, LR schedules and gradient clipping with torch.optim's exact semantics.

    opt = make_optimizer("adam", {"fc.weight": (10, 64), ...}, np.float32, betas=(0.9, 0.999))
    lr = lr_at(step, base_lr=1e-3, schedule="cosine", total_steps=600, steps_per_epoch=30)
    clip_grad_norm(grads, 1.0)           # in place, returns the total norm before clipping
    opt.step(params, grads, lr)          # in place on params

Each update is written per tensor in the order torch's single-tensor (foreach=False) code runs it
(torch/optim/sgd.py `_single_tensor_sgd`, adam.py `_single_tensor_adam`), so that the OpenCL kernels
can copy it line for line. The state is a flat dict of named arrays (checkpoints store it as is):
    "step"                      () int64: updates done so far
    "<param>.momentum_buffer"   SGD with momentum
    "<param>.exp_avg", "<param>.exp_avg_sq"   Adam / AdamW
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import BackendError


# ============================================================================ per-tensor updates
def sgd_update(p, g, buf, *, lr: float, momentum: float, nesterov: bool, weight_decay: float,
               first: bool) -> None:
    """p, g, buf (same shape); p (and buf) updated in place. dampening is 0."""
    if weight_decay != 0:
        g = g + weight_decay * p                  # grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if first:
            buf[...] = g                          # buf = clone(grad)
        else:
            buf *= momentum                       # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            buf += g
        g = g + momentum * buf if nesterov else buf   # grad.add(buf, alpha=momentum) | buf
    p -= lr * g                                   # param.add_(grad, alpha=-lr)


def adam_update(p, g, m, v, *, step: int, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, decoupled: bool) -> None:
    """p, g, m, v (same shape), step = this update's 1-based count; p, m, v updated in place.
    decoupled: AdamW (param.mul_(1 - lr·wd)); else Adam's L2 (grad += wd·param)."""
    if weight_decay != 0:
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    w = 1 - beta1                                 # exp_avg.lerp_(grad, 1 - beta1), weight < 0.5 branch:
    if w < 0.5:
        m += w * (g - m)                          #   self + weight * (end - self)
    else:
        m[...] = g - (g - m) * (1 - w)            #   end - (end - self) * (1 - weight)
    v *= beta2                                    # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    v += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    denom = np.sqrt(v) / bias_correction2 ** 0.5 + eps   # (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    p += -step_size * m / denom                   # param.addcdiv_(exp_avg, denom, value=-step_size)


# ============================================================================ optimizers
class Optimizer:
    """Holds the state of every parameter it updates; `step` applies one update in place."""

    name = ""
    slots: tuple[str, ...] = ()

    def __init__(self, shapes: dict[str, tuple], dtype=np.float32):
        self.names = list(shapes)
        self.dtype = np.dtype(dtype)
        self.t = 0
        self._state = {f"{k}.{s}": np.zeros(shapes[k], self.dtype) for k in self.names for s in self.slots}

    def state(self) -> dict[str, np.ndarray]:
        out = {k: v.copy() for k, v in self._state.items()}
        out["step"] = np.asarray(self.t, np.int64)
        return out

    def load_state(self, d: dict[str, np.ndarray]) -> None:
        want = set(self._state) | {"step"}
        if set(d) != want:
            diff = sorted(want ^ set(d))
            raise BackendError(f"optimizer state does not match the {self.name} optimizer of these "
                               f"parameters (e.g. '{diff[0]}')")
        for k, v in self._state.items():
            if tuple(d[k].shape) != v.shape:
                raise BackendError(f"optimizer state '{k}' has shape {tuple(d[k].shape)}, expected {v.shape}")
            v[...] = d[k]
        self.t = int(d["step"])

    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self._state.values()))

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        self.t += 1
        for k in self.names:
            self._update(k, params[k], grads[k], lr)

    def _update(self, k, p, g, lr):
        raise NotImplementedError


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, shapes, dtype=np.float32, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.slots = ("momentum_buffer",) if momentum != 0 else ()
        super().__init__(shapes, dtype)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)

    def _update(self, k, p, g, lr):
        buf = self._state.get(f"{k}.momentum_buffer")
        sgd_update(p, g, buf, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                   weight_decay=self.weight_decay, first=self.t == 1)


class Adam(Optimizer):
    name = "adam"
    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, shapes, dtype=np.float32, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(shapes, dtype)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _update(self, k, p, g, lr):
        adam_update(p, g, self._state[f"{k}.exp_avg"], self._state[f"{k}.exp_avg_sq"], step=self.t, lr=lr,
                    beta1=self.beta1, beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay,
                    decoupled=self.decoupled)


class AdamW(Adam):
    name = "adamw"
    decoupled = True


def make_optimizer(name: str, shapes: dict[str, tuple], dtype=np.float32, *, momentum=0.0, nesterov=False,
                   weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8) -> Optimizer:
    if name == "sgd":
        return SGD(shapes, dtype, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        cls = Adam if name == "adam" else AdamW
        return cls(shapes, dtype, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: sgd, adam, adamw)")


# ============================================================================ schedules, clipping
def lr_at(step: int, *, base_lr: float, schedule: str = "constant", total_steps: int = 1,
          steps_per_epoch: int = 1, warmup_steps: int = 0, step_size: int = 1, gamma: float = 0.1) -> float:
    """Learning rate of update `step` (0-based global step), a pure function of it.

      constant  base_lr
      step      base_lr · gamma^(epoch // step_size), epoch = step // steps_per_epoch   (torch StepLR per epoch)
      cosine    base_lr · (1 + cos(π t / T)) / 2, t = step - warmup, T = total - warmup (CosineAnnealingLR, eta_min 0)
    times (step + 1) / warmup_steps for the first warmup_steps updates (LinearLR(1/W, 1, W - 1))."""
    if schedule == "constant":
        lr = base_lr
    elif schedule == "step":
        lr = base_lr * gamma ** ((step // max(steps_per_epoch, 1)) // step_size)
    elif schedule == "cosine":
        t, T = max(step - warmup_steps, 0), max(total_steps - warmup_steps, 1)
        lr = base_lr * (1 + math.cos(math.pi * min(t, T) / T)) / 2
    else:
        raise ValueError(f"unknown schedule {schedule!r} (known: constant, step, cosine)")
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so that their global L2 norm is at most max_norm, exactly as
    torch.nn.utils.clip_grad_norm_: coef = max_norm / (total + 1e-6), applied when < 1.
    Returns the total norm before clipping (the norm of the per-tensor norms)."""
    gs = list(grads.values())
    if not gs:
        return 0.0
    dt = gs[0].dtype
    norms = np.array([np.sqrt(np.vdot(g.ravel(), g.ravel())) for g in gs], dtype=dt)
    total = np.sqrt(np.vdot(norms, norms)).astype(dt)
    coef = dt.type(max_norm) / (total + dt.type(1e-6))
    if coef < 1:
        for g in gs:
            g *= coef
    return float(total)
