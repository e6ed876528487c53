"""Converters of layers with parameters, activations, pooling, normalisation and softmax:
one function per ONNX op, `op_X(imp, n)`, listed in CONVERTERS."""
from __future__ import annotations

import numpy as np

from .common import Unsupported, auto_pads, f32, onnx_attrs, reshape_attr, vector


def op_Conv(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    if len(xs) != 4:
        raise Unsupported(f"Conv on rank-{len(xs)} input (only 2-D images)")
    w = imp.cval(n, 1, "weight")
    b = imp.cval(n, 2, "bias", required=False)
    a = onnx_attrs(n)
    k = list(a.get("kernel_shape", w.shape[2:]))
    if list(w.shape[2:]) != k:
        raise Unsupported("Conv whose kernel_shape disagrees with its weight")
    stride = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    pads = auto_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, stride, dil)
    if pads is None:
        pads = list(a.get("pads", [0, 0, 0, 0]))
    if min(pads) < 0:
        raise Unsupported("Conv with negative pads")
    params = {"weight": (w, True)}
    if b is not None:
        params["bias"] = (b, True)
    attrs = {"out_channels": int(w.shape[0]), "kernel": k, "stride": stride, "pads": pads,
             "dilation": dil, "groups": int(a.get("group", 1))}
    imp.emit("Conv2d", imp.node_name(n), [x], attrs, n.output[0], params)


def op_Gemm(imp, n):
    x = imp.act(n)
    if len(imp.shape[x]) != 2:
        raise Unsupported("Gemm on a non-matrix input")
    a = onnx_attrs(n)
    if a.get("transA", 0):
        raise Unsupported("Gemm with transA=1")
    bmat = np.asarray(imp.cval(n, 1, "B"), dtype=np.float32)
    if bmat.ndim != 2:
        raise Unsupported("Gemm with a B that is not a matrix")
    w = bmat if a.get("transB", 0) else bmat.T                 # (M, F): torch Linear layout
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        w = w * np.float32(alpha)
    c = imp.cval(n, 2, "C", required=False)
    params = {"weight": (w, True)}
    if c is not None and beta != 0.0:
        bias = vector(np.asarray(c, np.float32), w.shape[0], rank=2)
        if bias is None:
            raise Unsupported("Gemm with a C that is not one bias per output")
        params["bias"] = (bias * np.float32(beta) if beta != 1.0 else bias, True)
    imp.emit("Gemm", imp.node_name(n), [x], {"out_features": int(w.shape[0])}, n.output[0], params)


def op_MatMul(imp, n):
    x = imp.act(n)
    if len(imp.shape[x]) != 2:
        raise Unsupported(f"MatMul on a rank-{len(imp.shape[x])} input")
    bmat = imp.cval(n, 1, "right-hand matrix")
    if np.ndim(bmat) != 2:
        raise Unsupported("MatMul with a right-hand side that is not a matrix")
    w = np.asarray(bmat, np.float32).T
    imp.emit("Gemm", imp.node_name(n), [x], {"out_features": int(w.shape[0])}, n.output[0],
               {"weight": (w, True)})


def op_BatchNormalization(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    if len(xs) not in (2, 4):
        raise Unsupported(f"BatchNormalization on rank-{len(xs)} input")
    a = onnx_attrs(n)
    if a.get("spatial", 1) == 0 and len(xs) == 4:
        raise Unsupported("BatchNormalization with spatial=0")
    imp.no_extra_outputs(n)
    vals = [np.asarray(imp.cval(n, k, what), np.float32)
            for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
    c = xs[1]
    if any(v.shape != (c,) for v in vals):
        raise Unsupported("BatchNormalization with parameters not shaped (C,)")
    m = a.get("momentum", 0.9)
    attrs = {"eps": f32(a.get("epsilon", 1e-5)), "momentum": f32(1.0 - f32(m))}
    params = {"weight": (vals[0], True), "bias": (vals[1], True),
              "running_mean": (vals[2], False), "running_var": (vals[3], False)}
    imp.emit("BatchNorm", imp.node_name(n), [x], attrs, n.output[0], params)


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
    simple(imp, n, "HardSigmoid", {"alpha": f32(a.get("alpha", 0.2)), "beta": f32(a.get("beta", 0.5))})


def pool_attrs(imp, n, xs) -> dict:
    a = onnx_attrs(n)
    if len(xs) != 4:
        raise Unsupported(f"{n.op_type} on rank-{len(xs)} input (only 2-D images)")
    k = list(a["kernel_shape"])
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise Unsupported(f"{n.op_type} with dilations")
    stride = list(a.get("strides", [1, 1]))
    pads = auto_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, stride, [1, 1])
    if pads is None:
        pads = list(a.get("pads", [0, 0, 0, 0]))
    if max(pads[0], pads[2]) >= k[0] or max(pads[1], pads[3]) >= k[1]:
        raise Unsupported(f"{n.op_type} with pads as large as the kernel")
    return {"kernel": k, "stride": stride, "pads": pads, "ceil_mode": bool(a.get("ceil_mode", 0))}


def op_MaxPool(imp, n):
    x = imp.act(n)
    imp.no_extra_outputs(n)
    imp.emit("MaxPool", imp.node_name(n), [x], pool_attrs(imp, n, imp.shape[x]), n.output[0])


def op_AveragePool(imp, n):
    x = imp.act(n)
    attrs = pool_attrs(imp, n, imp.shape[x])
    attrs["count_include_pad"] = bool(onnx_attrs(n).get("count_include_pad", 0))
    imp.emit("AveragePool", imp.node_name(n), [x], attrs, n.output[0])


def op_GlobalAveragePool(imp, n):
    x = imp.act(n)
    if len(imp.shape[x]) != 4:
        raise Unsupported("GlobalAveragePool on a non-image input")
    imp.emit("GlobalAveragePool", imp.node_name(n), [x], {}, n.output[0])


def op_GlobalMaxPool(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    if len(xs) != 4:
        raise Unsupported("GlobalMaxPool on a non-image input")
    attrs = {"kernel": list(xs[2:]), "stride": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": False}
    imp.emit("MaxPool", imp.node_name(n), [x], attrs, n.output[0])


def op_LRN(imp, n):
    x = imp.act(n)
    if len(imp.shape[x]) != 4:
        raise Unsupported("LRN on a non-image input")
    a = onnx_attrs(n)
    attrs = {"size": int(a["size"]), "alpha": f32(a.get("alpha", 1e-4)), "beta": f32(a.get("beta", 0.75)),
             "bias": f32(a.get("bias", 1.0))}
    imp.emit("LRN", imp.node_name(n), [x], attrs, n.output[0])


def op_Dropout(imp, n):
    x = imp.act(n)
    imp.no_extra_outputs(n)
    a = onnx_attrs(n)
    ratio = a.get("ratio", 0.5)
    if len(n.input) > 1 and n.input[1]:
        ratio = float(np.asarray(imp.cval(n, 1, "ratio")).reshape(()))
    if ratio == 0.0:
        imp.alias(n, n.output[0], x)
        return
    imp.emit("Dropout", imp.node_name(n), [x], {"ratio": f32(ratio)}, n.output[0])


def op_Softmax(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    a = onnx_attrs(n)
    axis = a.get("axis", -1 if imp.opset >= 13 else 1)
    axis = axis + r if axis < 0 else axis
    if imp.opset >= 13 or axis == r - 1:
        imp.emit("Softmax", imp.node_name(n), [x], {"axis": axis - r}, n.output[0])
        return
    # opset < 13: softmax over everything from `axis` on, as one flattened vector
    f = imp.emit("Flatten", imp.node_name(n, ".flatten"), [x], {"axis": axis}, None)
    s = imp.emit("Softmax", imp.node_name(n, ".softmax"), [f], {"axis": -1}, None)
    imp.emit("Reshape", imp.node_name(n), [s], {"shape": reshape_attr(xs, xs)}, n.output[0])


CONVERTERS = {
    "Conv": op_Conv,
    "Gemm": op_Gemm,
    "MatMul": op_MatMul,
    "BatchNormalization": op_BatchNormalization,
    "Relu": op_Relu,
    "Sigmoid": op_Sigmoid,
    "HardSwish": op_HardSwish,
    "HardSigmoid": op_HardSigmoid,
    "MaxPool": op_MaxPool,
    "AveragePool": op_AveragePool,
    "GlobalAveragePool": op_GlobalAveragePool,
    "GlobalMaxPool": op_GlobalMaxPool,
    "LRN": op_LRN,
    "Dropout": op_Dropout,
    "Softmax": op_Softmax,
}
