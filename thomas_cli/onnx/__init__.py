"""ONNX <-> model package, on the host only (device_agent never imports onnx).

    g = import_onnx("mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))   # a validated Graph
    report = onnx_parity("mobilenet_v2.onnx", g)                         # max abs/rel error vs onnxruntime
    export_onnx(g, "out.onnx", opset=17)

common.py (loading, shapes, labels), importer.py (the walk), convert_*.py (one function per
ONNX op), parity.py (onnxruntime), export.py. docs/ONNX.md has the tables.
"""
from .common import DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORT_OPSETS, load_model, parse_shape, read_labels
from .export import export_onnx
from .importer import import_onnx
from .parity import onnx_parity

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "EXPORT_OPSETS", "export_onnx", "import_onnx", "load_model",
           "onnx_parity", "parse_shape", "read_labels"]
