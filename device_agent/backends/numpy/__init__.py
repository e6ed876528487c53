"""The numpy backend: ref.py's NumpyRef (the correctness oracle and the serial single-core CPU
baseline) and engine.py's NumpyEngine / NumpyInfer, the training loop's engines on it. Always
available (numpy only).

A backend is one folder under device_agent/backends/ offering `available()` and
`engine_classes()` -> (TrainEngine class, InferEngine class); device_agent/engine.py picks one.
"""
from __future__ import annotations

from .engine import NumpyEngine, NumpyInfer
from .ref import NumpyRef

__all__ = ["NumpyEngine", "NumpyInfer", "NumpyRef", "available", "engine_classes"]


def available() -> bool:
    return True


def engine_classes():
    return NumpyEngine, NumpyInfer
