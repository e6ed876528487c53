"""The numpy reference backend (NumpyRef): runs a Graph forward and backward in plain numpy.

It is the correctness oracle for every other backend and, with THOMAS_THREADS=1 (BLAS on one
thread, see device_agent/__init__.py), the serial single-core CPU baseline.

    be = NumpyRef(graph)                                  # every trainable param differentiated
    out = be.forward({"input": x}, training=True, grad=True)
    loss = be.loss(labels)                                # SoftmaxCrossEntropy on the single output
    grads = be.backward()                                 # param name -> dL/dparam

Memory: a tensor is dropped after its last consumer; `saved` state is kept only for nodes that
lie on a path from a differentiated tensor to an output, so a frozen prefix keeps nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import BackendError
from ...model.graph import Graph, Node
from ...ops import Ctx, OpDef, get_op, normalize_attrs


@dataclass
class _Step:
    node: Node
    op: OpDef
    attrs: dict
    slots: list[str]


class NumpyRef:
    name = "numpy_ref"

    def __init__(self, graph: Graph, trainable=None, dtype=np.float32, profile: bool = False):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.weights = {k: np.asarray(v, dtype=self.dtype).copy() for k, v in graph.weights.items()}
        all_trainable = {k for k, p in graph.params.items() if p.trainable}
        self.trainable = set(all_trainable if trainable is None else trainable)
        bad = sorted(self.trainable - all_trainable)
        if bad:
            raise BackendError(f"'{bad[0]}' is not a trainable parameter of model '{graph.name}'")
        self.steps = [_Step(n, get_op(n.op), normalize_attrs(get_op(n.op), n.attrs),
                            get_op(n.op).slot_names(len(n.inputs))) for n in graph.nodes]
        last_use: dict[str, int] = {}
        for i, s in enumerate(self.steps):
            for t in s.node.inputs:
                last_use[t] = i
        self._last_use = last_use
        self.profile = profile
        self.timings: dict[str, list[float]] = {}   # node name -> [forward s, backward s]
        self.state_updates: dict[str, np.ndarray] = {}
        self._tape: list | None = None
        self._dloss: dict[str, np.ndarray] | None = None
        self._outputs: dict[str, np.ndarray] | None = None
        self._ctx = Ctx()
        self.tape_nodes: list[str] = []

    # ------------------------------------------------------------------ forward
    def _requires_grad(self, input_grad: bool) -> set[str]:
        req = set(self.trainable)
        if input_grad:
            req |= {t.name for t in self.graph.inputs}
        for s in self.steps:
            if any(t in req for t in s.node.inputs):
                req.update(s.node.outputs)
        return req

    def _feeds(self, feeds) -> dict[str, np.ndarray]:
        specs = self.graph.inputs
        if not isinstance(feeds, dict):
            if len(specs) != 1:
                raise BackendError(f"model '{self.graph.name}' has {len(specs)} inputs; pass a dict")
            feeds = {specs[0].name: feeds}
        out = {}
        for spec in specs:
            if spec.name not in feeds:
                raise BackendError(f"missing input '{spec.name}'")
            x = np.asarray(feeds[spec.name])
            want = tuple(x.shape[0] if d is None else d for d in spec.shape) if x.ndim else None
            if want is None or tuple(x.shape) != want:
                shown = tuple("N" if d is None else d for d in spec.shape)
                raise BackendError(f"input '{spec.name}' has shape {tuple(x.shape)}, the model expects {shown}")
            out[spec.name] = x.astype(self.dtype, copy=False)
        extra = sorted(set(feeds) - {s.name for s in specs})
        if extra:
            raise BackendError(f"unknown input '{extra[0]}'")
        return out

    def forward(self, feeds, *, training: bool = False, bn_batch_stats: bool | None = None,
                grad: bool = False, input_grad: bool = False, seed: int | None = 0,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Run the graph. training: dropout on; bn_batch_stats (default = training): BN uses batch
        statistics and updates its running statistics in self.weights; grad: keep what backward needs."""
        ctx = Ctx(training=training, bn_batch_stats=training if bn_batch_stats is None else bn_batch_stats,
                  rng=rng if rng is not None else np.random.default_rng(seed))
        env: dict[str, np.ndarray] = dict(self.weights)
        env.update(self._feeds(feeds))
        req = self._requires_grad(input_grad) if grad else set()
        keep = set(self.graph.outputs)
        tape = []
        self.state_updates = {}
        for i, s in enumerate(self.steps):
            xs = [env[t] for t in s.node.inputs]
            t0 = time.perf_counter()
            ys, saved = s.op.forward(s.attrs, xs, ctx)
            if self.profile:
                self.timings.setdefault(s.node.name, [0.0, 0.0])[0] += time.perf_counter() - t0
            if ctx.updates:
                for slot, v in ctx.updates.items():
                    name = s.node.inputs[s.slots.index(slot)]
                    self.state_updates[name] = self.weights[name] = np.asarray(v, self.dtype)
                ctx.updates = {}
            for t, y in zip(s.node.outputs, ys):
                env[t] = y
            if any(t in req for t in s.node.inputs):
                tape.append((s, saved, [t in req for t in s.node.inputs], [y.shape for y in ys]))
            for t in s.node.inputs:
                if self._last_use.get(t) == i and t not in keep and t not in self.weights:
                    env.pop(t, None)
        self._tape = tape if grad else None
        self.tape_nodes = [s.node.name for s, *_ in tape]   # nodes whose backward state is kept
        self._ctx = ctx
        self._dloss = None
        self._outputs = {o: env[o] for o in self.graph.outputs}
        return dict(self._outputs)

    def loss(self, labels, output: str | None = None, label_smoothing: float = 0.0) -> float:
        """Mean softmax cross-entropy of `output` (default: the single output) after forward()."""
        if self._outputs is None:
            raise BackendError("loss() needs a forward() first")
        name = output or self.graph.outputs[0]
        op = get_op("SoftmaxCrossEntropy")
        attrs = normalize_attrs(op, {"label_smoothing": label_smoothing})
        logits = self._outputs[name]
        labels = np.asarray(labels)
        op.infer(attrs, [logits.shape, labels.shape])
        (l,), saved = op.forward(attrs, [logits, labels], self._ctx)
        (g, _) = op.backward(attrs, saved, [np.ones((), self.dtype)], [True, False], self._ctx)
        self._dloss = {name: g}
        return float(l)

    # ------------------------------------------------------------------ backward
    def backward(self, grad_outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Gradients of every differentiated param (and graph input, if forward had input_grad)."""
        if self._tape is None:
            raise BackendError("backward() needs a forward(..., grad=True) first")
        grads: dict[str, np.ndarray] = dict(grad_outputs if grad_outputs is not None else (self._dloss or {}))
        if not grads:
            raise BackendError("backward() needs output gradients or a loss() first")
        for s, saved, needs, out_shapes in reversed(self._tape):
            gys = [grads.pop(t, None) for t in s.node.outputs]
            if all(g is None for g in gys):
                continue
            gys = [np.zeros(shape, self.dtype) if g is None else g for g, shape in zip(gys, out_shapes)]
            t0 = time.perf_counter()
            gxs = s.op.backward(s.attrs, saved, gys, needs, self._ctx)
            if self.profile:
                self.timings.setdefault(s.node.name, [0.0, 0.0])[1] += time.perf_counter() - t0
            for t, g, need in zip(s.node.inputs, gxs, needs):
                if not need or g is None:
                    continue
                grads[t] = grads[t] + g if t in grads else g
        self._tape = None
        wanted = set(self.trainable) | {t.name for t in self.graph.inputs}
        out = {k: v for k, v in grads.items() if k in wanted}
        for k in self.trainable:
            out.setdefault(k, np.zeros_like(self.weights[k]))
        return out
