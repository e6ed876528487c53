"""Inference on a batch: the computation `thomas infer` runs (numpy only, so it can run on the phone).

    logits = infer_package(graph, x)          # x (N, C, H, W) float32, preprocessed -> (N, K)
    logits = infer_package(graph, x, backend="auto")   # OpenCL when usable, else numpy

Eval mode: dropout off, BatchNorm with its running statistics. The batch is cut into chunks
of `batch_size` so memory stays bounded whatever N is.
"""
from __future__ import annotations

import numpy as np

from .backends.numpy import NumpyRef
from .errors import BackendError
from .model.graph import Graph


def infer_package(graph: Graph, x: np.ndarray, batch_size: int = 32, output: str | None = None,
                  backend: str = "numpy") -> np.ndarray:
    """x (N, *input dims) -> the first output (or `output`) for the N samples, float32.
    backend: numpy (the reference), opencl, or auto (engine.resolve_backend: OpenCL when usable).

    Raises BackendError (one line) when x does not fit the model's input."""
    spec = graph.inputs[0]
    x = np.asarray(x)
    want = tuple(spec.shape[1:])
    if x.ndim != len(spec.shape) or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        shown = "x".join("N" if d is None else str(d) for d in spec.shape)
        raise BackendError(f"input of shape {tuple(x.shape)} does not fit model '{graph.name}' "
                           f"(expects {shown})")
    if spec.shape[0] is not None and batch_size != spec.shape[0]:
        batch_size = spec.shape[0]                 # a fixed-batch model runs exactly that batch
        if x.shape[0] % batch_size:
            raise BackendError(f"model '{graph.name}' has a fixed batch of {batch_size}; "
                               f"got {x.shape[0]} samples")
    name = output or graph.outputs[0]
    if name not in graph.outputs:
        raise BackendError(f"model '{graph.name}' has no output '{name}'")
    if backend == "numpy":
        be = NumpyRef(graph)
    else:
        from .engine import engine_classes, lookahead, resolve_backend

        be = engine_classes(resolve_backend(backend, graph=graph))[1](graph)
    slices = ({spec.name: x[i:i + batch_size].astype(np.float32, copy=False)} for i in range(0, x.shape[0], batch_size))
    if backend == "numpy":
        parts = [be.forward(feeds)[name] for feeds in slices]
    else:       # the engine may upload the next slice (ahead) while this one runs
        parts = [be.forward(feeds, ahead=ahead)[name] for feeds, ahead in lookahead(slices)]
    return np.concatenate(parts, axis=0)
