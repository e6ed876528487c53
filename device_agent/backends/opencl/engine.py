"""The training loop's engines (device_agent/engine.py's TrainEngine / InferEngine) on OpenCL Plans.

A Plan is built per batch size, so the last partial batch of an epoch gets its own Plan; the
weights and optimizer state move between Plans through the host only when the batch size
changes (twice an epoch at most). Evaluation runs an inference Plan without BN folding, whose
weights are refreshed from the training Plan only after training steps ran.

NOTE: the Plan reads the loss back before it enqueues the update, so a step whose loss is not
finite is never applied (as on numpy); the loop then stops with `diverged`.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import BackendError
from ...graph import Graph
from ...heads import loss_graph
from .plan import OptimConfig, Plan

_SLOTS = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


def _config(opt) -> OptimConfig:
    """OptimConfig from an optim.py Optimizer (SGD / Adam / AdamW)."""
    if opt.name == "sgd":
        return OptimConfig("sgd", momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay)
    return OptimConfig(opt.name, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay)


def _check_dtype(dtype) -> None:
    if np.dtype(dtype) != np.float32:
        raise BackendError(f"the OpenCL backend computes in float32, not {np.dtype(dtype)} "
                           f"(use backend 'numpy' for float64)")


def _feeds(graph: Graph, x):
    """The array of a one-input graph, or {input name: array} (a suffix cut across a residual branch)."""
    if isinstance(x, dict):
        if len(x) == 1 and len(graph.inputs) == 1:
            (x,) = x.values()
        else:
            return {k: np.asarray(v, np.float32) for k, v in x.items()}
    return np.asarray(x, np.float32)


def _batch(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _loss_sum(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum())


class OpenCLEngine:
    backend = "opencl"

    def __init__(self, graph: Graph, trainable: set[str], optimizer, bn_batch_stats: bool,
                 clip_grad_norm: float | None = None, label_smoothing: float = 0.0, dtype=np.float32,
                 seed: int = 0, recompute: bool = False, runtime=None):
        _check_dtype(dtype)
        from .runtime import shared_runtime

        self.graph = graph = loss_graph(graph)   # the loss reads the logits before a final Softmax
        self.rt = runtime or shared_runtime()
        self.trainable = set(trainable)
        self.config = _config(optimizer)
        if clip_grad_norm:
            self.config = OptimConfig(**{**self.config.__dict__, "clip_grad_norm": float(clip_grad_norm)})
        self.bn_batch_stats = bool(bn_batch_stats)
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.recompute = bool(recompute)     # Plan(recompute=True): BN outputs rewritten for the backward
        self.t = int(optimizer.t)
        self.plans: dict[int, Plan] = {}
        self.current: Plan | None = None
        self.evals: dict[int, Plan] = {}
        self._weights = {k: np.asarray(v, np.float32) for k, v in graph.weights.items()}
        self._opt: dict[str, np.ndarray] | None = None
        self._eval_stale = True

    # ------------------------------------------------------------------ plans
    def _train_plan(self, batch: int) -> Plan:
        if self.current is not None and self.current.batch == batch:
            return self.current
        if self.current is not None:   # hand weights and optimizer state to the other batch size
            self._weights = self.current.params()
            self._opt = self._read_opt(self.current)
        plan = self.plans.get(batch)
        if plan is None:
            plan = self.plans[batch] = Plan(self.graph, batch, trainable=self.trainable, optimizer=self.config,
                                            training=True, bn_batch_stats=self.bn_batch_stats,
                                            label_smoothing=self.label_smoothing, recompute=self.recompute,
                                            runtime=self.rt)
        plan.load_params(self._weights)
        if self._opt is not None:
            self._write_opt(plan, self._opt)
        plan.step_count = self.t
        self.current = plan
        return plan

    def _read_opt(self, plan: Plan) -> dict[str, np.ndarray]:
        out = {}
        for slot, ref in plan.opt_state.items():
            flat = plan._read(ref)
            for k in sorted(self.trainable):
                o, n = plan.param_offset[k], int(np.prod(plan.graph.params[k].shape))
                out[f"{k}.{_SLOTS[slot]}"] = flat[o:o + n].reshape(plan.graph.params[k].shape).copy()
        return out

    def _write_opt(self, plan: Plan, state: dict[str, np.ndarray]) -> None:
        import pyopencl as cl

        for slot, ref in plan.opt_state.items():
            flat = np.zeros(ref.size, np.float32)
            for k in self.trainable:
                o = plan.param_offset[k]
                v = np.asarray(state[f"{k}.{_SLOTS[slot]}"], np.float32).reshape(-1)
                flat[o:o + v.size] = v
            cl.enqueue_copy(plan.rt.queue, ref.buf, flat)
        plan.rt.queue.finish()

    # ------------------------------------------------------------------ TrainEngine
    def train_step(self, x, y, lr):
        x = _feeds(self.graph, x)
        plan = self._train_plan(_batch(x))
        loss, correct = plan.train_step(x, np.asarray(y), lr, seed=[self.seed, 3, self.t])
        if math.isfinite(loss):            # a non-finite step was not applied (Plan.train_step)
            self.t += 1
        self._eval_stale = True
        return loss, correct

    def eval_batch(self, x, y):
        x = _feeds(self.graph, x)
        n = _batch(x)
        ev = self.evals.get(n)
        if ev is None:
            ev = self.evals[n] = Plan(self.graph, n, trainable=set(), fold_bn=False, runtime=self.rt)
            self._eval_stale = True
        if self._eval_stale:
            w = self.params()
            for p in self.evals.values():
                p.load_params(w)
            self._eval_stale = False
        logits = ev.infer(x)
        y = np.asarray(y)
        return _loss_sum(logits, y), int(np.count_nonzero(np.argmax(logits, axis=1) == y)), logits

    def params(self):
        return self.current.params() if self.current is not None else {k: v.copy() for k, v in self._weights.items()}

    def load_params(self, d):
        missing = sorted(set(self._weights) - set(d))
        if missing:
            raise BackendError(f"parameter '{missing[0]}' is missing")
        self._weights = {k: np.asarray(d[k], np.float32) for k in self._weights}
        if self.current is not None:
            self.current.load_params(self._weights)
        self._eval_stale = True

    def optimizer_state(self):
        state = self._read_opt(self.current) if self.current is not None else dict(self._opt or {})
        if not state:
            probe = self._train_plan(1) if self.current is None else self.current
            state = {f"{k}.{_SLOTS[s]}": np.zeros(probe.graph.params[k].shape, np.float32)
                     for s in probe.opt_state for k in self.trainable}
        state["step"] = np.asarray(self.t, np.int64)
        return state

    def load_optimizer_state(self, d):
        d = dict(d)
        self.t = int(d.pop("step", 0))
        self._opt = d
        if self.current is not None:
            self._write_opt(self.current, d)
            self.current.step_count = self.t

    def memory(self):
        if self.current is None:
            return {"params": sum(v.nbytes for v in self._weights.values()), "peak": 0}
        return self.current.memory()


class OpenCLInfer:
    backend = "opencl"

    def __init__(self, graph: Graph, dtype=np.float32, runtime=None):
        _check_dtype(dtype)
        from .runtime import shared_runtime

        self.graph = graph
        self.rt = runtime or shared_runtime()
        self.plans: dict[int, Plan] = {}

    def forward(self, x):
        x = _feeds(self.graph, x)
        n = _batch(x)
        plan = self.plans.get(n)
        if plan is None:
            plan = self.plans[n] = Plan(self.graph, n, trainable=set(), runtime=self.rt)
        return plan.forward_all(x)

    def memory(self):
        return max((p.memory() for p in self.plans.values()), key=lambda m: m["peak"], default={"peak": 0})
