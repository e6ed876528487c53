"""Binary elementwise ops with numpy broadcasting: Add, Sub, Mul, Div.

    a (A...), b (B...) -> y (broadcast(A, B))       e.g. SE: (N,C,H,W) * (N,C,1,1) -> (N,C,H,W)

Gradients are summed back to each input's own shape (`unbroadcast`).
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import OpDef, ShapeError


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


register(
    OpDef("Add", ("a", "b"), {}, binary_infer, _forward(np.add, False), add_backward, doc="y = a + b"),
    OpDef("Sub", ("a", "b"), {}, binary_infer, _forward(np.subtract, False), sub_backward, doc="y = a - b"),
    OpDef("Mul", ("a", "b"), {}, binary_infer, _forward(np.multiply, True), mul_backward, doc="y = a * b"),
    OpDef("Div", ("a", "b"), {}, binary_infer, _forward(np.divide, True), div_backward, doc="y = a / b"),
)
