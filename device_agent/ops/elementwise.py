"""Binary elementwise ops with numpy broadcasting: Add, Sub, Mul, Div.

    a (A...), b (B...) -> y (broadcast(A, B))       e.g. SE: (N,C,H,W) * (N,C,1,1) -> (N,C,H,W)

Gradients are summed back to each input's own shape (`unbroadcast`).
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import elt, int4, local_floats, pad4, reduce_wg, strides4
from .base import ClSpec, OpDef, ShapeError


def unbroadcast(g, shape):
    """g (broadcast shape) -> (shape): sum over the axes that broadcasting stretched."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))       # axes that were prepended
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)      # axes of size 1 that were stretched
    return g.reshape(shape)


def binary_infer(attrs, shapes):
    """a (A...), b (B...) -> [broadcast(A, B)]; ShapeError names 'b' when they don't broadcast"""
    a, b = (tuple(s) for s in shapes)
    try:
        return [tuple(np.broadcast_shapes(a, b))]
    except ValueError:
        raise ShapeError("b", f"input 'b' has shape {b}, which does not broadcast "
                              f"against input 'a' of shape {a}") from None


def _forward(fn, keep_inputs):
    def forward(attrs, xs, ctx):
        """a (A...), b (B...) -> y (broadcast(A, B))"""
        binary_infer(attrs, [np.shape(x) for x in xs])
        a, b = xs
        y = np.asarray(fn(a, b))
        # Add/Sub only need the input shapes for backward, Mul/Div the inputs themselves
        saved = (np.shape(a), np.shape(b)) + ((a, b) if keep_inputs else (None, None))
        return [y.astype(np.result_type(a, b), copy=False)], saved
    return forward


def add_backward(attrs, saved, gys, needs, ctx):
    sa, sb, a, b = saved
    (g,) = gys
    # undoes: y = a + b
    return [unbroadcast(g, sa) if needs[0] else None,
            unbroadcast(g, sb) if needs[1] else None]


def sub_backward(attrs, saved, gys, needs, ctx):
    sa, sb, a, b = saved
    (g,) = gys
    # undoes: y = a - b
    return [unbroadcast(g, sa) if needs[0] else None,
            unbroadcast(-g, sb) if needs[1] else None]


def mul_backward(attrs, saved, gys, needs, ctx):
    sa, sb, a, b = saved
    (g,) = gys
    # undoes: y = a * b
    return [unbroadcast(g * b, sa) if needs[0] else None,
            unbroadcast(g * a, sb) if needs[1] else None]


def div_backward(attrs, saved, gys, needs, ctx):
    sa, sb, a, b = saved
    (g,) = gys
    # undoes: y = a / b   (dy/da = 1/b, dy/db = -a/b²)
    gb = g / b                                   # g/b, broadcast shape
    return [unbroadcast(gb, sa) if needs[0] else None,
            unbroadcast(-gb * a / b, sb) if needs[1] else None]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/elementwise.cl. Shapes are padded to rank 4; a stride of 0 reads a stretched axis.
# Backward: each input's gradient is the per-output-element term (bcast_term's modes) summed over
# the axes broadcasting stretched that input along: one work-group per gradient element.
_GRAD_MODES = {"add": (0, 0), "sub": (0, 1), "mul": (2, 3), "div": (4, 5)}


def _cl_binary(name):
    def forward(b, io):
        (xa, xb), (y,) = io.x, io.y
        out = pad4(y.shape, name, "a")
        pa, pb = pad4(xa.shape, name, "a"), pad4(xb.shape, name, "b")
        if pa == pb == out:
            b.launch("elementwise.cl", f"{name}_flat", (y.size,), elt(b), xa, xb, y, y.size)
        else:
            b.launch("elementwise.cl", f"{name}_fwd", (y.size,), elt(b), xa, xb, y, y.size, int4(out),
                     int4(strides4(pa, out)), int4(strides4(pb, out)))

    def backward(b, io):
        g = io.gy[0]
        out = pad4(g.shape, name, "a")
        # Add/Sub read neither input (gy stands in for the unused pointers)
        xa, xb = io.x if name in ("mul", "div") else (g, g)
        pa, pb = pad4(io.x[0].shape, name, "a"), pad4(io.x[1].shape, name, "b")
        sa, sb = int4(strides4(pa, out)), int4(strides4(pb, out))
        for gx, shape, mode in zip(io.gx, (pa, pb), _GRAD_MODES[name]):
            if gx is None:
                continue
            if shape == out:
                b.launch("elementwise.cl", "bcast_grad_elem", (g.size,), elt(b), g, xa, xb, gx, g.size, mode,
                         int4(out), sa, sb)
                continue
            rdims = tuple(o if d == 1 else 1 for d, o in zip(shape, out))
            r = int(np.prod(rdims))
            wg = reduce_wg(b, "elementwise.cl", "bcast_grad", r)
            b.launch("elementwise.cl", "bcast_grad", (gx.size * wg,), (wg,), g, xa, xb, gx, gx.size, r, mode,
                     int4(shape), int4(rdims), int4(strides4(out)), sa, sb, local_floats(wg))

    saves = ("x0", "x1") if name in ("mul", "div") else ()
    return ClSpec(forward, backward, saves=saves)


register(
    OpDef("Add", ("a", "b"), {}, binary_infer, _forward(np.add, False), add_backward, doc="y = a + b",
          cl=_cl_binary("add")),
    OpDef("Sub", ("a", "b"), {}, binary_infer, _forward(np.subtract, False), sub_backward, doc="y = a - b",
          cl=_cl_binary("sub")),
    OpDef("Mul", ("a", "b"), {}, binary_infer, _forward(np.multiply, True), mul_backward, doc="y = a * b",
          cl=_cl_binary("mul")),
    OpDef("Div", ("a", "b"), {}, binary_infer, _forward(np.divide, True), div_backward, doc="y = a / b",
          cl=_cl_binary("div")),
)
