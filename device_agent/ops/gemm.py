"""Gemm: the fully connected layer (torch `Linear`).

    x (N,F), weight (M,F), bias (M,) -> y (N,M) = x @ weight.T + bias
"""
from __future__ import annotations

import numpy as np

from .registry import register
from .base import Attr, ClSpec, OpDef, ShapeError, expect_rank, expect_shape


def gemm_param_shapes(attrs, x_shape):
    """x (N,F) -> {weight: (M,F), bias: (M,)} with M = out_features"""
    expect_rank("x", x_shape, 2)
    m, f = attrs["out_features"], x_shape[1]
    return {"weight": (m, f), "bias": (m,)}


def gemm_infer(attrs, shapes):
    """x (N,F), weight (M,F), bias? (M,) -> [(N,M)]"""
    x = tuple(shapes[0])
    expect_rank("x", x, 2)
    if len(shapes) < 2:
        raise ShapeError("weight", "Gemm needs a 'weight' input")
    m = attrs["out_features"]
    expect_shape("weight", shapes[1], (m, x[1]))
    if len(shapes) > 2:
        expect_shape("bias", shapes[2], (m,))
    return [(x[0], m)]


def gemm_flops(attrs, in_shapes, out_shapes):
    (n, f), m = in_shapes[0], attrs["out_features"]
    return 2 * n * m * f


def gemm_forward(attrs, xs, ctx):
    """x (N,F), w (M,F), b? (M,) -> y (N,M)"""
    gemm_infer(attrs, [np.shape(a) for a in xs])
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    y = x @ w.T                       # (N,F) @ (F,M) -> (N,M)
    if b is not None:
        y = y + b                     # (N,M) + (M,)
    return [y.astype(x.dtype, copy=False)], (x, w, b is not None)


def gemm_backward(attrs, saved, gys, needs, ctx):
    """g (N,M) -> dx (N,F), dw (M,F), db (M,)"""
    x, w, has_bias = saved
    (g,) = gys
    grads = [None] * (3 if has_bias else 2)
    # undoes: y = x @ w.T
    if needs[0]:
        grads[0] = g @ w              # (N,M) @ (M,F) -> (N,F)
    if needs[1]:
        grads[1] = g.T @ x            # (M,N) @ (N,F) -> (M,F)
    # undoes: y = y + b  (b broadcast over the batch)
    if has_bias and needs[2]:
        grads[2] = g.sum(axis=0)      # (N,M) -> (M,)
    return grads


# ----------------------------------------------------------------------------- OpenCL
def cl_gemm_gemms(attrs, in_shapes, out_shapes):
    """forward, dX, dW: their split-K partial products live in the workspace (GPUs: at batch 8 one FC
    GEMM alone leaves the device idle)"""
    (n, f), m = in_shapes[0], attrs["out_features"]
    return [(n, m, f, 1, False), (n, f, m, 1, False), (m, f, n, 1, False)]


def _work(io) -> dict:
    ws = io.workspace
    return {"work": ws, "work_floats": ws.size if ws is not None else 0}


def cl_gemm_forward(b, io):
    """x (N,F), w (M,F), b? (M,) -> y (N,M): one NT GEMM with the bias added in its epilogue"""
    x, w = io.x[0], io.x[1]
    (n, f), m = x.shape, w.shape[0]
    bias = io.x[2] if len(io.x) > 2 else None
    b.gemm(False, True, n, m, f, x, 0, f, w, 0, f, io.y[0], 0, m,
         bias=bias, bias_mode="col" if bias is not None else None, act=io.act, **_work(io))


def cl_gemm_backward(b, io):
    x, w = io.x[0], io.x[1]
    (n, f), m = x.shape, w.shape[0]
    gy = io.gy[0]
    gx = io.gx + [None] * (3 - len(io.gx))
    # undoes: y = x @ w.T
    if gx[0] is not None:
        b.gemm(False, False, n, f, m, gy, 0, m, w, 0, f, gx[0], 0, f, **_work(io))  # dx (N,F) = g (N,M) @ w (M,F)
    if gx[1] is not None:
        b.gemm(True, False, m, f, n, gy, 0, m, x, 0, f, gx[1], 0, f, **_work(io))   # dw (M,F) = g^T (M,N) @ x (N,F)
    # undoes: y = y + b
    if gx[2] is not None:
        b.colsum(gy, gx[2], n, m)                                          # db (M,) = g.sum(axis=0)


register(OpDef("Gemm", ("x", "weight", "bias?"), {"out_features": Attr("int", min=1)},
               gemm_infer, gemm_forward, gemm_backward, params=("weight", "bias"),
               param_shapes=gemm_param_shapes, flops=gemm_flops,
               doc="y = x @ weight.T + bias (torch Linear)",
               cl=ClSpec(cl_gemm_forward, cl_gemm_backward, saves=("x0", "x1"), gemms=cl_gemm_gemms)))
