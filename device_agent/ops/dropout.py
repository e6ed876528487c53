"""Dropout (inverted): active only when ctx.training.

    x (*) -> y (*) = x * mask / (1 - ratio),  mask = ctx.rng.random(x.shape) >= ratio
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import Attr, OpDef, OpError


def _check_ratio(attrs):
    r = attrs["ratio"]
    if not 0 <= r < 1:
        raise OpError("ratio", f"attribute 'ratio' must be in [0, 1), got {r!r}")


def dropout_infer(attrs, shapes):
    _check_ratio(attrs)
    return [tuple(shapes[0])]


def dropout_forward(attrs, xs, ctx):
    """x (*) -> y (*); saved mask (*) bool, or None outside training"""
    _check_ratio(attrs)
    (x,) = xs
    if not ctx.training:
        return [x], (None,)
    r = attrs["ratio"]
    # One uniform draw per element whenever training (even for ratio 0), so the generator's
    # stream does not depend on the ratio: same seed -> same mask.
    mask = ctx.rng.random(x.shape) >= r           # keep with probability 1 - ratio
    y = (x * mask) / x.dtype.type(1 - r)
    return [y.astype(x.dtype, copy=False)], (mask,)


def dropout_backward(attrs, saved, gys, needs, ctx):
    (mask,) = saved
    (g,) = gys
    if not needs[0]:
        return [None]
    if mask is None:
        # undoes: y = x (not training)
        return [g]
    # undoes: y = x * mask / (1 - ratio)
    return [(g * mask) / g.dtype.type(1 - attrs["ratio"])]


register(OpDef("Dropout", ("x",), {"ratio": Attr("float", 0.5, min=0.0)},
               dropout_infer, dropout_forward, dropout_backward,
               doc="training: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio) from ctx.rng"))
