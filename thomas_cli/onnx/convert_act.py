"""Converters of activations and (log-)softmax: Relu, Sigmoid, HardSwish, HardSigmoid, LeakyRelu, PRelu,
Softmax, LogSoftmax. One function per ONNX op, `op_X(imp, n)`, listed in CONVERTERS."""
from __future__ import annotations

import numpy as np

from .common import Unsupported, attr_float, attr_int, f32, onnx_attrs, reshape_attr, vector


def simple(imp, n, op: str, attrs: dict | None = None):
    imp.emit(op, imp.node_name(n), [imp.act(n)], attrs or {}, n.output[0])


def op_Relu(imp, n):
    simple(imp, n, "Relu")


def op_Sigmoid(imp, n):
    simple(imp, n, "Sigmoid")


def op_HardSwish(imp, n):
    simple(imp, n, "HardSwish")


def op_HardSigmoid(imp, n):
    a = onnx_attrs(n)
    simple(imp, n, "HardSigmoid", {"alpha": f32(attr_float(a, "alpha", 0.2)), "beta": f32(attr_float(a, "beta", 0.5))})


def op_LeakyRelu(imp, n):
    simple(imp, n, "LeakyRelu", {"alpha": f32(attr_float(onnx_attrs(n), "alpha", 0.01))})


def op_PRelu(imp, n):
    """slope broadcast against x (N,C,...): one value (-> (1,)) or one per channel of axis 1
    (torch exports (C,1,1)) -> (C,); a trainable param, as torch's nn.PReLU weight."""
    x = imp.act(n)
    xs = imp.shape[x]
    s = np.asarray(imp.cval(n, 1, "slope"), np.float32)
    if s.size == 1:
        slope = s.reshape(1)
    elif len(xs) >= 2 and s.shape == (xs[1],) and (imp.opset < 7 or xs[-1] not in (1, xs[1])):
        # opset < 7 PRelu: a (C,) slope is per channel. onnx's version_converter keeps it (C,), which
        # opset 7's right-aligned broadcasting cannot apply to x: the old meaning is the only one
        slope = s
    else:
        slope = vector(s, xs[1], len(xs)) if len(xs) >= 2 else None
        if slope is None:
            raise Unsupported(f"PRelu with a slope of shape {s.shape} (only one value, or one per channel)")
    imp.emit("PRelu", imp.node_name(n), [x], {}, n.output[0], {"slope": (slope, True)})


def _softmax(imp, n, op: str):
    """opset >= 13: along `axis`; below, over everything from `axis` on as one flattened vector
    (which is just the last axis when axis = rank - 1, else Flatten -> op -> Reshape)."""
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    axis = attr_int(onnx_attrs(n), "axis", -1 if imp.opset >= 13 else 1)
    if not -r <= axis < r:
        raise Unsupported(f"{op} over axis {axis} of a rank-{r} input")
    axis = axis + r if axis < 0 else axis
    if axis == 0:
        raise Unsupported(f"{op} over the batch axis")
    if imp.opset >= 13 or axis == r - 1:
        imp.emit(op, imp.node_name(n), [x], {"axis": axis - r}, n.output[0])
        return
    f = imp.emit("Flatten", imp.node_name(n, ".flatten"), [x], {"axis": axis}, None)
    s = imp.emit(op, imp.node_name(n, "." + op.lower()), [f], {"axis": -1}, None)
    imp.emit("Reshape", imp.node_name(n), [s], {"shape": reshape_attr(xs, xs)}, n.output[0])


def op_Softmax(imp, n):
    _softmax(imp, n, "Softmax")


def op_LogSoftmax(imp, n):
    _softmax(imp, n, "LogSoftmax")


CONVERTERS = {
    "Relu": op_Relu,
    "Sigmoid": op_Sigmoid,
    "HardSwish": op_HardSwish,
    "HardSigmoid": op_HardSigmoid,
    "LeakyRelu": op_LeakyRelu,
    "PRelu": op_PRelu,
    "Softmax": op_Softmax,
    "LogSoftmax": op_LogSoftmax,
}
