"""Optimizer updates and gradient clipping as kernels (kernels/optim.cl), recorded into a Plan's
launch list like any op launch. torch.optim semantics, as device_agent/training/optim.py writes them out.

    partial = alloc(clip_partials([g.size for g in grads]) floats); scale = alloc(2 floats)
    prox_grad(b, g, p, anchor, mu=0.01)                          # FedProx: g += mu·(p - anchor)
    clip_grad_norm(b, grads, partial, scale, max_norm=1.0)      # scale[0] = factor, scale[1] = norm
    sgd_step(b, p, g, buf, momentum=0.9, nesterov=True, weight_decay=5e-4, scale=scale)
    adam_step(b, p, g, m, v, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, decoupled=True)
    replay(queue, b.launches, {"lr": np.float32(lr), "step": np.int32(t)})   # t counts from 1

p, g and the state buffers are flat float32 TensorRefs of one size (a whole parameter arena, or
one segment of it). Per-step values are dynamic arguments, named by lr_key / step_key:
    lr    np.float32, this update's learning rate
    step  np.int32, this update's 1-based count (SGD: step 1 initialises the momentum buffer from
          the gradient, as torch does; Adam: bias corrections)
Clipping never reaches the host: pass 1 writes partial sums of g² per work-group, pass 2 (one
work-group) turns them into the factor the update kernels multiply every gradient by (`scale`).
The gradient buffers themselves are left unscaled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError
from ...ops._cl import FlexLocal, elt, local_floats, reduce_wg


@dataclass(frozen=True)
class OptimConfig:
    """torch.optim semantics: kind 'sgd' (momentum, dampening 0, nesterov, weight_decay),
    'adam' (L2 weight decay added to the gradient) or 'adamw' (decoupled weight decay)."""

    kind: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float = 0.0   # 0 = off
    prox_mu: float = 0.0          # FedProx's mu (0 = off): the store keeps an anchor, the Plan adds prox_grad

    def slots(self) -> tuple[str, ...]:
        """The per-parameter state buffers this optimizer keeps."""
        if self.kind == "sgd":
            return ("momentum",) if self.momentum else ()
        if self.kind in ("adam", "adamw"):
            return ("exp_avg", "exp_avg_sq")
        raise BackendError(f"unknown optimizer '{self.kind}' (sgd, adam, adamw)")


FILE = "optim.cl"
# Work-groups per gradient segment in clipping pass 1: enough to fill a phone GPU, few enough
# that pass 2 is one small work-group.
CLIP_GROUPS = 64
CLIP_WG = 256   # work-items per group in pass 1 (the kernel caps it at the device limit)
VEC = 8         # elements per work-item of the CPU-shaped updates (kernels/optim.cl OPTVW)


def _groups(n: int) -> int:
    return max(1, min(CLIP_GROUPS, -(-int(n) // CLIP_WG)))


def clip_partials(sizes) -> int:
    """How many floats the `partial` buffer of clip_grad_norm needs for gradient segments of these sizes."""
    return sum(_groups(n) for n in sizes)


def clip_grad_norm(b, grads, partial, scale, max_norm: float) -> None:
    """scale[0] <- min(max_norm / (||grads||_2 + 1e-6), 1) over all segments together
    (torch.nn.utils.clip_grad_norm_); scale[1] <- the norm, when scale has 2 elements."""
    grads = [grads] if not isinstance(grads, (list, tuple)) else list(grads)
    need = clip_partials([g.size for g in grads])
    if partial.size < need:
        raise BackendError(f"clip_grad_norm: partial buffer holds {partial.size} floats, needs {need}")
    off = 0
    for g in grads:
        groups = _groups(g.size)
        wg = reduce_wg(b, FILE, "grad_sq_sum", CLIP_WG)
        b.launch(FILE, "grad_sq_sum", (groups * wg,), (wg,), g, partial, g.size, off, local_floats(wg))
        off += groups
    wg = reduce_wg(b, FILE, "clip_scale", off)
    b.launch(FILE, "clip_scale", (wg,), (wg,), partial, scale, off, np.float32(max_norm), scale.size >= 2,
             local_floats(wg))


def prox_grad(b, grad, param, anchor, mu: float) -> None:
    """grad += mu·(param - anchor) in place (FedProx's proximal term, before clipping and the update)."""
    _check(param, grad, anchor)
    b.launch(FILE, "prox_grad", (param.size,), elt(b), grad, param, anchor, param.size, np.float32(mu))


def _check(param, grad, *state):
    for t in (grad,) + state:
        if t is not None and t.size != param.size:
            raise BackendError(f"optimizer buffer '{t.name}' has {t.size} elements, "
                               f"parameters have {param.size}")


VEC_KERNELS = {"sgd_step": "sgd_step_vec", "adam_step": "adam_step_vec", "adamw_step": "adamw_step_vec"}
VEC_WIDTHS = (1, 2, 4, 8)


def update_vec(b) -> int:
    """Elements per work-item of the updates on this builder's device: tuning "optim" -> "vec", else VEC
    on CPU devices and 1 elsewhere."""
    vec = b.tuning("optim").get("vec", VEC if b.kind == "cpu" else 1)
    if vec not in VEC_WIDTHS:
        raise BackendError(f"tuning optim vec must be one of {', '.join(map(str, VEC_WIDTHS))}, got {vec!r}")
    return int(vec)


def _update(kernel: str, b, n: int) -> tuple:
    """(kernel, gsize, lsize, defines) of an update: with a vector width > 1 (update_vec: 8 on a CPU
    device) the *_vec form, that many elements per work-item as one vector, the same bits as the scalar
    kernel (kernels/optim.cl; 3x (SGD) and 8x (Adam) faster on PoCL), else one element per work-item."""
    vec = update_vec(b)
    if vec > 1:
        lsize = FlexLocal((64,)) if b.kind == "cpu" else elt(b)
        return VEC_KERNELS[kernel], (-(-int(n) // vec),), lsize, {"OPTVW": vec}
    return kernel, (int(n),), elt(b), None


def sgd_step(b, param, grad, momentum_buf=None, *, momentum: float = 0.0, dampening: float = 0.0,
             nesterov: bool = False, weight_decay: float = 0.0, scale=None, lr_key: str = "lr",
             step_key: str = "step") -> None:
    """torch.optim.SGD on one flat segment; momentum_buf (like param) is needed when momentum != 0."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise BackendError("Nesterov momentum requires a momentum and zero dampening")
    if momentum != 0 and momentum_buf is None:
        raise BackendError("SGD with momentum needs a momentum buffer")
    _check(param, grad, momentum_buf)
    kernel, gsize, lsize, defines = _update("sgd_step", b, param.size)
    b.launch(FILE, kernel, gsize, lsize, param, grad, momentum_buf or param, scale or grad,
             param.size, scale is not None, np.float32(momentum), np.float32(1 - dampening),
             np.float32(weight_decay), nesterov, np.float32(0), np.int32(0), dyn={10: lr_key, 11: step_key},
             defines=defines)


def adam_step(b, param, grad, exp_avg, exp_avg_sq, *, betas=(0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled: bool = False, scale=None, lr_key: str = "lr",
              step_key: str = "step") -> None:
    """torch.optim.Adam (decoupled=False, L2 weight decay) or AdamW (decoupled=True) on one flat
    segment; exp_avg and exp_avg_sq (like param) start at zero."""
    beta1, beta2 = float(betas[0]), float(betas[1])
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise BackendError(f"Adam betas must be in [0, 1), got {betas}")
    _check(param, grad, exp_avg, exp_avg_sq)
    # log(beta) in double: bc = 1 - beta^step = -expm1(step * log(beta)) in float stays exact
    lb1 = math.log(beta1) if beta1 > 0 else -np.inf
    lb2 = math.log(beta2) if beta2 > 0 else -np.inf
    kernel, gsize, lsize, defines = _update("adamw_step" if decoupled else "adam_step", b, param.size)
    b.launch(FILE, kernel, gsize, lsize, param, grad,
             exp_avg, exp_avg_sq, scale or grad, param.size, scale is not None, np.float32(1 - beta1),
             np.float32(beta2), np.float32(1 - beta2), np.float32(lb1), np.float32(lb2), np.float32(eps),
             np.float32(weight_decay), np.float32(0), np.int32(0), dyn={14: lr_key, 15: step_key},
             defines=defines)
