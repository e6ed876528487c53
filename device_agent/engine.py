"""The interface between the training loop and a backend.

The loop (train.py) splits the model into a frozen prefix and the trainable part (stages.py) and
drives two engines; it never touches a backend directly:

    feats = prefix.forward(x)                        # InferEngine: forward only, eval mode
    loss, correct = engine.train_step(feats, y, lr)  # TrainEngine: fwd, loss, bwd, clip, update
    loss_sum, correct, logits = engine.eval_batch(feats, y)

`x` is an array (N,C,H,W) when the graph has one input, else {input name: array}. A TrainEngine
runs heads.loss_graph(graph): its loss, accuracy and eval logits read the logits before a final
Softmax/LogSoftmax (flattened to (N,K)), never the probabilities.

A backend is one folder, device_agent/backends/<name>/, whose package offers `available()` and
`engine_classes()` -> (TrainEngine class, InferEngine class) with the constructors of
backends/numpy's NumpyEngine / NumpyInfer; `resolve_backend` and `engine_classes` below pick one
(job field `backend`) and import it only then. Nothing here imports a backend at module level.

Determinism: train_step k (0-based, counted by the engine and saved in optimizer_state()["step"])
draws its dropout masks from default_rng([seed, RNG_DROPOUT, k]), so a resumed run is bit-identical.
"""
from __future__ import annotations

import importlib
import itertools
import sys
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from .errors import JobError
from .model.graph import Graph
from .ops.dropout import RNG_DROPOUT  # noqa: F401  (re-exported: the engines' dropout stream)

BACKENDS = ("numpy", "opencl")   # the folders under device_agent/backends/


class TrainEngine(Protocol):
    def train_step(self, x, y: np.ndarray, lr: float, ahead=None) -> tuple[float, int]:
        """Forward (training mode), mean loss, backward, gradient clipping, optimizer update.
        Returns (loss, correct top-1). If the loss is not finite nothing is updated.
        ahead: None, or a function giving the loop's next batch (x, y) (or None at the end), which
        the engine may call while this step runs (OpenCL on a GPU uploads it then); the loop must
        pass those same arrays, unchanged, to the next call. An engine is free to ignore it."""

    def eval_batch(self, x, y: np.ndarray, ahead=None) -> tuple[float, int, np.ndarray]:
        """Eval mode (no dropout, BN running statistics): (sum of the per-image losses without label
        smoothing, correct top-1, logits (N,K)). ahead: as train_step's."""

    def params(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer of the engine's graph."""

    def load_params(self, d: dict[str, np.ndarray]) -> None: ...

    def optimizer_state(self) -> dict[str, np.ndarray]: ...

    def load_optimizer_state(self, d: dict[str, np.ndarray]) -> None: ...

    def memory(self) -> dict:
        """Bytes by category ("params", "grads", "optimizer", "activations", ...) and "peak"."""


def lookahead(items: Iterable) -> Iterator[tuple[Any, Callable[[], Any]]]:
    """Each item of `items` with an `ahead` for the engines: a function that makes the next item (once:
    the loop then gets that very object) and returns it, or None after the last.

        for (x, y), ahead in lookahead(batches):
            loss, correct = engine.train_step(x, y, lr, ahead=ahead)
    """
    it, buf = iter(items), []

    def peek():
        if not buf:
            buf.extend(itertools.islice(it, 1))
        return buf[0] if buf else None

    while True:
        if not buf:
            buf.extend(itertools.islice(it, 1))
            if not buf:
                return
        yield buf.pop(), peek


class InferEngine(Protocol):
    def forward(self, x, ahead=None) -> dict[str, np.ndarray]:
        """Eval-mode forward: {output name: array} for every graph output. ahead: as TrainEngine's, a
        function giving the next input (x alone)."""

    def memory(self) -> dict: ...


# ============================================================================ backend choice
def backend_module(name: str):
    """The package device_agent.backends.<name> (imported now, not before)."""
    if name not in BACKENDS:
        raise JobError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    return importlib.import_module(f"{__package__}.backends.{name}")


def backend_available(name: str) -> bool:
    """True when device_agent.backends.<name> imports, says available() and offers its engines."""
    try:
        mod = backend_module(name)
    except ImportError:
        return False
    try:
        ok = bool(getattr(mod, "available", lambda: False)())
        return ok and len(mod.engine_classes()) == 2
    except ImportError:
        return False
    except Exception as e:  # noqa: BLE001  (a broken driver must not take the numpy path down)
        print(f"thomas: {name} backend not usable: {type(e).__name__}: {e}", file=sys.stderr)
        return False


def opencl_available() -> bool:
    """True when the OpenCL backend can run here (pyopencl, a device, its engines)."""
    return backend_available("opencl")


def missing_kernels(graph: Graph | None) -> list[str]:
    """The ops of `graph` (sorted, each once) that have no OpenCL kernels yet."""
    if graph is None:
        return []
    from .ops import get_op

    return sorted({n.op for n in graph.nodes if get_op(n.op).cl is None})


def resolve_dtype(dtype: str, backend: str, graph: Graph | None = None) -> str:
    """A job's dtype with "auto" decided for the resolved `backend`: the backend's own default_dtype()
    ("mixed" on an OpenCL GPU) where every op of `graph` runs there, else "float32"."""
    if dtype != "auto":
        return dtype
    pick = getattr(backend_module(backend), "default_dtype", None)
    return pick() if pick is not None and not missing_kernels(graph) else "float32"


def resolve_backend(name: str, dtype: str = "float32", graph: Graph | None = None) -> str:
    """'auto' -> 'opencl' when available (and dtype is float32: OpenCL computes in float32, and every
    op of `graph` has OpenCL kernels), else 'numpy'; 'opencl' when unavailable -> JobError.

    An 'auto' that falls back to numpy because of ops without kernels says so in one stderr line
    (a note, not an error); an explicit 'opencl' keeps the Plan's error naming the node and op."""
    if dtype == "mixed":
        return _resolve_mixed(name, graph)
    if name == "numpy" or (name == "auto" and dtype not in ("float32", "auto")):
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


def _resolve_mixed(name: str, graph: Graph | None) -> str:
    """dtype 'mixed' (activations kept as halves for the backward) exists only in the OpenCL backend:
    'auto' and 'opencl' -> 'opencl', anything that would run numpy -> JobError."""
    if name == "numpy":
        raise JobError("job field 'dtype' is 'mixed', which only the OpenCL backend runs; "
                       "use backend 'opencl' or 'auto', or dtype 'float32'")
    if not opencl_available():
        raise JobError("job field 'dtype' is 'mixed', which needs the OpenCL backend, and none is usable "
                       "here (pyopencl or a device is missing); use dtype 'float32'")
    missing = missing_kernels(graph)
    if missing:
        raise JobError(f"job field 'dtype' is 'mixed', which needs the OpenCL backend, but model "
                       f"'{graph.name}' uses {', '.join(missing)} (no OpenCL kernels yet); use dtype 'float32'")
    return "opencl"


def engine_classes(backend: str):
    """(TrainEngine class, InferEngine class) of a resolved backend name."""
    return backend_module(backend).engine_classes()
