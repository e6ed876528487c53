"""The Plan: one model, stage, batch size and OpenCL device turned into a fixed launch list over
buffers allocated once.

    plan = Plan(graph, batch=8, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9))
    loss, correct = plan.train_step(x, labels, lr=0.01, seed=step)   # only x, labels go up; 2 scalars come back
    logits = Plan(graph, batch=8, trainable=set()).infer(x)           # inference plan: BN folded into conv
    plan.memory()                                                      # bytes by category, peak, reuse savings

What the Plan owns (llm.c's "malloc all parameters at once"):
  params      one buffer, trainable parameters first (so the optimizer is ONE launch over a flat
              range), then frozen ones and BN buffers; each tensor a sub-buffer
  grads       the same layout for the trainable range; each backward OVERWRITES its gradient, so
              nothing is zeroed per step; a tensor consumed twice gets its second contribution in
              a temporary that one `acc_add` launch folds in
  optimizer   momentum / Adam moments, flat, same layout
  arena       activations, activation gradients and per-node state, pooled by liveness: two
              tensors share a buffer when their lifetimes [produced, last read] do not overlap.
              NOTE: every tensor is a whole cl.Buffer of the pool, never a sub-buffer of one big
              arena: NVIDIA's OpenCL driver blocks the host in every enqueue that touches a
              sub-buffer overlapping one still in use (an H100 MobileNetV2 last-layer step spent
              31.7 ms of host time enqueueing 7.9 ms of kernels); whole buffers cost ~6 % more bytes
  workspace   one scratch buffer, the largest any node asks for (im2col columns)
  recompute   (Plan(recompute=True)) BN outputs are not kept for the backward: each is rewritten
              from the BN input and statistics right before the first backward that reads it

A step is `replay(queue, launches)`: no allocation, no host round trip between ops, no finish()
until the two scalars are read back. Frozen nodes record no backward launches at all.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import BackendError
from .graph import Graph, Node
from .heads import loss_graph
from .ops import get_op, normalize_attrs
from .ops.dropout import draw_seed

try:
    import pyopencl as cl

    from .backends.opencl.runtime import LaunchBuilder, NodeIO, Runtime, TensorRef, replay, round_up
except ImportError:  # pragma: no cover - the Plan needs pyopencl; numpy_ref does not
    cl = None


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


@dataclass
class _Storage:
    """The bytes of aliased tensors; `pool` is the index of the arena buffer holding them."""

    nbytes: int
    start: int
    end: int
    pool: int = -1


@dataclass
class _Slot:
    name: str
    shape: tuple
    storage: _Storage
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))


def _folded(w, b0, gamma, beta, mean, var, eps) -> tuple[np.ndarray, np.ndarray]:
    """conv (w, b0) followed by BN with statistics (mean, var) -> one conv, in float64:
    w' = w·γ/σ, b' = (b0 − μ)·γ/σ + β, σ = sqrt(var + eps)."""
    gamma, beta, mean, var = (np.asarray(t, np.float64) for t in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    w = np.asarray(w, np.float64) * scale[:, None, None, None]
    b0 = 0.0 if b0 is None else np.asarray(b0, np.float64)
    return w.astype(np.float32), ((b0 - mean) * scale + beta).astype(np.float32)


def fold_batchnorm(graph: Graph, only: set[str] | None = None, record: dict | None = None) -> Graph:
    """Graph with every Conv2d -> BatchNorm pair (conv output read only by the BN) folded into the
    conv's weight and bias (`_folded`); `only`: the BN nodes that may fold (None: all).
    `record` gets {bn name: (conv weight, conv bias or None, folded bias, [γ, β, μ, var], eps)}."""
    g = copy.copy(graph)
    g.nodes = [copy.copy(n) for n in graph.nodes]
    g.params = dict(graph.params)
    g.weights = dict(graph.weights)
    consumers = g.consumers()
    producers = g.producers()
    drop: set[str] = set()
    for bn in g.nodes:
        if bn.op != "BatchNorm" or (only is not None and bn.name not in only):
            continue
        conv = producers.get(bn.inputs[0])
        if conv is None or conv.op != "Conv2d" or len(consumers[bn.inputs[0]]) != 1 \
                or bn.inputs[0] in g.outputs:
            continue
        eps = normalize_attrs(get_op("BatchNorm"), bn.attrs)["eps"]
        wname = conv.inputs[1]
        b0 = conv.inputs[2] if len(conv.inputs) > 2 else None
        bname = b0 or f"{conv.name}.folded_bias"
        w, b = _folded(g.weights[wname], None if b0 is None else g.weights[b0],
                       *(g.weights[t] for t in bn.inputs[1:5]), eps)
        g.weights[wname], g.weights[bname] = w, b
        g.params[bname] = copy.copy(g.params[wname])
        g.params[bname].shape = (w.shape[0],)
        if record is not None:
            record[bn.name] = (wname, b0, bname, list(bn.inputs[1:5]), eps)
        conv.inputs = list(conv.inputs[:2]) + [bname]
        conv.outputs = list(bn.outputs)    # the conv now produces the BN's tensor: names stay stable
        drop.add(bn.name)
        for t in bn.inputs[1:5]:
            g.params.pop(t, None)
            g.weights.pop(t, None)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def frozen_nodes(graph: Graph, trainable: set[str]) -> set[str]:
    """Nodes no gradient passes through (a frozen prefix): none of their inputs depends on a
    trainable parameter (so their own parameters are frozen too)."""
    req = set(trainable)
    out = set()
    for n in graph.nodes:
        if any(t in req for t in n.inputs):
            req.update(n.outputs)
        else:
            out.add(n.name)
    return out


def fuse_activations(graph: Graph, frozen: set[str], record: dict) -> Graph:
    """Graph with each producer -> Relu or Clip(0, 6) pair (the producer's output read only by the
    activation) merged into the producer, which then writes the activation's tensor; `record` gets
    {producer name: "relu" | "relu6"} (the launchers' `io.act`). Producers: BatchNorm always (its
    backward applies the activation's mask, read from the output), Conv2d/Gemm only when both nodes
    are `frozen` (their backward knows no activation)."""
    g = copy.copy(graph)
    g.nodes = [copy.copy(n) for n in graph.nodes]
    consumers = g.consumers()
    producers = g.producers()
    drop: set[str] = set()
    for a in g.nodes:
        if a.op not in ("Relu", "Clip"):
            continue
        kind = "relu"
        if a.op == "Clip":
            at = normalize_attrs(get_op("Clip"), a.attrs)
            kind = "relu6" if (at["min"], at["max"]) == (0.0, 6.0) else None
        p = producers.get(a.inputs[0])
        if kind is None or p is None or p.name in record or len(consumers[a.inputs[0]]) != 1 \
                or a.inputs[0] in g.outputs:
            continue
        if not (p.op == "BatchNorm" or p.op in ("Conv2d", "Gemm") and {p.name, a.name} <= frozen):
            continue
        p.outputs = list(a.outputs)
        record[p.name] = kind
        drop.add(a.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


class Plan:
    def __init__(self, graph: Graph, batch: int, *, trainable=None, optimizer: OptimConfig | None = None,
                 training: bool = True, bn_batch_stats: bool | None = None, label_smoothing: float = 0.0,
                 runtime: "Runtime | None" = None, reuse: bool = True, fold_bn: bool = True,
                 fuse_act: bool = True, recompute: bool = False):
        if cl is None:
            raise BackendError("the OpenCL backend needs pyopencl (pip install pyopencl)")
        self.rt = runtime or Runtime()
        self.batch = int(batch)
        if trainable is None or trainable:   # training: the loss reads the logits, not a final Softmax
            graph = loss_graph(graph)
        all_trainable = [k for k, p in graph.params.items() if p.trainable]
        self.trainable = set(all_trainable if trainable is None else trainable)
        bad = sorted(self.trainable - set(all_trainable))
        if bad:
            raise BackendError(f"'{bad[0]}' is not a trainable parameter of model '{graph.name}'")
        self.inference = not self.trainable
        self.optimizer = optimizer or OptimConfig()
        self.training = training and not self.inference
        self.bn_batch_stats = self.training if bn_batch_stats is None else (bn_batch_stats and not self.inference)
        # BN folded into the conv before it: every one in inference, the frozen prefix's in training
        # with frozen statistics (a last-layer step then runs the inference forward up to the head).
        # params() / load_params() still speak the unfolded weights: the fold's sources are kept here.
        # Then each BN + ReLU(6) pair, and each frozen conv/FC + ReLU(6) pair, becomes one launch (the
        # activation in the producer's epilogue; a BN's backward reads the output for its mask).
        self._fold: dict = {}
        self.acts: dict[str, str] = {}
        self.graph = graph
        frozen = {n.name for n in graph.nodes} if self.inference else frozen_nodes(graph, self.trainable)
        if fold_bn and not self.bn_batch_stats:
            self.graph = fold_batchnorm(graph, None if self.inference else frozen, self._fold)
        if fuse_act:
            self.graph = fuse_activations(self.graph, frozen, self.acts)
        self._fold_src = {t: np.array(graph.weights[t], np.float32) for wn, b0, bn_, st, eps in self._fold.values()
                          for t in [wn] + ([b0] if b0 else []) + st}
        self._fold_out = {t for wn, b0, bname, st, eps in self._fold.values() for t in (wn, bname)}
        self.label_smoothing = float(label_smoothing)
        self.reuse = reuse
        self.recompute = recompute
        self.step_count = 0
        self._build()

    # ================================================================== building
    def _build(self) -> None:
        g, rt = self.graph, self.rt
        shapes = g.infer_shapes(self.batch)
        self.shapes = shapes
        nodes = g.nodes
        self.specs = {}
        for n in nodes:
            op = get_op(n.op)
            if op.cl is None:
                raise BackendError(f"node '{n.name}': op {n.op} has no OpenCL kernels yet")
            self.specs[n.name] = (op, normalize_attrs(op, n.attrs))
        consumers = g.consumers()

        # ---------------------------------------------------------- which tensors need gradients
        req = set(self.trainable)
        bw_nodes: list[Node] = []
        if not self.inference:
            for n in nodes:
                if any(t in req for t in n.inputs):
                    req.update(n.outputs)
                    bw_nodes.append(n)
            bw_nodes.reverse()
        self.req = req
        F = len(nodes)                                   # the loss runs at time F
        t_fw = {n.name: i for i, n in enumerate(nodes)}
        t_bw = {n.name: F + 1 + k for k, n in enumerate(bw_nodes)}
        END = F + 2 + len(bw_nodes)

        # ---------------------------------------------------------- parameters: one flat buffer
        align = rt.align // 4                              # in floats
        order = [k for k in g.params if k in self.trainable] + [k for k in g.params if k not in self.trainable]
        self.param_offset: dict[str, int] = {}
        off = 0
        self.n_trainable = 0
        for k in order:
            self.param_offset[k] = off
            off = round_up(off + max(1, int(np.prod(g.params[k].shape))), align)
            if k in self.trainable:
                self.n_trainable = off
        self.n_params = off
        flat = np.zeros(self.n_params, np.float32)
        for k in order:
            o = self.param_offset[k]
            flat[o:o + g.weights[k].size] = g.weights[k].reshape(-1)
        self.params_buf = rt.alloc(flat.nbytes)
        cl.enqueue_copy(rt.queue, self.params_buf, flat)
        self.param_ref = {k: self._sub(self.params_buf, self.param_offset[k], k, g.params[k].shape) for k in order}
        self.grads_buf = None
        self.grad_ref: dict[str, TensorRef] = {}
        if self.n_trainable:
            self.grads_buf = rt.alloc(self.n_trainable * 4)
            cl.enqueue_copy(rt.queue, self.grads_buf, np.zeros(self.n_trainable, np.float32))
            self.grad_ref = {k: self._sub(self.grads_buf, self.param_offset[k], f"d{k}", g.params[k].shape)
                             for k in order if k in self.trainable}

        # ---------------------------------------------------------- activations: lifetimes
        storage_of: dict[str, _Storage] = {}
        slots: dict[str, _Slot] = {}

        def new_slot(name, shape, start, end, dtype=np.float32):
            st = _Storage(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, start, end)
            slots[name] = _Slot(name, tuple(shape), st, np.dtype(dtype))
            storage_of[name] = st
            return slots[name]

        def touch(name, t):
            st = storage_of[name]
            st.start, st.end = min(st.start, t), max(st.end, t)

        input_names = {s.name for s in g.inputs}
        for n in nodes:
            op, a = self.specs[n.name]
            i = t_fw[n.name]
            for k, t in enumerate(n.outputs):
                if op.cl.alias and k == 0 and n.inputs[0] not in g.params:
                    storage_of[t] = storage_of[n.inputs[0]] if n.inputs[0] in storage_of else None
                    if storage_of[t] is None:   # alias of a graph input: give it its own slot
                        new_slot(t, shapes[t], i, i)
                    else:
                        slots[t] = _Slot(t, shapes[t], storage_of[t])
                else:
                    new_slot(t, shapes[t], i, i)
            for t in n.inputs:
                if t in storage_of:
                    touch(t, i)
        for t in g.outputs:
            touch(t, END if self.inference else F)
        # recompute: a BN output a consumer's backward reads is not kept from the forward; a copy is
        # rewritten (ClSpec.recompute) right before the first such backward and lives only until the last
        producers = g.producers()
        self.recomputed: dict[str, list[str]] = {}      # tensor -> the backward nodes that read its copy
        for n in bw_nodes:
            op, a = self.specs[n.name]
            for s in op.cl.saved(a):
                kind, idx = s[0], int(s[1:])
                t = n.inputs[idx] if kind == "x" else n.outputs[idx]
                if t not in storage_of:
                    continue
                p = producers.get(t)
                if self.recompute and kind == "x" and p is not None and p.name in t_bw \
                        and self.specs[p.name][0].cl.recompute is not None:
                    self.recomputed.setdefault(t, []).append(n.name)
                else:
                    touch(t, t_bw[n.name])
        for t, readers in self.recomputed.items():
            times = [t_bw[r] for r in readers]
            new_slot(f"{t}@recomputed", shapes[t], min(times), max(times))

        # per-node state: forward -> backward (or just the forward in inference)
        self.state_ref: dict[str, dict[str, str]] = {}
        for n in nodes:
            op, a = self.specs[n.name]
            if op.cl.state is None:
                continue
            ins = [shapes[t] for t in n.inputs]
            outs = [shapes[t] for t in n.outputs]
            names = {}
            for k, (shape, dtype) in op.cl.state(a, ins, outs, self.training or self.bn_batch_stats).items():
                sname = f"{n.name}::{k}"
                new_slot(sname, shape, t_fw[n.name], t_bw.get(n.name, t_fw[n.name]), dtype)
                names[k] = sname
            self.state_ref[n.name] = names

        # gradients of activations: produced by the first backward that writes them, read until
        # the producer's backward; a second writer gets a temporary folded in by acc_add
        self.grad_slot: dict[str, str] = {}
        grad_writers: dict[str, list[str]] = {}
        if not self.inference:
            producers = g.producers()
            logits = g.outputs[0]
            for t in req - set(g.params):
                if t in input_names:
                    continue
                writers = sorted({c.name for c in consumers.get(t, []) if c.name in t_bw}, key=t_bw.get)
                if t == logits:
                    writers = ["<loss>"] + writers
                if not writers:
                    continue
                p = producers[t]
                first = F if t == logits else t_bw[writers[0]]
                grad_writers[t] = writers
                new_slot(f"d:{t}", shapes[t], first, t_bw[p.name])
                self.grad_slot[t] = f"d:{t}"
            # alias nodes pass their gradient through: share the storage when safe
            for n in bw_nodes:
                op, a = self.specs[n.name]
                x = n.inputs[0]
                if op.cl.alias and x in self.grad_slot and n.outputs[0] in self.grad_slot \
                        and len(consumers[x]) == 1:
                    so, si = storage_of[f"d:{n.outputs[0]}"], storage_of[f"d:{x}"]
                    so.start, so.end = min(so.start, si.start), max(so.end, si.end)
                    storage_of[f"d:{x}"] = so
                    slots[f"d:{x}"].storage = so
            self.grad_writers = grad_writers
            temp_need = [(t, w) for t, ws in grad_writers.items() for w in ws[1:]]
            for t, w in temp_need:
                tt = t_bw[w]
                new_slot(f"d:{t}@{w}", shapes[t], tt, tt)
            for k in self.trainable:
                users = sorted({c.name for c in consumers.get(k, []) if c.name in t_bw}, key=t_bw.get)
                for w in users[1:]:
                    new_slot(f"d:{k}@{w}", g.params[k].shape, t_bw[w], t_bw[w])

        self._storage_of = storage_of

        # ---------------------------------------------------------- pool storages into arena buffers
        uniq = list({id(s): s for s in storage_of.values()}.values())
        sizes = self._pool(uniq)
        self.arena_bytes = sum(sizes)
        self.no_reuse_bytes = sum(max(s.nbytes, 4) for s in uniq)
        self.arena = [rt.alloc(n) for n in sizes]
        self.refs: dict[str, TensorRef] = {}
        for name, sl in slots.items():
            self.refs[name] = TensorRef(name, sl.shape, self.arena[sl.storage.pool], sl.dtype)
        for s in g.inputs:
            shape = tuple(self.batch if d is None else d for d in s.shape)
            buf = rt.alloc(int(np.prod(shape)) * 4)
            self.refs[s.name] = TensorRef(s.name, shape, buf)
        self.input_name = g.inputs[0].name

        # workspace
        ws = 0
        for n in nodes:
            op, a = self.specs[n.name]
            if op.cl.workspace is not None:
                ws = max(ws, int(op.cl.workspace(a, [shapes[t] for t in n.inputs], [shapes[t] for t in n.outputs])))
        self.workspace_bytes = ws
        self.workspace = TensorRef("workspace", (max(1, ws // 4),), rt.alloc(ws)) if ws else None

        # loss scalars + labels
        self.labels = TensorRef("labels", (self.batch,), rt.alloc(self.batch * 4), np.dtype(np.int32))
        self.loss_ref = TensorRef("loss", (1,), rt.alloc(4))
        self.correct_ref = TensorRef("correct", (1,), rt.alloc(4))
        self.opt_bytes = 0

        # ---------------------------------------------------------- record the launches
        b = LaunchBuilder(rt)
        self.dropout_nodes = [n.name for n in nodes if n.op == "Dropout"] if self.training else []
        for n in nodes:
            io = self._io(n)
            b.label = n.name
            first = len(b.launches)
            op = self.specs[n.name][0]
            if op.cl.alias:
                if not self._shared(n.inputs[0], n.outputs[0]):
                    b.launch("plan.cl", "copy", (io.y[0].size,), None, io.x[0], io.y[0], io.y[0].size)
            else:
                op.cl.forward(b, io)
            self._scope_dyn(b.launches[first:], n.name)
        self.fw_launches = list(b.launches)
        self.bw_launches = []
        self.opt_launches = []
        if not self.inference:
            b.launches = []
            b.label = "<loss>"
            self._loss_launch(b)
            for n in bw_nodes:
                self._backward_launches(b, n)
            self.bw_launches = list(b.launches)
            b.launches = []
            b.label = "<optimizer>"
            self._optimizer_launches(b)
            self.opt_launches = list(b.launches)

    def _sub(self, buf, off_floats: int, name: str, shape, dtype=np.float32) -> "TensorRef":
        dtype = np.dtype(dtype)
        n = max(1, int(np.prod(shape, dtype=np.int64))) * dtype.itemsize
        sub = buf.get_sub_region(int(off_floats) * 4, n)
        return TensorRef(name, tuple(shape), sub, dtype)

    def _pool(self, storages: list[_Storage]) -> list[int]:
        """Greedy best fit, largest first: each storage joins the smallest buffer that is big enough
        and holds no storage whose lifetime intersects its own, else opens a new buffer (sized by
        its first, largest storage). Sets each storage's `pool`; returns the buffers' byte sizes."""
        sizes: list[int] = []
        spans: list[list[tuple[int, int]]] = []
        for s in sorted(storages, key=lambda s: (-s.nbytes, s.start)):
            best = -1
            if self.reuse:
                for i, n in enumerate(sizes):
                    if (best < 0 or n < sizes[best]) and all(e < s.start or s.end < b for b, e in spans[i]):
                        best = i
            if best < 0:
                best = len(sizes)
                sizes.append(max(s.nbytes, 4))
                spans.append([])
            spans[best].append((s.start, s.end))
            s.pool = best
        return sizes

    def _shared(self, a: str, b: str) -> bool:
        sa, sb = self._storage_of.get(a), self._storage_of.get(b)
        return sa is not None and sa is sb

    def _ref(self, t: str) -> "TensorRef":
        return self.param_ref[t] if t in self.param_ref else self.refs[t]

    def _io(self, n: Node) -> "NodeIO":
        op, a = self.specs[n.name]
        st = {k: self.refs[v] for k, v in self.state_ref.get(n.name, {}).items()}
        return NodeIO(n.name, n.op, a, [self._ref(t) for t in n.inputs], [self.refs[t] for t in n.outputs],
                      state=st, workspace=self.workspace, training=self.training,
                      bn_batch_stats=self.bn_batch_stats, act=self.acts.get(n.name))

    @staticmethod
    def _scope_dyn(launches, node: str) -> None:
        """Per-node names for per-step values (each Dropout its own seed) and node-prefixed labels
        (launchers may label their launches, e.g. 'gemm_nt': 'features.0.0/gemm_nt')."""
        for ln in launches:
            ln.dyn = {i: (f"{node}:{k}" if k == "seed" else k) for i, k in ln.dyn.items()}
            if not ln.label.startswith(node):
                ln.label = f"{node}/{ln.label}"

    def _grad_target(self, t: str, writer: str) -> "TensorRef | None":
        """Where `writer`'s backward puts its contribution to dL/dt: the gradient itself for the
        first writer, a temporary for later ones (folded in afterwards)."""
        if t in self.grad_ref:
            key = f"d:{t}@{writer}"
            return self.refs[key] if key in self.refs else self.grad_ref[t]
        if t not in self.grad_slot:
            return None
        ws = self.grad_writers[t]
        return self.refs[self.grad_slot[t]] if ws[0] == writer else self.refs[f"d:{t}@{writer}"]

    def _backward_launches(self, b, n: Node) -> None:
        op, a = self.specs[n.name]
        io = self._io(n)
        io.gy = [self.refs[self.grad_slot[t]] if t in self.grad_slot else None for t in n.outputs]
        if any(g is None for g in io.gy):
            raise BackendError(f"node '{n.name}': an output gradient has no writer")
        io.gx = [self._grad_target(t, n.name) if t in self.req else None for t in n.inputs]
        producers = self.graph.producers()
        done = set()
        for i, t in enumerate(n.inputs):
            if n.name not in self.recomputed.get(t, []):
                continue
            io.x[i] = self.refs[f"{t}@recomputed"]
            if self.recomputed[t][0] == n.name and t not in done:   # the first reader rewrites the copy
                done.add(t)
                p = producers[t]
                pio = self._io(p)
                pio.y = [io.x[i]]
                b.label = f"{p.name}:recompute"
                first = len(b.launches)
                self.specs[p.name][0].cl.recompute(b, pio)
                self._scope_dyn(b.launches[first:], f"{p.name}:recompute")
        b.label = f"{n.name}:backward"
        first = len(b.launches)
        if op.cl.alias:
            gx, gy = io.gx[0], io.gy[0]
            x, y = n.inputs[0], n.outputs[0]
            if gx is not None and not (gx is self.refs.get(self.grad_slot.get(x, "")) and
                                       self._shared(f"d:{x}", f"d:{y}")):
                b.launch("plan.cl", "copy", (gy.size,), None, gy, gx, gy.size)
        else:
            op.cl.backward(b, io)
        self._scope_dyn(b.launches[first:], f"{n.name}:backward")
        for t, gx in zip(n.inputs, io.gx):
            if gx is None:
                continue
            main = self.grad_ref.get(t) or self.refs.get(self.grad_slot.get(t, ""))
            if main is not None and gx is not main:
                b.launch("plan.cl", "acc_add", (gx.size,), None, main, gx, gx.size)

    def _loss_launch(self, b) -> None:
        from .ops.softmax import ce_scratch_bytes, cl_ce_fwd_bwd

        out = self.graph.outputs[0]
        scratch = TensorRef("ce_scratch", (ce_scratch_bytes(self.batch) // 4,),
                            self.rt.alloc(ce_scratch_bytes(self.batch)))
        cl_ce_fwd_bwd(b, self.refs[out], self.labels, self.loss_ref, self.correct_ref,
                      self.refs[self.grad_slot[out]], scratch, self.label_smoothing)

    def _zeros(self, name: str, n: int) -> "TensorRef":
        buf = self.rt.alloc(n * 4)
        cl.enqueue_copy(self.rt.queue, buf, np.zeros(n, np.float32))
        self.opt_bytes += n * 4
        return TensorRef(name, (n,), buf)

    def _optimizer_launches(self, b) -> None:
        """One update launch over the flat trainable range (clipping: two more, no host sync)."""
        from .backends.opencl import optim as clopt

        o, n = self.optimizer, self.n_trainable
        p = TensorRef("params", (n,), self.params_buf.get_sub_region(0, n * 4))
        g = TensorRef("grads", (n,), self.grads_buf)
        self.opt_state: dict[str, TensorRef] = {}
        scale = None
        if o.clip_grad_norm > 0:
            partial = self._zeros("clip_partial", clopt.clip_partials([n]))
            scale = self._zeros("clip_scale", 2)
            clopt.clip_grad_norm(b, [g], partial, scale, o.clip_grad_norm)
        if o.kind == "sgd":
            mom = None
            if o.momentum:
                mom = self.opt_state["momentum"] = self._zeros("momentum", n)
            clopt.sgd_step(b, p, g, mom, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay, scale=scale)
        elif o.kind in ("adam", "adamw"):
            m = self.opt_state["exp_avg"] = self._zeros("exp_avg", n)
            v = self.opt_state["exp_avg_sq"] = self._zeros("exp_avg_sq", n)
            clopt.adam_step(b, p, g, m, v, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                            decoupled=o.kind == "adamw", scale=scale)
        else:
            raise BackendError(f"unknown optimizer '{o.kind}' (sgd, adam, adamw)")

    # ================================================================== running
    def _upload(self, x) -> None:
        """x: the input array, or {input name: array} for a graph with several inputs (a training
        suffix whose cut crosses a residual branch)."""
        feeds = x if isinstance(x, dict) else {self.input_name: x}
        names = [s.name for s in self.graph.inputs]
        if sorted(feeds) != sorted(names):
            raise BackendError(f"the plan takes inputs {names}, got {sorted(feeds)}")
        keep = []
        for name in names:
            ref, a = self.refs[name], np.ascontiguousarray(feeds[name], np.float32)
            if tuple(a.shape) != ref.shape:
                raise BackendError(f"input '{name}' has shape {tuple(a.shape)}, the plan was built for {ref.shape}")
            cl.enqueue_copy(self.rt.queue, ref.buf, a, is_blocking=False)
            keep.append(a)
        self._keep = keep   # the copies are asynchronous: keep the host arrays alive until the step ends

    def _values(self, seed, lr: float = 0.0) -> dict:
        """Per-step kernel arguments. seed (an int or a sequence, as numpy's default_rng takes)
        gives one dropout seed per Dropout node, drawn in node order exactly as numpy_ref does."""
        rng = np.random.default_rng(seed)
        vals = {f"{n}:seed": np.uint32(draw_seed(rng)) for n in self.dropout_nodes}
        vals["lr"] = np.float32(lr)
        vals["step"] = np.int32(self.step_count)
        return vals

    def forward(self, x: np.ndarray, seed=0) -> np.ndarray:
        """Forward only; returns the first output (logits)."""
        return self.forward_all(x, seed)[self.graph.outputs[0]]

    infer = forward

    def forward_all(self, x: np.ndarray, seed=0) -> dict[str, np.ndarray]:
        """Forward only; every graph output, read back once the launches ran."""
        self._upload(x)
        replay(self.rt.queue, self.fw_launches, self._values(seed))
        return {o: self._read(self.refs[o]) for o in self.graph.outputs}

    def train_step(self, x: np.ndarray, labels: np.ndarray, lr: float, seed=0) -> tuple[float, int]:
        """forward + loss + backward + optimizer update (not applied when the loss is not finite);
        returns (mean loss, correct count)."""
        if self.inference:
            raise BackendError("this plan was built for inference (no trainable parameters)")
        labels = np.ascontiguousarray(labels, np.int32)
        if labels.shape != (self.batch,):
            raise BackendError(f"labels have shape {labels.shape}, the plan was built for ({self.batch},)")
        self._upload(x)
        cl.enqueue_copy(self.rt.queue, self.labels.buf, labels, is_blocking=False)
        self.step_count += 1
        vals = self._values(seed, lr)
        replay(self.rt.queue, self.fw_launches, vals)
        replay(self.rt.queue, self.bw_launches, vals)
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
        labels = np.ascontiguousarray(labels, np.int32)
        self._upload(x)
        cl.enqueue_copy(self.rt.queue, self.labels.buf, labels, is_blocking=False)
        vals = self._values(seed)
        replay(self.rt.queue, self.fw_launches, vals)
        replay(self.rt.queue, self.bw_launches, vals)
        loss, _ = self._scalars()
        return loss, {k: self._read(r) for k, r in self.grad_ref.items()}

    def _scalars(self) -> tuple[float, float]:
        """The one host sync of a step: read back the loss and the correct count."""
        out = np.empty(1, np.float32), np.empty(1, np.float32)
        cl.enqueue_copy(self.rt.queue, out[0], self.loss_ref.buf, is_blocking=False)
        cl.enqueue_copy(self.rt.queue, out[1], self.correct_ref.buf)
        return float(out[0][0]), float(out[1][0])

    def _read(self, ref: "TensorRef") -> np.ndarray:
        host = np.empty(ref.shape, ref.dtype)
        cl.enqueue_copy(self.rt.queue, host, ref.buf)
        return host

    def params(self) -> dict[str, np.ndarray]:
        """The graph's parameters as given (a folded conv + BN pair as its unfolded tensors)."""
        out = {k: self._read(r) for k, r in self.param_ref.items() if k not in self._fold_out}
        out.update({k: v.copy() for k, v in self._fold_src.items()})
        return out

    def load_params(self, weights: dict[str, np.ndarray]) -> None:
        """Unfolded tensors by name; a folded pair is folded again from what changed."""
        refold = set()
        for k, v in weights.items():
            if k in self._fold_src:
                self._fold_src[k] = np.array(v, np.float32).reshape(self._fold_src[k].shape)
                refold.update(bn for bn, (wn, b0, _, st, _) in self._fold.items() if k in [wn, b0, *st])
            elif k in self.param_ref:
                cl.enqueue_copy(self.rt.queue, self.param_ref[k].buf, np.ascontiguousarray(v, np.float32))
        for bn in refold:
            wn, b0, bname, st, eps = self._fold[bn]
            src = self._fold_src
            w, b = _folded(src[wn], src[b0] if b0 else None, *(src[t] for t in st), eps)
            cl.enqueue_copy(self.rt.queue, self.param_ref[wn].buf, w)
            cl.enqueue_copy(self.rt.queue, self.param_ref[bname].buf, b)
        self.rt.queue.finish()

    def memory(self) -> dict:
        opt = self.opt_bytes
        return {"params": self.n_params * 4, "grads": self.n_trainable * 4, "optimizer": opt,
                "activations": self.arena_bytes, "activations_without_reuse": self.no_reuse_bytes,
                "saved_by_reuse": self.no_reuse_bytes - self.arena_bytes,
                "workspace": self.workspace_bytes,
                "peak": self.n_params * 4 + self.n_trainable * 4 + opt + self.arena_bytes + self.workspace_bytes}

    def launch_labels(self) -> list[str]:
        return [ln.label for ln in self.fw_launches + self.bw_launches + self.opt_launches]
