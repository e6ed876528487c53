"""The interface between the training loop and a backend.

The loop (train.py) splits the model into a frozen prefix and the trainable part (stages.py) and
drives two engines; it never touches a backend directly:

    feats = prefix.forward(x)                        # InferEngine: forward only, eval mode
    loss, correct = engine.train_step(feats, y, lr)  # TrainEngine: fwd, loss, bwd, clip, update
    loss_sum, correct, logits = engine.eval_batch(feats, y)

`x` is an array (N,C,H,W) when the graph has one input, else {input name: array}. A TrainEngine
runs heads.loss_graph(graph): its loss, accuracy and eval logits read the logits before a final
Softmax/LogSoftmax (flattened to (N,K)), never the probabilities. A backend
provides both classes with the constructors of NumpyEngine / NumpyInfer below; `make_engines`
picks one (job field `backend`).

Determinism: train_step k (0-based, counted by the engine and saved in optimizer_state()["step"])
draws its dropout masks from default_rng([seed, 3, k]), so a resumed run is bit-identical.
"""
from __future__ import annotations

import sys
from typing import Protocol

import numpy as np

from .backends.numpy_ref import NumpyRef
from .errors import BackendError, JobError
from .graph import Graph
from .heads import loss_graph
from .optim import Optimizer, clip_grad_norm

RNG_DROPOUT = 3


class TrainEngine(Protocol):
    def train_step(self, x, y: np.ndarray, lr: float) -> tuple[float, int]:
        """Forward (training mode), mean loss, backward, gradient clipping, optimizer update.
        Returns (loss, correct top-1). If the loss is not finite nothing is updated."""

    def eval_batch(self, x, y: np.ndarray) -> tuple[float, int, np.ndarray]:
        """Eval mode (no dropout, BN running statistics): (sum of the per-image losses without label
        smoothing, correct top-1, logits (N,K))."""

    def params(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer of the engine's graph."""

    def load_params(self, d: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> dict[str, np.ndarray]: ...

    def load_optimizer_state(self, d: dict[str, np.ndarray]) -> None: ...

    def memory(self) -> dict:
        """Bytes by category ("params", "grads", "optimizer", "activations", ...) and "peak"."""


class InferEngine(Protocol):
    def forward(self, x) -> dict[str, np.ndarray]:
        """Eval-mode forward: {output name: array} for every graph output."""

    def memory(self) -> dict: ...


# ============================================================================ numpy
class NumpyEngine:
    """TrainEngine on the numpy reference backend (optimizer from optim.py)."""

    backend = "numpy"

    def __init__(self, graph: Graph, trainable: set[str], optimizer: Optimizer, bn_batch_stats: bool,
                 clip_grad_norm: float | None = None, label_smoothing: float = 0.0, dtype=np.float32,
                 seed: int = 0, recompute: bool = False):
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

    def train_step(self, x, y, lr):
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
        if self.clip is not None:
            clip_grad_norm(grads, self.clip)
        self.opt.step(self.ref.weights, grads, lr)
        return loss, correct

    def eval_batch(self, x, y):
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
             "optimizer": self.opt.nbytes(), "activations": self._activations}
        m["peak"] = sum(m.values())
        return m


class NumpyInfer:
    """InferEngine on the numpy reference backend (keeps nothing for backward)."""

    backend = "numpy"

    def __init__(self, graph: Graph, dtype=np.float32):
        self.ref = NumpyRef(graph, trainable=set(), dtype=dtype)
        self._activations = 0

    def forward(self, x):
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


# ============================================================================ backend choice
def opencl_available() -> bool:
    """True when device_agent.backends.opencl imports, says available() and offers the engines."""
    try:
        from .backends import opencl
    except ImportError:
        return False
    try:
        ok = bool(getattr(opencl, "available", lambda: False)())
    except Exception as e:  # noqa: BLE001  (a broken driver must not take the numpy path down)
        print(f"thomas: OpenCL not usable: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    return ok and hasattr(opencl, "OpenCLEngine") and hasattr(opencl, "OpenCLInfer")


def missing_kernels(graph: Graph | None) -> list[str]:
    """The ops of `graph` (sorted, each once) that have no OpenCL kernels yet."""
    if graph is None:
        return []
    from .ops import get_op

    return sorted({n.op for n in graph.nodes if get_op(n.op).cl is None})


def resolve_backend(name: str, dtype: str = "float32", graph: Graph | None = None) -> str:
    """'auto' -> 'opencl' when available (and dtype is float32: OpenCL computes in float32, and every
    op of `graph` has OpenCL kernels), else 'numpy'; 'opencl' when unavailable -> JobError.

    An 'auto' that falls back to numpy because of ops without kernels says so in one stderr line
    (a note, not an error); an explicit 'opencl' keeps the Plan's error naming the node and op."""
    if name == "numpy" or (name == "auto" and dtype != "float32"):
        return "numpy"
    if opencl_available():
        missing = missing_kernels(graph) if name == "auto" else []
        if missing:
            print(f"thomas: backend auto runs numpy: model '{graph.name}' uses "
                  f"{', '.join(missing)}, which {'has' if len(missing) == 1 else 'have'} no OpenCL "
                  f"kernels yet", file=sys.stderr, flush=True)
            return "numpy"
        return "opencl"
    if name == "opencl":
        raise JobError("job field 'backend' is 'opencl' but no OpenCL training backend is usable here "
                       "(pyopencl, a device, or device_agent.backends.opencl's engines are missing); "
                       "use 'numpy' or 'auto'")
    return "numpy"


def engine_classes(backend: str):
    """(TrainEngine class, InferEngine class) of a resolved backend name."""
    if backend == "opencl":
        from .backends import opencl
        return opencl.OpenCLEngine, opencl.OpenCLInfer
    return NumpyEngine, NumpyInfer
