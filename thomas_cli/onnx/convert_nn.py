"""Converters of layers with parameters and normalisation: Conv, Gemm, MatMul, BatchNormalization,
LRN, Dropout. One function per ONNX op, `op_X(imp, n)`, listed in CONVERTERS."""
from __future__ import annotations

import numpy as np

from .common import (Malformed, Unsupported, attr_float, attr_int, attr_ints, attr_str, auto_pads, f32,
                     onnx_attrs, vector)


def op_Conv(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    if len(xs) != 4:
        raise Unsupported(f"Conv on rank-{len(xs)} input (only 2-D images)")
    w = imp.cval(n, 1, "weight")
    if np.ndim(w) != 4:
        raise Malformed(f"the weight of a 2-D Conv must have rank 4, got shape {np.shape(w)}")
    b = imp.cval(n, 2, "bias", required=False)
    a = onnx_attrs(n)
    k = attr_ints(a, "kernel_shape", list(w.shape[2:]), length=2)
    if list(w.shape[2:]) != k:
        raise Malformed(f"kernel_shape {k} disagrees with the weight's {list(w.shape[2:])}")
    stride = attr_ints(a, "strides", [1, 1], length=2)
    dil = attr_ints(a, "dilations", [1, 1], length=2)
    pads = auto_pads(attr_str(a, "auto_pad", "NOTSET"), xs[2:], k, stride, dil)
    if pads is None:
        pads = attr_ints(a, "pads", [0, 0, 0, 0], length=4)
    if min(pads) < 0:
        raise Unsupported("Conv with negative pads")
    params = {"weight": (w, True)}
    if b is not None:
        params["bias"] = (b, True)
    attrs = {"out_channels": int(w.shape[0]), "kernel": k, "stride": stride, "pads": pads,
             "dilation": dil, "groups": attr_int(a, "group", 1)}
    imp.emit("Conv2d", imp.node_name(n), [x], attrs, n.output[0], params)


def op_Gemm(imp, n):
    """Y = alpha * A' B' + beta * C with A the activation (N, F) and B, C constants -> Gemm (torch
    Linear layout: weight (M, F) = alpha * B', bias (M,) = beta * C)."""
    a = onnx_attrs(n)
    if n.input[0] not in imp.tensor:
        raise Unsupported("Gemm with a constant A and a computed B (the batch would not be the first axis)")
    x = imp.act(n)
    if len(imp.shape[x]) != 2:
        raise Unsupported("Gemm on a non-matrix input")
    if attr_int(a, "transA", 0):
        raise Unsupported("Gemm with transA=1 on an activation (it would move the batch off the first axis)")
    bmat = np.asarray(imp.cval(n, 1, "B"), dtype=np.float32)
    if bmat.ndim != 2:
        raise Malformed(f"B must be a matrix, got shape {bmat.shape}")
    w = bmat if attr_int(a, "transB", 0) else bmat.T                 # (M, F): torch Linear layout
    alpha, beta = attr_float(a, "alpha", 1.0), attr_float(a, "beta", 1.0)
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
    if attr_int(a, "spatial", 1) == 0 and len(xs) == 4:
        raise Unsupported("BatchNormalization with spatial=0")
    imp.no_extra_outputs(n)
    vals = [np.asarray(imp.cval(n, k, what), np.float32)
            for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
    c = xs[1]
    if any(v.shape != (c,) for v in vals):
        raise Unsupported("BatchNormalization with parameters not shaped (C,)")
    m = attr_float(a, "momentum", 0.9)
    attrs = {"eps": f32(attr_float(a, "epsilon", 1e-5)), "momentum": f32(1.0 - f32(m))}
    params = {"weight": (vals[0], True), "bias": (vals[1], True),
              "running_mean": (vals[2], False), "running_var": (vals[3], False)}
    imp.emit("BatchNorm", imp.node_name(n), [x], attrs, n.output[0], params)


def op_LRN(imp, n):
    x = imp.act(n)
    if len(imp.shape[x]) != 4:
        raise Unsupported("LRN on a non-image input")
    a = onnx_attrs(n)
    attrs = {"size": attr_int(a, "size"), "alpha": f32(attr_float(a, "alpha", 1e-4)),
             "beta": f32(attr_float(a, "beta", 0.75)), "bias": f32(attr_float(a, "bias", 1.0))}
    imp.emit("LRN", imp.node_name(n), [x], attrs, n.output[0])


def op_Dropout(imp, n):
    x = imp.act(n)
    imp.no_extra_outputs(n)
    a = onnx_attrs(n)
    ratio = attr_float(a, "ratio", 0.5)
    if len(n.input) > 1 and n.input[1]:
        r = np.asarray(imp.cval(n, 1, "ratio"))
        if r.size != 1:
            raise Malformed(f"ratio must be one number, got shape {r.shape}")
        ratio = float(r.reshape(()))
    if ratio == 0.0:
        imp.alias(n, n.output[0], x)
        return
    imp.emit("Dropout", imp.node_name(n), [x], {"ratio": f32(ratio)}, n.output[0])


CONVERTERS = {
    "Conv": op_Conv,
    "Gemm": op_Gemm,
    "MatMul": op_MatMul,
    "BatchNormalization": op_BatchNormalization,
    "LRN": op_LRN,
    "Dropout": op_Dropout,
}
