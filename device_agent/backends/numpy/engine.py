"""The numpy backend's engines: device_agent/engine.py's TrainEngine and InferEngine on NumpyRef.

    eng = NumpyEngine(graph, trainable, make_optimizer("sgd", shapes, momentum=0.9), bn_batch_stats=False)
    loss, correct = eng.train_step(x, y, lr=0.01)
    logits = NumpyInfer(graph).forward({"input": x})["logits"]

The optimizer is optim.py's (host numpy); weights are NumpyRef's dict of arrays.
"""
from __future__ import annotations

import numpy as np

from ...errors import BackendError
from ...model.graph import Graph
from ...model.heads import loss_graph
from ...ops.dropout import RNG_DROPOUT
from ...training.optim import Optimizer, clip_grad_norm
from .ref import NumpyRef


class NumpyEngine:
    """TrainEngine on the numpy reference backend (optimizer from optim.py)."""

    backend = "numpy"

    def __init__(self, graph: Graph, trainable: set[str], optimizer: Optimizer, bn_batch_stats: bool,
                 clip_grad_norm: float | None = None, label_smoothing: float = 0.0, dtype=np.float32,
                 seed: int = 0, recompute: bool = False, prox_mu: float = 0.0):
        # recompute: an OpenCL memory option; the reference already frees what no backward reads
        graph = loss_graph(graph)            # the loss reads the logits, not a final Softmax's output
        self.graph = graph
        self.ref = NumpyRef(graph, trainable=trainable, dtype=dtype)
        self.opt = optimizer
        self.bn_batch_stats = bool(bn_batch_stats)
        self.clip = clip_grad_norm
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.output = graph.outputs[0]
        self._activations = 0
        # FedProx's anchor w0: the trainable weights as the engine was built (the package's, not a
        # checkpoint's: the loop loads a checkpoint after this), kept only when mu > 0
        self.prox_mu = float(prox_mu)
        self.anchor = {k: self.ref.weights[k].copy() for k in optimizer.names} if self.prox_mu > 0 else {}

    def train_step(self, x, y, lr, ahead=None):
        # ahead (the loop's next batch, engine.py): nothing to upload here, so never called
        # NOTE: a diverging run overflows somewhere; it is reported as a non-finite loss, not a warning
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._train_step(x, y, lr)

    def _train_step(self, x, y, lr):
        rng = np.random.default_rng([self.seed, RNG_DROPOUT, self.opt.t])
        out = self.ref.forward(x, training=True, bn_batch_stats=self.bn_batch_stats, grad=True, rng=rng)
        logits = out[self.output]
        loss = self.ref.loss(y, label_smoothing=self.label_smoothing)
        correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
        if not np.isfinite(loss):
            self.ref._tape = None
            return loss, correct
        if not self._activations:
            self._activations = _tape_bytes(self.ref._tape) + logits.nbytes
        grads = self.ref.backward()
        grads = {k: grads[k] for k in self.opt.names}
        if self.anchor:                      # d/dw (mu/2)·||w - w0||², before clipping and weight decay
            mu = self.opt.dtype.type(self.prox_mu)
            grads = {k: g + mu * (self.ref.weights[k] - self.anchor[k]) for k, g in grads.items()}
        if self.clip is not None:
            clip_grad_norm(grads, self.clip)
        self.opt.step(self.ref.weights, grads, lr)
        return loss, correct

    def eval_batch(self, x, y, ahead=None):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            logits = self.ref.forward(x, training=False, bn_batch_stats=False)[self.output]
            loss = self.ref.loss(y)
        return float(loss) * len(y), int(np.count_nonzero(np.argmax(logits, axis=1) == y)), logits

    def params(self):
        return {k: v.copy() for k, v in self.ref.weights.items()}

    def load_params(self, d):
        _load_into(self.ref.weights, d, "parameter")

    def optimizer_state(self):
        return self.opt.state()

    def load_optimizer_state(self, d):
        self.opt.load_state(d)

    def memory(self):
        w = self.ref.weights
        m = {"params": sum(v.nbytes for v in w.values()),
             "grads": sum(w[k].nbytes for k in self.ref.trainable),
             "optimizer": self.opt.nbytes() + sum(v.nbytes for v in self.anchor.values()),   # + FedProx's w0
             "activations": self._activations}
        m["peak"] = sum(m.values())
        return m


class NumpyInfer:
    """InferEngine on the numpy reference backend (keeps nothing for backward)."""

    backend = "numpy"

    def __init__(self, graph: Graph, dtype=np.float32):
        self.ref = NumpyRef(graph, trainable=set(), dtype=dtype)
        self._activations = 0

    def forward(self, x, ahead=None):      # ahead: never called (nothing to upload)
        out = self.ref.forward(x, training=False, bn_batch_stats=False)
        if not self._activations:
            self._activations = sum(v.nbytes for v in out.values())
        return out

    def memory(self):
        m = {"params": sum(v.nbytes for v in self.ref.weights.values()), "activations": self._activations}
        m["peak"] = sum(m.values())
        return m


def _tape_bytes(tape) -> int:
    """Bytes of the arrays the numpy tape keeps for backward (each counted once)."""
    seen, total = set(), 0
    stack = [saved for _, saved, *_ in tape or ()]
    while stack:
        v = stack.pop()
        if isinstance(v, np.ndarray):
            base = v if v.base is None else v.base
            if isinstance(base, np.ndarray) and id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(v, (tuple, list)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return total


def _load_into(dst: dict, src: dict, what: str) -> None:
    missing = sorted(set(dst) - set(src))
    extra = sorted(set(src) - set(dst))
    if missing or extra:
        raise BackendError(f"{what} '{(missing or extra)[0]}' is {'missing' if missing else 'unknown'}")
    for k, v in src.items():
        if tuple(v.shape) != dst[k].shape:
            raise BackendError(f"{what} '{k}' has shape {tuple(v.shape)}, expected {dst[k].shape}")
        dst[k] = np.array(v, dtype=dst[k].dtype)
