"""The device-resident store of one engine: parameters, BN statistics, gradients and optimizer
state, allocated once and shared by every Plan of that engine (each training batch size, eval,
inference), so weights never travel through the host between them.

    store = Store(graph, trainable={"fc.weight", "fc.bias"}, optimizer=OptimConfig("sgd", momentum=0.9),
                  fold=frozen_bns, runtime=rt)
    train = Plan(graph, 32, trainable=store.trainable, store=store)   # the last partial batch:
    tail = Plan(graph, 7, trainable=store.trainable, store=store)     #   same weights, same momentum
    val = Plan(graph, 32, trainable=set(), store=store)               # eval reads what training wrote
    ckpt = store.params(), store.optimizer_state()                    # the only weights that leave

Layout (llm.c's "malloc all parameters at once"):
  params      one buffer, trainable parameters first (so the optimizer is ONE launch over a flat
              range), then frozen ones and BN buffers; each tensor a sub-buffer
  grads       the same layout for the trainable range; each backward OVERWRITES its gradient, so
              nothing is zeroed per step
  optimizer   momentum / Adam moments, flat, same layout; clipping's partial sums and factor;
              FedProx's anchor (prox_mu > 0): a copy of the trainable range as loaded, never updated
  step        the optimizer's step count (Adam's bias correction, SGD's first-step momentum)
  scratch     not weights: the activation buffers and workspace the Plans share (arena.SharedArena)

BN folding: the BatchNorms in `fold` (frozen ones with frozen statistics; every one for inference)
are folded into the conv before them once, here, so every Plan of the store runs the same folded
graph. Their sources (conv weight and bias, γ, β, μ, σ²) never change on the device, so the store
keeps them on the host: params() returns them without a read, load_params() folds again.
"""
from __future__ import annotations

import numpy as np
import pyopencl as cl

from ...errors import BackendError
from ...model.graph import Graph
from .arena import SharedArena
from .optim import OptimConfig, clip_partials
from .passes import _folded, fold_batchnorm
from .runtime import Runtime, TensorRef, round_up, shared_runtime

# optimizer_state() keys: f"{param}.{_SLOTS[slot]}", as optim.py's optimizers name them
_SLOTS = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


class Store:
    RELEASE_ORDER = 1     # Runtime.close(): after the Plans that run over it

    def __init__(self, graph: Graph, trainable, *, optimizer: OptimConfig | None = None,
                 fold: set[str] | None = frozenset(), runtime: Runtime | None = None):
        """graph: as the Plans will see it (after heads.loss_graph for training); fold: the BN nodes
        to fold (None: every foldable one, an empty set: none)."""
        self._released = False
        self.rt = runtime or shared_runtime()
        self.rt.own(self)
        self.source = graph
        self.trainable = set(trainable)
        self.optimizer = optimizer or OptimConfig()
        self.fold: dict = {}     # bn name -> (conv weight, conv bias or None, folded bias, [γ, β, μ, σ²], eps)
        self.graph = fold_batchnorm(graph, None if fold is None else set(fold), self.fold) \
            if fold is None or fold else graph
        self._fold_src = {t: np.array(graph.weights[t], np.float32) for wn, b0, _, st, _ in self.fold.values()
                          for t in [wn] + ([b0] if b0 else []) + st}
        self._fold_out = {t for wn, _, bname, _, _ in self.fold.values() for t in (wn, bname)}
        self.step = 0
        self.scratch = SharedArena(self.rt)      # the Plans' activations and workspace, shared
        self._layout()
        self._alloc_params()
        self._alloc_optimizer()

    # ------------------------------------------------------------------ allocation
    def _layout(self) -> None:
        g = self.graph
        align = self.rt.align // 4                              # in floats
        self.order = [k for k in g.params if k in self.trainable] + [k for k in g.params if k not in self.trainable]
        self.param_offset: dict[str, int] = {}
        off = self.n_trainable = 0
        for k in self.order:
            self.param_offset[k] = off
            off = round_up(off + max(1, int(np.prod(g.params[k].shape))), align)
            if k in self.trainable:
                self.n_trainable = off
        self.n_params = off

    def _alloc_params(self) -> None:
        g, rt = self.graph, self.rt
        flat = np.zeros(self.n_params, np.float32)
        for k in self.order:
            o = self.param_offset[k]
            flat[o:o + g.weights[k].size] = g.weights[k].reshape(-1)
        self.params_buf = rt.alloc(flat.nbytes)
        rt.write(self.params_buf, flat)
        self.param_ref = {k: self._sub(self.params_buf, k, k) for k in self.order}
        self.grads_buf = None
        self.grad_ref: dict[str, TensorRef] = {}
        if self.n_trainable:
            self.grads_buf = rt.zeros(self.n_trainable * 4)
            self.grad_ref = {k: self._sub(self.grads_buf, k, f"d{k}") for k in self.order if k in self.trainable}

    def _sub(self, buf, k: str, name: str) -> TensorRef:
        shape = tuple(self.graph.params[k].shape)
        n = max(1, int(np.prod(shape, dtype=np.int64))) * 4
        return TensorRef(name, shape, buf.get_sub_region(self.param_offset[k] * 4, n))

    def _alloc_optimizer(self) -> None:
        """State buffers (zeros) for the optimizer, and the flat views its one launch takes."""
        n, o = self.n_trainable, self.optimizer
        self.opt_state: dict[str, TensorRef] = {}
        self.opt_bytes = 0
        self.clip_partial = self.clip_scale = self.anchor = None
        if not n:
            return
        self.flat_params = TensorRef("params", (n,), self.params_buf.get_sub_region(0, n * 4))
        self.flat_grads = TensorRef("grads", (n,), self.grads_buf)
        for slot in o.slots():
            self.opt_state[slot] = self._zeros(slot, n)
        if o.clip_grad_norm > 0:
            self.clip_partial = self._zeros("clip_partial", clip_partials([n]))
            self.clip_scale = self._zeros("clip_scale", 2)
        if o.prox_mu > 0:      # w0 of FedProx: the weights as built (load_params, e.g. a resume, leaves it)
            self.anchor = TensorRef("anchor", (n,), self.rt.alloc(n * 4))
            self.opt_bytes += n * 4
            cl.enqueue_copy(self.rt.queue, self.anchor.buf, self.flat_params.buf, byte_count=n * 4)

    def _zeros(self, name: str, n: int) -> TensorRef:
        self.opt_bytes += n * 4
        return TensorRef(name, (n,), self.rt.zeros(n * 4))

    # ------------------------------------------------------------------ host side
    def params(self) -> dict[str, np.ndarray]:
        """Host copies of the graph's parameters and buffers as given (a folded conv + BN pair as
        its unfolded tensors, from the host); one read per tensor, one sync."""
        out = {k: np.empty(r.shape, np.float32) for k, r in self.param_ref.items() if k not in self._fold_out}
        for k, host in out.items():
            self.rt.read(host, self.param_ref[k].buf, blocking=False)
        self.rt.queue.finish()
        out.update({k: v.copy() for k, v in self._fold_src.items()})
        return out

    def load_params(self, weights: dict[str, np.ndarray]) -> None:
        """Unfolded tensors by name (others are ignored); a folded pair is folded again from what
        changed. A tensor of the wrong size is a BackendError."""
        refold, keep = set(), []
        for k, v in weights.items():
            want = self._fold_src[k].shape if k in self._fold_src else \
                self.param_ref[k].shape if k in self.param_ref else None
            if want is None:
                continue
            v = np.ascontiguousarray(v, np.float32)
            if v.size != int(np.prod(want, dtype=np.int64)):
                raise BackendError(f"parameter '{k}' has shape {tuple(v.shape)}, expected {tuple(want)}")
            if k in self._fold_src:
                self._fold_src[k] = v.reshape(want).copy()
                refold.update(bn for bn, (wn, b0, _, st, _) in self.fold.items() if k in [wn, b0, *st])
            else:
                keep.append(v)
                self.rt.write(self.param_ref[k].buf, v, blocking=False)
        src = self._fold_src
        for bn in refold:
            wn, b0, bname, st, eps = self.fold[bn]
            w, b = _folded(src[wn], src[b0] if b0 else None, *(src[t] for t in st), eps)
            keep += [w, b]
            self.rt.write(self.param_ref[wn].buf, w, blocking=False)
            self.rt.write(self.param_ref[bname].buf, b, blocking=False)
        self.rt.queue.finish()

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """{f"{param}.{slot}": array} for every trainable parameter, plus "step"."""
        out = {}
        for slot, ref in self.opt_state.items():
            for k in sorted(self.trainable):
                host = np.empty(self.graph.params[k].shape, np.float32)
                out[f"{k}.{_SLOTS[slot]}"] = self.rt.read(host, ref.buf, self.param_offset[k] * 4, blocking=False)
        self.rt.queue.finish()
        out["step"] = np.asarray(self.step, np.int64)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """What optimizer_state() returned (a missing "step" counts as 0; a missing slot as zeros)."""
        state = dict(state)
        self.step = int(state.pop("step", 0))
        keep = []
        for slot, ref in self.opt_state.items():
            flat = np.zeros(ref.size, np.float32)
            for k in self.trainable:
                v = state.get(f"{k}.{_SLOTS[slot]}")
                if v is None:
                    continue
                v = np.asarray(v, np.float32).reshape(-1)
                if v.size != int(np.prod(self.graph.params[k].shape, dtype=np.int64)):
                    raise BackendError(f"optimizer state '{k}.{_SLOTS[slot]}' has shape {np.shape(state[f'{k}.{_SLOTS[slot]}'])}, "
                                       f"expected {tuple(self.graph.params[k].shape)}")
                o = self.param_offset[k]
                flat[o:o + v.size] = v
            keep.append(flat)
            self.rt.write(ref.buf, flat, blocking=False)
        self.rt.queue.finish()

    def memory(self) -> dict:
        """Bytes the store holds on the device, by category."""
        return {"params": self.n_params * 4, "grads": self.n_trainable * 4, "optimizer": self.opt_bytes}

    def nbytes(self) -> int:
        return sum(self.memory().values())

    def release(self) -> None:
        """Release the device memory: the shared arena, every sub-buffer, then the buffers they are
        cut from (drivers need not outlive a parent that goes first). Unusable afterwards; runs when
        the store is collected or its Runtime closes."""
        if self.__dict__.get("_released", True):
            return
        self._released = True
        if not self.rt.closed:
            self.rt.queue.finish()
        subs = [r.buf for r in [*getattr(self, "param_ref", {}).values(), *getattr(self, "grad_ref", {}).values()]]
        if getattr(self, "flat_params", None) is not None:
            subs.append(self.flat_params.buf)
        parents = [getattr(self, "params_buf", None), getattr(self, "grads_buf", None)]
        parents += [r.buf for r in [*getattr(self, "opt_state", {}).values(), getattr(self, "clip_partial", None),
                                    getattr(self, "clip_scale", None), getattr(self, "anchor", None)] if r is not None]
        for buf in subs + [b for b in parents if b is not None]:
            buf.release()
        if hasattr(self, "scratch"):
            self.scratch.release()
        self.param_ref, self.grad_ref, self.opt_state = {}, {}, {}

    def __del__(self):
        self.release()
