"""LRN: local response normalisation across channels (docs/OPS.md; ONNX LRN).

    x (N,C,H,W) -> y (N,C,H,W)

    a = (size - 1) // 2,  b = size // 2  (= ceil((size-1)/2); a + b = size - 1)
    S[c] = Σ_{c' = c-a .. c+b, 0 <= c' < C} x[c']²
    d[c] = bias + alpha/size · S[c]                     (divisor `size`, however many channels exist)
    y[c] = x[c] · d[c]^-beta

For odd sizes this is exactly torch `local_response_norm`. For even sizes torch pads
size//2 channels before and (size-1)//2 after, i.e. its window sits one channel lower
(c-b .. c+a): torch_lrn(x) = flip(this(flip(x, 1)), 1). We follow OPS.md / ONNX.
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import elt
from .base import Attr, ClSpec, OpDef, expect_rank


def _window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = Σ_{c' = c-before .. c+after} v[:, c'] (zero outside 0..C-1), v (N,C,H,W)."""
    c = v.shape[1]
    out = np.array(v)
    for o in range(1, before + 1):          # c' = c - o
        if o < c:
            out[:, o:] += v[:, :c - o]
    for o in range(1, after + 1):           # c' = c + o
        if o < c:
            out[:, :c - o] += v[:, o:]
    return out


def lrn_infer(attrs, shapes):
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    return [x]


def lrn_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,H,W)"""
    (x,) = xs
    expect_rank("x", x.shape, 4)
    size, alpha, beta, bias = attrs["size"], attrs["alpha"], attrs["beta"], attrs["bias"]
    a, b = (size - 1) // 2, size // 2
    s = _window_sum(x * x, a, b)                                        # S (N,C,H,W)
    d = s * x.dtype.type(alpha / size) + x.dtype.type(bias)             # d = bias + alpha/size·S
    dmb = d ** x.dtype.type(-beta)                                      # d^-beta
    y = x * dmb
    return [y], (x, d, dmb)


def lrn_backward(attrs, saved, gys, needs, ctx):
    x, d, dmb = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    size, alpha, beta = attrs["size"], attrs["alpha"], attrs["beta"]
    a, b = (size - 1) // 2, size // 2
    # undoes: y[c] = x[c] · d[c]^-beta, d[c] = bias + alpha/size · Σ_{c'∈win(c)} x[c']²
    #   dx[j] = gy[j]·d[j]^-beta - 2·beta·alpha/size · x[j] · Σ_{c: j∈win(c)} gy[c]·x[c]·d[c]^(-beta-1)
    #   j ∈ win(c)  <=>  c ∈ j-b .. j+a   (the transposed window)
    u = gy * x * dmb / d
    t = _window_sum(u, b, a)
    dx = gy * dmb - x.dtype.type(2.0 * beta * alpha / size) * x * t
    return [dx.astype(x.dtype, copy=False)]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/lrn.cl, one work-item per element. State "scale" (x's shape, float32) holds d; the
# backward reads x (saved), gy and d, recomputing d^-beta.
def lrn_cl_state(attrs, in_shapes, out_shapes, training):
    return {"scale": (tuple(in_shapes[0]), np.float32)}


def _lrn_geom(attrs, shape):
    size = attrs["size"]
    return shape[1], shape[2] * shape[3], (size - 1) // 2, size // 2


def cl_lrn_forward(b, io):
    (x,), (y,) = io.x, io.y
    a = io.attrs
    b.launch("lrn.cl", "lrn_fwd", (x.size,), elt(b), x, y, io.state["scale"], x.size, *_lrn_geom(a, x.shape),
             np.float32(a["alpha"] / a["size"]), np.float32(a["beta"]), np.float32(a["bias"]))


def cl_lrn_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    a = io.attrs
    # undoes: y[c] = x[c] · d[c]^-beta
    b.launch("lrn.cl", "lrn_bwd", (gx.size,), elt(b), io.x[0], io.gy[0], io.state["scale"], gx, gx.size,
             *_lrn_geom(a, gx.shape), np.float32(a["beta"]),
             np.float32(2.0 * a["beta"] * a["alpha"] / a["size"]))


register(OpDef(
    "LRN", ("x",),
    {
        "size": Attr("int", min=1),
        "alpha": Attr("float", 1e-4),
        "beta": Attr("float", 0.75),
        "bias": Attr("float", 1.0),
    },
    lrn_infer, lrn_forward, lrn_backward,
    doc="local response norm across channels; window c-floor((size-1)/2) .. c+ceil((size-1)/2) (ONNX)",
    cl=ClSpec(cl_lrn_forward, cl_lrn_backward, saves=("x0",), state=lrn_cl_state),
))
