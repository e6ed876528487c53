"""The training loop's engines (device_agent/engine.py's TrainEngine / InferEngine) on OpenCL Plans.

One Store per engine (store.py) holds the parameters, BN statistics, gradients and optimizer
state on the device; every Plan of the engine runs over it: one training Plan per batch size (the
last partial batch of an epoch gets its own), one eval Plan per batch size. Switching between them
moves nothing through the host; only the batches, the step's two scalars, eval logits and what a
checkpoint writes (params(), optimizer_state()) cross. Eval Plans fold the same BatchNorms the
training Plans fold (frozen ones with frozen statistics), and no others.

NOTE: the Plan reads the loss back before it enqueues the update, so a step whose loss is not
finite is never applied (as on numpy); the loop then stops with `diverged`.

Prefetch: `train_step(x, y, lr, ahead=f)` / `eval_batch(x, y, ahead=f)` call f() once the step's
kernels are enqueued, while they run: f returns the loop's next batch (x, y) or None, and the engine
uploads it on the copy queue (Plan.stage, staging.py) when a Plan of its size exists; the next call
with those same arrays starts without an upload. On by default where the Runtime is a GPU (the
device copies while it computes); THOMAS_CL_PREFETCH=1/0 forces it (tests run it on PoCL).
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import BackendError
from ...model.graph import Graph
from ...model.heads import loss_graph
from ...ops.dropout import RNG_DROPOUT
from .mixed import check_dtype as _check_dtype
from .optim import OptimConfig
from .passes import frozen_nodes
from .plan import Plan
from .store import Store


def _config(opt) -> OptimConfig:
    """OptimConfig from an optim.py Optimizer (SGD / Adam / AdamW)."""
    if opt.name == "sgd":
        return OptimConfig("sgd", momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay)
    return OptimConfig(opt.name, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay)


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


def prefetch_default(rt) -> bool:
    """Whether engines on `rt` upload the next batch during a step (THOMAS_CL_PREFETCH overrides)."""
    env = (os.environ.get("THOMAS_CL_PREFETCH") or "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise BackendError(f"THOMAS_CL_PREFETCH={env!r}: use 1 or 0")
    return rt.kind == "gpu"


def _loss_sum(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum())


def engine_memory(store: Store, plans) -> dict:
    """Device bytes of a store and the Plans over it, by category: the weights once, the shared
    activation buffers and workspace (as large as the largest Plan needs), each Plan's inputs;
    "plans" = how many, "shared_by_plans" = what separate arenas would have cost more."""
    m = dict(store.memory(), **store.scratch.nbytes())
    m["io"] = sum(p.io_bytes for p in plans)
    own = sum(p.arena_bytes + p.workspace_bytes for p in plans)
    m["activations_without_reuse"] = max((p.no_reuse_bytes for p in plans), default=0)
    m["saved_by_reuse"] = max(m["activations_without_reuse"] - m["activations"], 0)
    m["shared_by_plans"] = own - m["activations"] - m["workspace"]
    m["plans"] = len(plans)
    m["peak"] = store.nbytes() + m["activations"] + m["workspace"] + m["io"]
    return m


def _release(plans, store: Store) -> None:
    for p in plans:
        p.release()
    store.release()


class OpenCLEngine:
    backend = "opencl"

    def __init__(self, graph: Graph, trainable: set[str], optimizer, bn_batch_stats: bool,
                 clip_grad_norm: float | None = None, label_smoothing: float = 0.0, dtype=np.float32,
                 seed: int = 0, recompute: bool = False, prox_mu: float = 0.0, runtime=None):
        self.dtype = _check_dtype(dtype)
        from .runtime import shared_runtime

        self.graph = graph = loss_graph(graph)   # the loss reads the logits before a final Softmax
        self.rt = runtime or shared_runtime()
        self.trainable = set(trainable)
        self.config = _config(optimizer)
        if clip_grad_norm:
            self.config = OptimConfig(**{**self.config.__dict__, "clip_grad_norm": float(clip_grad_norm)})
        if prox_mu:          # FedProx: the store keeps w0 (the weights now), each step adds mu·(w - w0)
            self.config = OptimConfig(**{**self.config.__dict__, "prox_mu": float(prox_mu)})
        self.bn_batch_stats = bool(bn_batch_stats)
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.recompute = bool(recompute)     # Plan(recompute=True): BN outputs rewritten for the backward
        # the BNs every Plan folds: the frozen ones, when statistics are frozen (as Plan decides alone)
        fold = set() if self.bn_batch_stats else frozen_nodes(graph, self.trainable)
        self.store = Store(graph, self.trainable, optimizer=self.config, fold=fold, runtime=self.rt)
        self.store.step = int(optimizer.t)
        self.plans: dict[int, Plan] = {}
        self.evals: dict[int, Plan] = {}
        self.current: Plan | None = None
        self.prefetch = prefetch_default(self.rt)
        self._staged = None     # (caller's x, y, their converted arrays) of the batch staged last

    @property
    def t(self) -> int:
        """Optimizer steps applied so far (the dropout stream of the next step)."""
        return self.store.step

    # ------------------------------------------------------------------ plans
    def _train_plan(self, batch: int) -> Plan:
        plan = self.plans.get(batch)
        if plan is None:
            plan = self.plans[batch] = Plan(self.graph, batch, trainable=self.trainable, optimizer=self.config,
                                            training=True, bn_batch_stats=self.bn_batch_stats,
                                            label_smoothing=self.label_smoothing, recompute=self.recompute,
                                            runtime=self.rt, store=self.store, dtype=self.dtype)
        self.current = plan
        return plan

    def _eval_plan(self, batch: int) -> Plan:
        plan = self.evals.get(batch)
        if plan is None:
            # dtype: a mixed engine's eval Plans pack their arena too (it is shared with the training Plans)
            plan = self.evals[batch] = Plan(self.graph, batch, trainable=set(), runtime=self.rt, store=self.store,
                                            dtype=self.dtype)
        return plan

    # ------------------------------------------------------------------ TrainEngine
    def train_step(self, x, y, lr, ahead=None):
        x, y = self._arrays(x, y)
        plan = self._train_plan(_batch(x))
        # a non-finite step is not applied and not counted (Plan.train_step)
        return plan.train_step(x, y, lr, seed=[self.seed, RNG_DROPOUT, self.store.step],
                               then=self._then(ahead, self.plans, True))

    def eval_batch(self, x, y, ahead=None):
        x, y = self._arrays(x, y)
        logits = self._eval_plan(_batch(x)).infer(x, then=self._then(ahead, self.evals, False))
        return _loss_sum(logits, y), int(np.count_nonzero(np.argmax(logits, axis=1) == y)), logits

    def _arrays(self, x, y):
        """The batch as the Plans take it; the very arrays staged when (x, y) is the batch staged last."""
        staged, self._staged = self._staged, None
        if staged is not None and staged[0] is x and staged[1] is y:
            return staged[2], staged[3]
        return _feeds(self.graph, x), np.asarray(y)

    def _then(self, ahead, plans: dict, labels: bool):
        """What a step runs while its kernels do: stage the loop's next batch (module docstring)."""
        if ahead is None or not self.prefetch:
            return None

        def then():
            nxt = ahead()
            if nxt is None:
                return
            x, y = _feeds(self.graph, nxt[0]), np.asarray(nxt[1])
            plan = plans.get(_batch(x))
            if plan is not None:            # (no Plan is built mid-step: a new batch size uploads as usual)
                plan.stage(x, y if labels else None)
                self._staged = (nxt[0], nxt[1], x, y)
        return then

    def params(self):
        return self.store.params()

    def load_params(self, d):
        missing = sorted(set(self.graph.weights) - set(d))
        if missing:
            raise BackendError(f"parameter '{missing[0]}' is missing")
        self.store.load_params({k: d[k] for k in self.graph.weights})

    def optimizer_state(self):
        return self.store.optimizer_state()

    def load_optimizer_state(self, d):
        self.store.load_optimizer_state(d)

    def memory(self):
        """The whole engine: the store and every Plan built so far (training and eval)."""
        return engine_memory(self.store, [*self.plans.values(), *self.evals.values()])

    def close(self) -> None:
        """Release the engine's Plans, then its store, now (the shared Runtime stays open)."""
        _release([*self.plans.values(), *self.evals.values()], self.store)
        self.plans, self.evals, self.current = {}, {}, None


class OpenCLInfer:
    backend = "opencl"

    def __init__(self, graph: Graph, dtype=np.float32, runtime=None):
        _check_dtype(dtype)
        from .runtime import shared_runtime

        self.graph = graph
        self.rt = runtime or shared_runtime()
        self.store = Store(graph, set(), fold=None, runtime=self.rt)   # every BN folded
        self.plans: dict[int, Plan] = {}
        self.prefetch = prefetch_default(self.rt)
        self._staged = None     # (caller's x, its converted arrays) of the input staged last

    def forward(self, x, ahead=None):
        staged, self._staged = self._staged, None
        x = staged[1] if staged is not None and staged[0] is x else _feeds(self.graph, x)
        n = _batch(x)
        plan = self.plans.get(n)
        if plan is None:
            plan = self.plans[n] = Plan(self.graph, n, trainable=set(), runtime=self.rt, store=self.store)
        return plan.forward_all(x, then=self._then(ahead) if ahead is not None and self.prefetch else None)

    def _then(self, ahead):
        def then():          # stage the next input (OpenCLEngine._then)
            nxt = ahead()
            x = _feeds(self.graph, nxt) if nxt is not None else None
            plan = self.plans.get(_batch(x)) if x is not None else None
            if plan is not None:
                plan.stage(x)
                self._staged = (nxt, x)
        return then

    def memory(self):
        return engine_memory(self.store, list(self.plans.values()))

    def close(self) -> None:
        """Release the Plans, then the store, now (the shared Runtime stays open)."""
        _release(list(self.plans.values()), self.store)
        self.plans = {}
