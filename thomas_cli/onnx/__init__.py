"""ONNX <-> model package, on the host only (device_agent never imports onnx).

    g = import_onnx("mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))   # a validated Graph
    report = onnx_parity("mobilenet_v2.onnx", g)                         # max abs/rel error vs onnxruntime
    export_onnx(g, "out.onnx", opset=17)

common.py (loading, shapes, labels), importer.py (the walk), fold.py (constant folding),
convert_*.py (one function per ONNX op), parity.py (onnxruntime), export.py, preprocess.py
(the --mean/--std/--preprocess of `thomas import`). docs/ONNX.md has the tables.
Names are loaded on first use, so `thomas inspect` can read preprocess.py without importing onnx.
"""
from __future__ import annotations

import importlib

_WHERE = {"DEFAULT_OPSET": "common", "DEFAULT_TOLERANCE": "common", "EXPORT_OPSETS": "common",
          "load_model": "common", "parse_shape": "common", "read_labels": "common",
          "export_onnx": "export", "import_onnx": "importer", "onnx_parity": "parity"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
