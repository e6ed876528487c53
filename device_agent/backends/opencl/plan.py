"""The Plan: one model, stage, batch size and OpenCL device turned into a fixed launch list over
buffers allocated once.

    plan = Plan(graph, batch=8, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9))
    loss, correct = plan.train_step(x, labels, lr=0.01, seed=step)   # only x, labels go up; 2 scalars come back
    logits = Plan(graph, batch=8, trainable=set()).infer(x)           # inference plan: BN folded into conv
    plan.memory()                                                      # bytes by category, peak, reuse savings
    Plan(graph, batch=3, trainable=None, store=plan.store)            # the same weights, another batch size

Parameters, gradients, optimizer state and BN statistics live in a Store (store.py): one per
engine, shared by all its Plans (a Plan built without one makes its own). The store folds BN
into convs; each backward OVERWRITES its parameter gradient, so nothing is zeroed per step, and a
parameter consumed twice gets its second contribution in a temporary that one `acc_add` folds in.

What the Plan owns:
  arena       activations, activation gradients and per-node state, pooled by liveness (arena.py):
              two tensors share a buffer when their lifetimes [produced, last read] do not overlap.
              NOTE: every tensor is a whole cl.Buffer of the pool, never a sub-buffer of one big
              arena: NVIDIA's OpenCL driver blocks the host in every enqueue that touches a
              sub-buffer overlapping one still in use (an H100 MobileNetV2 last-layer step spent
              31.7 ms of host time enqueueing 7.9 ms of kernels); whole buffers cost ~6 % more bytes
  workspace   one scratch buffer, the largest any node asks for (im2col columns, GEMM partials)
              Both are shared with the other Plans of the store (arena.SharedArena): an engine
              holds the activation memory of its largest Plan, not the sum over its Plans.
  recompute   (Plan(recompute=True)) BN outputs are not kept for the backward: each is rewritten
              from the BN input and statistics right before the first backward that reads it
  mixed       (Plan(dtype="mixed")) tensors saved for the backward are kept as halves between the
              forward and their backward (mixed.py); arithmetic and everything else stay float32

A step is `replay(queue, launches)`: no allocation, no host round trip between ops, no finish()
until the two scalars are read back. Frozen nodes record no backward launches at all. The graph
rewrites (BN folding, fused activations) are in passes.py, the launch recording in record.py.
"""
from __future__ import annotations

import math

import numpy as np
import pyopencl as cl

from ...errors import BackendError
from ...model.graph import Graph, Node
from ...model.heads import loss_graph
from ...ops import get_op, normalize_attrs
from ...ops.dropout import draw_seed
from .arena import Lifetimes, pack, pool, workspace_bytes
from .mixed import add_reader, bytes_by_dtype, check_dtype, default_packed, halve_lifetimes, keeps_half
from .optim import OptimConfig
from .passes import fold_batchnorm, frozen_nodes, fuse_activations
from .record import LaunchRecording
from .runtime import Runtime, TensorRef, replay, shared_runtime
from .staging import Staging, as_feeds
from .store import Store

LABELS = "<labels>"     # the labels' key among a batch's arrays (beside the graph's input names)

__all__ = ["OptimConfig", "Plan", "Store", "fold_batchnorm", "frozen_nodes", "fuse_activations"]


class Plan(LaunchRecording):
    RELEASE_ORDER = 0     # Runtime.close(): Plans (kernels, own buffers) before Stores

    def __init__(self, graph: Graph, batch: int, *, trainable=None, optimizer: OptimConfig | None = None,
                 training: bool = True, bn_batch_stats: bool | None = None, label_smoothing: float = 0.0,
                 runtime: "Runtime | None" = None, reuse: bool = True, fold_bn: bool = True,
                 fuse_act: bool = True, recompute: bool = False, store: Store | None = None,
                 dtype: str = "float32", packed: bool | None = None):
        """store: the engine's device-resident weights to run over (its graph, trainable set,
        optimizer and BN folding apply; `trainable` must be its set, or empty for an eval /
        inference Plan). Without one the Plan makes its own from graph and these options.
        dtype: "float32", or "mixed": tensors saved for the backward kept as halves (mixed.py).
        packed: activations at offsets of one buffer (arena.pack) instead of whole buffers; default
        on for mixed except on NVIDIA (sub-buffers block its host, see `arena` below)."""
        self.dtype = check_dtype(dtype)
        self._packed = packed
        self._released = False
        self._staging: Staging | None = None      # the next batch, uploaded ahead (stage)
        self._keep = None
        # one context per device and process unless a runtime is given: each context costs the driver
        # its own memory (527 MiB on an H100: a Plan that opened its own doubled a step's measured bytes)
        self.rt = runtime or (store.rt if store is not None else shared_runtime())
        self.rt.own(self)
        self.batch = int(batch)
        if trainable is None or trainable:   # training: the loss reads the logits, not a final Softmax
            graph = loss_graph(graph)
        all_trainable = [k for k, p in graph.params.items() if p.trainable]
        self.trainable = set(all_trainable if trainable is None else trainable)
        bad = sorted(self.trainable - set(all_trainable))
        if bad:
            raise BackendError(f"'{bad[0]}' is not a trainable parameter of model '{graph.name}'")
        self.inference = not self.trainable
        self.training = training and not self.inference
        self.bn_batch_stats = self.training if bn_batch_stats is None else (bn_batch_stats and not self.inference)
        # BN folded into the conv before it (by the store): every one in inference, the frozen
        # prefix's in training with frozen statistics (a last-layer step then runs the inference
        # forward up to the head). params() / load_params() still speak the unfolded weights.
        # Then each BN + ReLU(6) pair, and each frozen conv/FC + ReLU(6) pair, becomes one launch (the
        # activation in the producer's epilogue; a BN's backward reads the output for its mask).
        frozen = {n.name for n in graph.nodes} if self.inference else frozen_nodes(graph, self.trainable)
        if store is None:
            fold = (None if self.inference else frozen) if fold_bn and not self.bn_batch_stats else set()
            store = Store(graph, self.trainable, optimizer=optimizer, fold=fold, runtime=self.rt)
        self._check_store(store, graph, optimizer)
        self.store = store
        self.optimizer = store.optimizer
        self._fold = store.fold
        self.acts: dict[str, str] = {}
        self.graph = store.graph
        if fuse_act:
            self.graph = fuse_activations(self.graph, frozen, self.acts)
        self.label_smoothing = float(label_smoothing)
        self.reuse = reuse
        self.recompute = recompute
        self._build()

    def _check_store(self, store: Store, graph: Graph, optimizer: OptimConfig | None) -> None:
        if store.rt is not self.rt:
            raise BackendError("a Plan and its store must share one Runtime")
        if set(store.source.params) != set(graph.params):
            raise BackendError(f"the store holds the parameters of model '{store.source.name}', "
                               f"not those of '{graph.name}'")
        if self.trainable and self.trainable != store.trainable:
            raise BackendError("a training Plan trains its store's parameters (or none: eval / inference)")
        if optimizer is not None and optimizer != store.optimizer:
            raise BackendError(f"the store was built for {store.optimizer}, not {optimizer}")

    @property
    def step_count(self) -> int:
        """The optimizer's step count, kept by the store (every Plan of an engine continues it)."""
        return self.store.step

    @step_count.setter
    def step_count(self, v: int) -> None:
        self.store.step = int(v)

    # ================================================================== building
    def _build(self) -> None:
        """Named steps, each over what the ones before it decided."""
        self._specs()
        bw_nodes = self._schedule()
        self._bind_store()
        life = self.life = Lifetimes()
        self._forward_lifetimes(life)
        self._recompute_lifetimes(life, bw_nodes)
        self._state_lifetimes(life)
        if not self.inference:
            self._grad_lifetimes(life, bw_nodes)
        self._storage_of = life.storage_of
        self._alloc_arena(life)
        self._alloc_io()
        self._record(bw_nodes)
        self.store.scratch.attach(self)

    def _rebind(self, old, new) -> None:
        """The store's shared arena replaced buffer `old` by a larger `new` (another Plan needed
        more): this Plan's tensors and the kernel arguments bound to `old` (packed: to its
        sub-buffers, cut again from `new` at the same offsets) follow."""
        self.arena = [new if b == old else b for b in self.arena]
        moved = {old: new}
        if self.packed and self.arena and self.arena[0] == new:
            for key, (st, sub) in list(self._subs.items()):
                self._subs[key] = (st, new.get_sub_region(st.offset, max(st.nbytes, 4)))
                moved[sub] = self._subs[key][1]
        for ref in [*self.refs.values(), self.workspace]:
            if ref is not None and ref.buf in moved:
                ref.buf = moved[ref.buf]
        now = set(moved.values())
        for ln in self.fw_launches + self.bw_launches + self.opt_launches:
            for i, a in enumerate(ln.args):
                if isinstance(a, TensorRef) and (a.buf in moved or a.buf in now):
                    a.buf = moved.get(a.buf, a.buf)
                    ln.kernel.set_arg(i, a.buf)
                elif isinstance(a, cl.MemoryObjectHolder) and a in moved:
                    ln.kernel.set_arg(i, moved[a])
                    ln.args = ln.args[:i] + (moved[a],) + ln.args[i + 1:]

    def _specs(self) -> None:
        """Each node's op and normalised attrs; every tensor's shape at this batch size."""
        self.shapes = self.graph.infer_shapes(self.batch)
        self.specs = {}
        for n in self.graph.nodes:
            op = get_op(n.op)
            if op.cl is None:
                raise BackendError(f"node '{n.name}': op {n.op} has no OpenCL kernels yet")
            self.specs[n.name] = (op, normalize_attrs(op, n.attrs))

    def _schedule(self) -> list[Node]:
        """Which tensors need gradients (self.req), and the time line lifetimes are measured on:
        forward node i runs at i, the loss at F = len(nodes), backward k at F + 1 + k, END after.
        Returns the nodes with a backward, in backward order."""
        nodes = self.graph.nodes
        req = set(self.trainable)
        bw_nodes: list[Node] = []
        if not self.inference:
            for n in nodes:
                if any(t in req for t in n.inputs):
                    req.update(n.outputs)
                    bw_nodes.append(n)
            bw_nodes.reverse()
        self.req = req
        self.F = len(nodes)
        self.t_fw = {n.name: i for i, n in enumerate(nodes)}
        self.t_bw = {n.name: self.F + 1 + k for k, n in enumerate(bw_nodes)}
        self.END = self.F + 2 + len(bw_nodes)
        return bw_nodes

    def _bind_store(self) -> None:
        """The store's parameters (and, training, its gradients) as this Plan's tensors."""
        st = self.store
        self.param_ref = st.param_ref
        self.grad_ref = st.grad_ref if not self.inference else {}
        self.param_offset, self.n_params = st.param_offset, st.n_params
        self.n_trainable = st.n_trainable if not self.inference else 0

    # ------------------------------------------------------------------ lifetimes
    def _forward_lifetimes(self, life: Lifetimes) -> None:
        """Every node output from its producer to its last forward reader (an alias shares its
        input's storage); graph outputs until the loss (training) or the end (inference)."""
        g, shapes = self.graph, self.shapes
        for n in g.nodes:
            op, a = self.specs[n.name]
            i = self.t_fw[n.name]
            for k, t in enumerate(n.outputs):
                if op.cl.alias and k == 0 and n.inputs[0] not in g.params and n.inputs[0] in life:
                    life.alias(t, shapes[t], n.inputs[0])
                else:                       # (an alias of a graph input gets its own slot)
                    life.new(t, shapes[t], i, i)
            for t in n.inputs:
                if t in life:
                    life.touch(t, i)
        for t in g.outputs:
            life.touch(t, self.END if self.inference else self.F)

    def _recompute_lifetimes(self, life: Lifetimes, bw_nodes: list[Node]) -> None:
        """Forward tensors a backward saves live until that backward. With recompute, a BN output a
        consumer's backward reads is not kept from the forward: a copy is rewritten
        (ClSpec.recompute) right before the first such backward and lives only until the last."""
        producers = self.graph.producers()
        self.recomputed: dict[str, list[str]] = {}      # tensor -> the backward nodes that read its copy
        self.halved: dict[str, list[str]] = {}          # mixed: tensor -> the backward nodes reading it
        self.direct: set[tuple[str, str]] = set()       # mixed: (tensor, reader) reading the halves directly
        for n in bw_nodes:
            op, a = self.specs[n.name]
            for s in op.cl.saved(a):
                kind, idx = s[0], int(s[1:])
                t = n.inputs[idx] if kind == "x" else n.outputs[idx]
                if t not in life:
                    continue
                p = producers.get(t)
                if self.recompute and kind == "x" and p is not None and p.name in self.t_bw \
                        and self.specs[p.name][0].cl.recompute is not None:
                    self.recomputed.setdefault(t, []).append(n.name)
                elif self.dtype == "mixed" and keeps_half(n.op, s):
                    add_reader(self, t, n.name, n.op)
                else:
                    life.touch(t, self.t_bw[n.name])
        for t, readers in self.recomputed.items():
            times = [self.t_bw[r] for r in readers]
            life.new(f"{t}@recomputed", self.shapes[t], min(times), max(times))
            src = producers[t].inputs[0]        # mixed: the rewrite reads its input's halves
            if src in self.halved:
                add_reader(self, src, readers[0], producers[t].op)
        halve_lifetimes(self, life)

    def _state_lifetimes(self, life: Lifetimes) -> None:
        """Per-node state: forward -> backward (or just the forward in inference)."""
        self.state_ref: dict[str, dict[str, str]] = {}
        shapes = self.shapes
        for n in self.graph.nodes:
            op, a = self.specs[n.name]
            if op.cl.state is None:
                continue
            ins = [shapes[t] for t in n.inputs]
            outs = [shapes[t] for t in n.outputs]
            names = {}
            for k, (shape, dtype) in op.cl.state(a, ins, outs, self.training or self.bn_batch_stats).items():
                sname = f"{n.name}::{k}"
                t = self.t_fw[n.name]
                life.new(sname, shape, t, self.t_bw.get(n.name, t), dtype)
                names[k] = sname
            self.state_ref[n.name] = names

    def _grad_lifetimes(self, life: Lifetimes, bw_nodes: list[Node]) -> None:
        """Gradients of activations: produced by the first backward that writes them, read until
        the producer's backward; a second writer gets a temporary folded in by acc_add. Alias
        nodes pass their gradient through in the same storage when safe."""
        g, shapes, t_bw = self.graph, self.shapes, self.t_bw
        consumers, producers = g.consumers(), g.producers()
        input_names = {s.name for s in g.inputs}
        logits = g.outputs[0]
        self.grad_slot: dict[str, str] = {}
        self.grad_writers: dict[str, list[str]] = {}
        for t in self.req - set(g.params):
            if t in input_names:
                continue
            writers = sorted({c.name for c in consumers.get(t, []) if c.name in t_bw}, key=t_bw.get)
            if t == logits:
                writers = ["<loss>"] + writers
            if not writers:
                continue
            first = self.F if t == logits else t_bw[writers[0]]
            self.grad_writers[t] = writers
            life.new(f"d:{t}", shapes[t], first, t_bw[producers[t].name])
            self.grad_slot[t] = f"d:{t}"
        for n in bw_nodes:
            x = n.inputs[0]
            if self.specs[n.name][0].cl.alias and x in self.grad_slot and n.outputs[0] in self.grad_slot \
                    and len(consumers[x]) == 1:
                life.merge(f"d:{x}", into=f"d:{n.outputs[0]}")
        for t, ws in self.grad_writers.items():
            for w in ws[1:]:
                life.new(f"d:{t}@{w}", shapes[t], t_bw[w], t_bw[w])
        for k in self.trainable:
            users = sorted({c.name for c in consumers.get(k, []) if c.name in t_bw}, key=t_bw.get)
            for w in users[1:]:
                life.new(f"d:{k}@{w}", g.params[k].shape, t_bw[w], t_bw[w])

    # ------------------------------------------------------------------ buffers
    def _alloc_arena(self, life: Lifetimes) -> None:
        """Pool the storages into whole buffers, or (packed) at offsets of one; a TensorRef per slot."""
        uniq = life.storages()
        if self._packed is None:
            self._packed = default_packed(self.dtype, self.rt.device)
        self.packed = bool(self._packed and self.reuse)
        sizes = self.arena_sizes = [pack(uniq, self.rt.align)] if self.packed else pool(uniq, self.reuse)
        self.arena_bytes = sum(sizes)
        self.no_reuse_bytes = sum(max(s.nbytes, 4) for s in uniq)
        self.arena = list(self.store.scratch.buffers(sizes))
        self._bind_slots()

    def _bind_slots(self) -> None:
        """A TensorRef per slot: its pool buffer, or (packed) a sub-buffer of it per storage."""
        self.refs: dict[str, TensorRef] = {}
        self._subs: dict[int, tuple] = {}          # packed: id(storage) -> (storage, sub-buffer)
        for name, sl in self.life.slots.items():
            st = sl.storage
            buf = self.arena[st.pool]
            if self.packed:
                if id(st) not in self._subs:
                    self._subs[id(st)] = (st, buf.get_sub_region(st.offset, max(st.nbytes, 4)))
                buf = self._subs[id(st)][1]
            self.refs[name] = TensorRef(name, sl.shape, buf, sl.dtype)

    def _alloc_io(self) -> None:
        """Graph inputs, the shared workspace, labels and the two scalars a step reads back."""
        rt, g, shapes = self.rt, self.graph, self.shapes
        for s in g.inputs:
            shape = tuple(self.batch if d is None else d for d in s.shape)
            self.refs[s.name] = TensorRef(s.name, shape, rt.alloc(int(np.prod(shape)) * 4))
        self.input_name = g.inputs[0].name
        ws = 0
        for n in g.nodes:
            op, a = self.specs[n.name]
            ws = max(ws, workspace_bytes(op.cl, a, [shapes[t] for t in n.inputs], [shapes[t] for t in n.outputs],
                                         dev=rt))
        self.workspace_bytes = ws
        self.workspace = TensorRef("workspace", (max(1, ws // 4),), self.store.scratch.workspace(ws)) if ws else None
        self.labels = TensorRef("labels", (self.batch,), rt.alloc(self.batch * 4), np.dtype(np.int32))
        self.loss_ref = TensorRef("loss", (1,), rt.alloc(4))
        self.correct_ref = TensorRef("correct", (1,), rt.alloc(4))
        self._own = [self.refs[s.name] for s in g.inputs] + [self.labels, self.loss_ref, self.correct_ref]
        self.io_bytes = sum(r.nbytes for r in self._own)

    # ================================================================== running
    def _arrays(self, x, labels=None) -> dict:
        """The caller's arrays of one batch by name (labels under LABELS), shapes checked."""
        g = self.graph
        arrays = dict(as_feeds(self.input_name, [s.name for s in g.inputs],
                               {s.name: self.refs[s.name].shape for s in g.inputs}, x))
        if LABELS in arrays:
            raise BackendError(f"an input may not be named {LABELS!r}")
        if labels is not None:
            if np.shape(labels) != (self.batch,):
                raise BackendError(f"labels have shape {np.shape(labels)}, the plan was built for ({self.batch},)")
            arrays[LABELS] = labels
        return arrays

    def _converted(self, arrays: dict) -> dict:
        return {k: np.ascontiguousarray(a, np.int32 if k == LABELS else np.float32) for k, a in arrays.items()}

    def _upload(self, x, labels=None) -> None:
        """x: the input array, or {input name: array} for a graph with several inputs (a training
        suffix whose cut crosses a residual branch); labels for a training step. A batch `stage`d
        before (the same array objects) is copied from the device's staging buffers instead."""
        arrays = self._arrays(x, labels)
        kept = self._staging.take(arrays, self.rt.queue) if self._staging is not None else None
        if kept is None:
            kept = list(self._converted(arrays).values())
            for name, a in zip(arrays, kept):
                self.rt.write((self.labels if name == LABELS else self.refs[name]).buf, a, blocking=False)
        self._keep = kept   # the copies are asynchronous: keep the host arrays alive until the step ends

    def stage(self, x, labels=None) -> None:
        """Upload the NEXT batch (labels with it, for a training Plan) on the Runtime's copy queue, beside
        the kernels in flight; the next step given these same arrays starts from the device copy
        (staging.py). Call it between a step's enqueue and its sync: `train_step(..., then=...)`."""
        if (labels is None) != self.inference:
            raise BackendError("stage: a training plan stages labels with its inputs, an inference plan none")
        arrays = self._arrays(x, labels)
        if self._staging is None:
            targets = {s.name: self.refs[s.name] for s in self.graph.inputs}
            self._staging = Staging(self.rt, targets if self.inference else dict(targets, **{LABELS: self.labels}))
        self._staging.put(arrays, self._converted(arrays))

    def _values(self, seed, lr: float = 0.0) -> dict:
        """Per-step kernel arguments. seed (an int or a sequence, as numpy's default_rng takes)
        gives one dropout seed per Dropout node, drawn in node order exactly as numpy_ref does."""
        rng = np.random.default_rng(seed)
        vals = {f"{n}:seed": np.uint32(draw_seed(rng)) for n in self.dropout_nodes}
        vals["lr"] = np.float32(lr)
        vals["step"] = np.int32(self.step_count)
        return vals

    def forward(self, x: np.ndarray, seed=0, then=None) -> np.ndarray:
        """Forward only; returns the first output (logits)."""
        return self.forward_all(x, seed, then)[self.graph.outputs[0]]

    infer = forward

    def forward_all(self, x: np.ndarray, seed=0, then=None) -> dict[str, np.ndarray]:
        """Forward only; every graph output, read back once the launches ran. `then()` runs once the
        launches are enqueued, before the read-back (the host's next batch: `stage`)."""
        self._upload(x)
        replay(self.rt.queue, self.fw_launches, self._values(seed))
        _then(self.rt.queue, then)
        out = {o: self._read(self.refs[o]) for o in self.graph.outputs}
        self._keep = None
        return out

    def train_step(self, x: np.ndarray, labels: np.ndarray, lr: float, seed=0, then=None) -> tuple[float, int]:
        """forward + loss + backward + optimizer update (not applied when the loss is not finite);
        returns (mean loss, correct count). `then()` runs once forward and backward are enqueued,
        before the step's one sync: the host prepares (and `stage`s) the next batch meanwhile."""
        if self.inference:
            raise BackendError("this plan was built for inference (no trainable parameters)")
        self._upload(x, labels)
        self.step_count += 1
        vals = self._values(seed, lr)
        replay(self.rt.queue, self.fw_launches, vals)
        replay(self.rt.queue, self.bw_launches, vals)
        _then(self.rt.queue, then)
        # NOTE: the loss is read back BEFORE the update is enqueued, so a non-finite step is never
        # applied (the weights stay those of the last good step); the step's one host sync moves here
        loss, correct = self._scalars()
        if math.isfinite(loss):
            replay(self.rt.queue, self.opt_launches, vals)
        else:
            self.step_count -= 1
        self._keep = None
        return loss, int(round(correct))

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray, seed=0) -> tuple[float, dict]:
        """forward + loss + backward without the update; gradients copied back (tests, bench)."""
        self._upload(x, labels)
        vals = self._values(seed)
        replay(self.rt.queue, self.fw_launches, vals)
        replay(self.rt.queue, self.bw_launches, vals)
        loss, _ = self._scalars()
        return loss, {k: self._read(r) for k, r in self.grad_ref.items()}

    def _scalars(self) -> tuple[float, float]:
        """The one host sync of a step: read back the loss and the correct count."""
        out = np.empty(1, np.float32), np.empty(1, np.float32)
        self.rt.read(out[0], self.loss_ref.buf, blocking=False)
        self.rt.read(out[1], self.correct_ref.buf)
        return float(out[0][0]), float(out[1][0])

    def _read(self, ref: "TensorRef") -> np.ndarray:
        return self.rt.read(np.empty(ref.shape, ref.dtype), ref.buf)

    def params(self) -> dict[str, np.ndarray]:
        """The graph's parameters as given (a folded conv + BN pair as its unfolded tensors)."""
        return self.store.params()

    def load_params(self, weights: dict[str, np.ndarray]) -> None:
        """Unfolded tensors by name; a folded pair is folded again from what changed."""
        self.store.load_params(weights)

    def own_memory(self) -> dict:
        """Bytes this Plan holds beside its store: activations (pooled), workspace, inputs/labels."""
        return {"activations": self.arena_bytes, "activations_without_reuse": self.no_reuse_bytes,
                "saved_by_reuse": self.no_reuse_bytes - self.arena_bytes, "workspace": self.workspace_bytes,
                "io": self.io_bytes + (self._staging.nbytes() if self._staging is not None else 0)}

    def memory(self) -> dict:
        """What running this Plan needs on the device: its store and its own buffers; peak = the sum."""
        m = dict(self.store.memory(), **self.own_memory())
        m["peak"] = self.store.nbytes() + self.arena_bytes + self.workspace_bytes + m["io"]
        m["by_dtype"] = bytes_by_dtype(self)     # the same peak, by element type
        return m

    def release(self) -> None:
        """Drop this Plan's kernels and release its own buffers (inputs, labels, scalars; launcher
        tables go with their launches); the store's weights and shared arena stay (Store.release).
        The Plan is unusable afterwards. Runs when the Plan is collected or its Runtime closes."""
        if self.__dict__.get("_released", True):
            return
        self._released = True
        if not self.rt.closed:
            self.rt.queue.finish()
        if self.__dict__.get("_staging") is not None:
            self._staging.release()
        for ln in [*getattr(self, "fw_launches", ()), *getattr(self, "bw_launches", ()),
                   *getattr(self, "opt_launches", ())]:
            ln.kernel, ln.args = None, ()
        self.fw_launches, self.bw_launches, self.opt_launches = [], [], []
        for ref in getattr(self, "_own", ()):
            ref.buf.release()
        for _, sub in getattr(self, "_subs", {}).values():     # packed: before the shared arena's buffer
            sub.release()
        self.refs, self.arena, self.workspace, self._subs = {}, [], None, {}

    def __del__(self):
        self.release()

    def launch_labels(self) -> list[str]:
        return [ln.label for ln in self.fw_launches + self.bw_launches + self.opt_launches]


def _then(queue: cl.CommandQueue, then) -> None:
    """Submit what is enqueued (drivers may hold it until a flush), then run the host's `then()`."""
    if then is not None:
        queue.flush()
        then()
