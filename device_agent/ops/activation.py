"""Pointwise activations: Relu, LeakyRelu, PRelu, Clip (ReLU6), HardSigmoid, HardSwish, Sigmoid,
Identity.

All map x (any shape) -> y (same shape). PRelu also takes its trainable slope: x (N,C,...),
slope (C,) (one per channel, axis 1) or (1,) (shared).
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import FlexLocal, alias_backward, alias_forward, elt, local_floats, reduce_wg
from .base import Attr, ClSpec, OpDef, OpError, ShapeError


def _same(attrs, shapes):
    return [tuple(shapes[0])]


# ----------------------------------------------------------------------------- Relu
def relu_forward(attrs, xs, ctx):
    """x (*) -> y (*)"""
    (x,) = xs
    y = np.maximum(x, 0).astype(x.dtype, copy=False)
    return [y], (y,)


def relu_backward(attrs, saved, gys, needs, ctx):
    (y,) = saved
    # undoes: y = max(x, 0)  (gradient 0 where x <= 0)
    return [gys[0] * (y > 0)]


def cl_relu_forward(b, io):
    (x,), (y,) = io.x, io.y
    b.launch("activation.cl", "relu_fwd", (x.size,), elt(b), x, y, x.size)


def cl_relu_backward(b, io):
    if io.gx[0] is not None:
        y = io.y[0]
        b.launch("activation.cl", "relu_bwd", (y.size,), elt(b), y, io.gy[0], io.gx[0], y.size)


register(OpDef("Relu", ("x",), {}, _same, relu_forward, relu_backward,
               doc="y = max(x, 0)", cl=ClSpec(cl_relu_forward, cl_relu_backward, saves=("y0",))))


# ----------------------------------------------------------------------------- LeakyRelu
def leaky_forward(attrs, xs, ctx):
    """x (*) -> y (*) = x if x > 0 else alpha*x"""
    (x,) = xs
    y = np.where(x > 0, x, x.dtype.type(attrs["alpha"]) * x).astype(x.dtype, copy=False)
    return [y], (x,)


def leaky_backward(attrs, saved, gys, needs, ctx):
    (x,) = saved
    if not needs[0]:
        return [None]
    g = gys[0]
    # undoes: y = x if x > 0 else alpha*x   (alpha at x == 0, as torch's leaky_relu_backward)
    return [np.where(x > 0, g, g.dtype.type(attrs["alpha"]) * g).astype(g.dtype, copy=False)]


# ----------------------------------------------------------------------------- PRelu
def _channels(x_shape) -> int:
    return int(x_shape[1]) if len(x_shape) >= 2 else 1


def prelu_param_shapes(attrs, x_shape):
    return {"slope": (_channels(x_shape),)}


def prelu_infer(attrs, shapes):
    """x (N,C,*), slope (C,) or (1,) -> y (N,C,*)"""
    x, s = tuple(shapes[0]), tuple(shapes[1])
    if len(x) < 1:
        raise ShapeError("x", "input 'x' must have a batch axis, got a scalar")
    c = _channels(x)
    if s not in ((c,), (1,)):
        raise ShapeError("slope", f"input 'slope' has shape {s}, expected ({c},) (one per channel of "
                                  f"axis 1 of x {x}) or (1,) (shared)")
    return [x]


def _slope_view(slope, ndim):
    """slope (C,) or (1,) -> broadcastable against x (N,C,*)"""
    return slope.reshape((1, -1) + (1,) * (ndim - 2)) if ndim >= 2 else slope.reshape(-1)


def prelu_forward(attrs, xs, ctx):
    """x (N,C,*), slope (C,)|(1,) -> y (N,C,*) = x if x > 0 else slope[c]*x"""
    x, slope = xs
    prelu_infer(attrs, [x.shape, slope.shape])
    y = np.where(x > 0, x, _slope_view(slope, x.ndim).astype(x.dtype, copy=False) * x)
    return [y.astype(x.dtype, copy=False)], (x, slope)


def prelu_backward(attrs, saved, gys, needs, ctx):
    """g (N,C,*) -> dx (N,C,*), dslope (C,)|(1,)"""
    x, slope = saved
    g = gys[0]
    pos = x > 0
    # undoes: y = x if x > 0 else slope*x   (slope at x == 0, as torch's prelu)
    dx = np.where(pos, g, _slope_view(slope, x.ndim).astype(g.dtype, copy=False) * g) if needs[0] else None
    ds = None
    if needs[1]:
        t = np.where(pos, 0, g * x)
        # one slope per channel: sum over every axis but 1; one shared slope (or C == 1): over all
        axes = tuple(i for i in range(x.ndim) if i != 1) if slope.size > 1 else None
        ds = t.sum(axis=axes).reshape(slope.shape).astype(g.dtype, copy=False)
    return [None if dx is None else dx.astype(g.dtype, copy=False), ds]


# ----------------------------------------------------------------------------- Clip
def _clip_check(attrs):
    lo, hi = attrs["min"], attrs["max"]
    if lo is not None and hi is not None and lo > hi:
        raise OpError("max", f"attribute 'max' ({hi}) must be >= 'min' ({lo})")


def clip_infer(attrs, shapes):
    _clip_check(attrs)
    return _same(attrs, shapes)


def clip_forward(attrs, xs, ctx):
    """x (*) -> y (*) = min(max(x, min), max); a null bound is unbounded"""
    _clip_check(attrs)
    (x,) = xs
    lo, hi = attrs["min"], attrs["max"]
    y = x
    if lo is not None:
        y = np.maximum(y, x.dtype.type(lo))
    if hi is not None:
        y = np.minimum(y, x.dtype.type(hi))
    return [np.asarray(y, dtype=x.dtype)], (x,)


def clip_backward(attrs, saved, gys, needs, ctx):
    (x,) = saved
    if not needs[0]:
        return [None]
    lo, hi = attrs["min"], attrs["max"]
    # undoes: y = min(max(x, min), max)
    # Gradient passes only strictly inside (min, max), as docs/OPS.md says. That is torch's
    # F.relu6 / F.hardtanh convention (relu6'(0) = relu6'(6) = 0, consistent with Relu'(0) = 0);
    # NOTE torch.clamp differs: it passes the gradient at x == min and x == max too.
    mask = np.ones(x.shape, dtype=bool)
    if lo is not None:
        mask &= x > lo
    if hi is not None:
        mask &= x < hi
    return [gys[0] * mask]


# ----------------------------------------------------------------------------- HardSigmoid
def hardsigmoid_forward(attrs, xs, ctx):
    """x (*) -> y (*) = clip(alpha*x + beta, 0, 1)"""
    (x,) = xs
    t = x.dtype.type(attrs["alpha"]) * x + x.dtype.type(attrs["beta"])
    y = np.clip(t, 0, 1).astype(x.dtype, copy=False)
    return [y], (t,)


def hardsigmoid_backward(attrs, saved, gys, needs, ctx):
    (t,) = saved
    if not needs[0]:
        return [None]
    # undoes: y = clip(t, 0, 1), t = alpha*x + beta
    # Gradient alpha strictly inside 0 < t < 1, 0 at the kinks (torch hardsigmoid: -3 < x < 3).
    g = gys[0]
    return [(g * ((t > 0) & (t < 1))) * g.dtype.type(attrs["alpha"])]


# ----------------------------------------------------------------------------- HardSwish
def hardswish_forward(attrs, xs, ctx):
    """x (*) -> y (*) = x * relu6(x + 3) / 6"""
    (x,) = xs
    y = x * np.clip(x + 3, 0, 6) / 6
    return [y.astype(x.dtype, copy=False)], (x,)


def hardswish_backward(attrs, saved, gys, needs, ctx):
    (x,) = saved
    if not needs[0]:
        return [None]
    g = gys[0]
    # undoes: y = x * relu6(x + 3) / 6
    # dy/dx = 0 for x <= -3, x/3 + 1/2 for -3 < x < 3, 1 for x >= 3. At the kinks this is
    # torch's hardswish_backward: grad(-3) = 0, grad(3) = 1 (checked against torch 2.13).
    d = np.where(x <= -3, 0, np.where(x < 3, x / 3 + 0.5, 1)).astype(g.dtype, copy=False)
    return [g * d]


# ----------------------------------------------------------------------------- Sigmoid
def sigmoid_forward(attrs, xs, ctx):
    """x (*) -> y (*) = 1 / (1 + exp(-x))"""
    (x,) = xs
    # stable: z = exp(-|x|) never overflows; x >= 0: 1/(1+z), x < 0: z/(1+z)
    z = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)
    return [y], (y,)


def sigmoid_backward(attrs, saved, gys, needs, ctx):
    (y,) = saved
    # undoes: y = sigmoid(x)  (dy/dx = y (1 - y))
    return [gys[0] * y * (1 - y) if needs[0] else None]


# ----------------------------------------------------------------------------- Identity
def identity_forward(attrs, xs, ctx):
    """x (*) -> y (*) = x  (the same array: ops never write their inputs)"""
    return [xs[0]], ()


def identity_backward(attrs, saved, gys, needs, ctx):
    # undoes: y = x
    return [gys[0] if needs[0] else None]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/activation.cl; one work-item per element. Backward reads x for HardSigmoid/HardSwish
# (HardSigmoid recomputes t = alpha*x + beta), y for Sigmoid and Clip. Clip's mask from y is the
# mask from x (lo < x < hi <=> lo < y < hi, y = min(max(x, lo), hi); both false for NaN), and reading
# y lets the Plan free Clip's input once the forward passed it: in MobileNetV2 that input is the
# BatchNorm output (BN's backward reads the conv output instead), ~800 MB at batch 32, 224x224.
def _unary(fwd, bwd, args=lambda a: (), from_y=False):
    def forward(b, io):
        (x,), (y,) = io.x, io.y
        b.launch("activation.cl", fwd, (x.size,), elt(b), x, y, x.size, *args(io.attrs))

    def backward(b, io):
        if io.gx[0] is None:
            return
        src = io.y[0] if from_y else io.x[0]
        b.launch("activation.cl", bwd, (src.size,), elt(b), src, io.gy[0], io.gx[0], src.size, *args(io.attrs))

    return ClSpec(forward, backward, saves=("y0",) if from_y else ("x0",))


def _clip_args(a):
    lo, hi = a["min"], a["max"]
    return (np.float32(0 if lo is None else lo), np.float32(0 if hi is None else hi),
            lo is not None, hi is not None)


def _hsig_args(a):
    return np.float32(a["alpha"]), np.float32(a["beta"])


# LeakyRelu reads y when alpha >= 0 (y > 0 <=> x > 0 there; NaN stays NaN), so like Relu it keeps
# nothing alive that the next layer does not keep anyway; a negative alpha folds the sign away, so
# then it reads x.
def _leaky_saves(a):
    return ("y0",) if a["alpha"] >= 0 else ("x0",)


def cl_leaky_forward(b, io):
    (x,), (y,) = io.x, io.y
    b.launch("activation.cl", "leaky_fwd", (x.size,), elt(b), x, y, x.size, np.float32(io.attrs["alpha"]))


def cl_leaky_backward(b, io):
    if io.gx[0] is None:
        return
    src = io.y[0] if io.attrs["alpha"] >= 0 else io.x[0]
    # undoes: y = x if x > 0 else alpha*x
    b.launch("activation.cl", "leaky_bwd", (src.size,), elt(b), src, io.gy[0], io.gx[0], src.size,
             np.float32(io.attrs["alpha"]))


# PRelu: x viewed as (N, C, inner). dslope is a deterministic two-stage sum: each channel's N*inner
# terms split into S segments (enough work-groups to fill a GPU, each segment >= _SEG_MIN terms),
# one work-group per (channel, segment) -> workspace partials (dx written in the same pass over x
# and gy), then one work-group per slope entry. With one segment per channel and a slope per
# channel, the first stage writes dslope directly.
_DSLOPE_GROUPS = 256   # aim for this many first-stage work-groups
_SEG_MIN = 2048


def _prelu_dims(x_shape) -> tuple:
    """x shape -> (N, C, inner)"""
    return int(x_shape[0]), _channels(x_shape), int(np.prod(x_shape[2:], dtype=np.int64))


def _dslope_segments(x_shape) -> tuple:
    """x shape -> (S segments per channel, SEG terms per segment)"""
    n, c, inner = _prelu_dims(x_shape)
    total = max(n * inner, 1)
    segs = max(1, min(-(-total // _SEG_MIN), -(-_DSLOPE_GROUPS // c)))
    return segs, -(-total // segs)


def _dslope_direct(x_shape, slope_shape) -> bool:
    return _dslope_segments(x_shape)[0] == 1 and int(np.prod(slope_shape)) == _channels(x_shape)


def prelu_cl_workspace(attrs, in_shapes, out_shapes):
    x, s = in_shapes
    if _dslope_direct(x, s):
        return 0
    return 4 * _channels(x) * _dslope_segments(x)[0]


def _prelu_launch(b, kernel, x, slope, *bufs):
    """One work-item per element over the range (inner, C, N); groups along inner only."""
    n, c, inner = _prelu_dims(x.shape)
    wg = min(elt(b)[0], 1 << max(inner - 1, 0).bit_length())
    b.launch("activation.cl", kernel, (inner, c, n), FlexLocal((wg, 1, 1)), x, slope, *bufs, c, inner, slope.size == 1)


def cl_prelu_forward(b, io):
    (x, slope), (y,) = io.x, io.y
    _prelu_launch(b, "prelu_fwd", x, slope, y)


def cl_prelu_backward(b, io):
    x, slope = io.x
    gy, (gx, gs) = io.gy[0], io.gx
    n, c, inner = _prelu_dims(x.shape)
    if gs is None:
        if gx is not None:
            # undoes: y = x if x > 0 else slope*x   (dx)
            _prelu_launch(b, "prelu_bwd", x, slope, gy, gx)
        return
    segs, seg = _dslope_segments(x.shape)
    part = gs if _dslope_direct(x.shape, slope.shape) else io.workspace
    # undoes: y = x if x > 0 else slope*x   (dslope = Σ [x <= 0] gy x over N, inner (and C if shared);
    # dx in the same pass)
    wg = reduce_wg(b, "activation.cl", "prelu_bwd_dslope", seg)
    b.launch("activation.cl", "prelu_bwd_dslope", (c * segs * wg,), (wg,), x, slope, gy,
             part if gx is None else gx, part, n, c, inner, segs, seg, slope.size == 1, gx is not None,
             local_floats(wg))
    if part is gs:
        return
    per = c * segs // slope.size
    wg = reduce_wg(b, "activation.cl", "sum_rows", per)
    b.launch("activation.cl", "sum_rows", (slope.size * wg,), (wg,), part, gs, per, local_floats(wg))


register(
    OpDef("Clip", ("x",), {"min": Attr("float", None), "max": Attr("float", None)},
          clip_infer, clip_forward, clip_backward,
          doc="y = min(max(x, min), max); null bound = unbounded; ReLU6 = Clip(0, 6)",
          cl=_unary("clip_fwd", "clip_bwd", _clip_args, from_y=True)),
    OpDef("HardSigmoid", ("x",), {"alpha": Attr("float", 1 / 6), "beta": Attr("float", 0.5)},
          _same, hardsigmoid_forward, hardsigmoid_backward, doc="y = clip(alpha*x + beta, 0, 1)",
          cl=_unary("hardsigmoid_fwd", "hardsigmoid_bwd", _hsig_args)),
    OpDef("HardSwish", ("x",), {}, _same, hardswish_forward, hardswish_backward,
          doc="y = x * relu6(x + 3) / 6", cl=_unary("hardswish_fwd", "hardswish_bwd")),
    OpDef("Sigmoid", ("x",), {}, _same, sigmoid_forward, sigmoid_backward,
          doc="y = 1 / (1 + exp(-x)), stable for large |x|",
          cl=_unary("sigmoid_fwd", "sigmoid_bwd", from_y=True)),
    OpDef("Identity", ("x",), {}, _same, identity_forward, identity_backward, doc="y = x",
          cl=ClSpec(alias_forward, alias_backward, alias=True)),
    OpDef("LeakyRelu", ("x",), {"alpha": Attr("float", 0.01)}, _same, leaky_forward, leaky_backward,
          doc="y = x if x > 0 else alpha*x (torch leaky_relu)",
          cl=ClSpec(cl_leaky_forward, cl_leaky_backward, saves=_leaky_saves)),
    OpDef("PRelu", ("x", "slope"), {}, prelu_infer, prelu_forward, prelu_backward, params=("slope",),
          param_shapes=prelu_param_shapes,
          doc="y = x if x > 0 else slope[c]*x; slope (C,) per channel of axis 1 or (1,) shared (torch PReLU)",
          cl=ClSpec(cl_prelu_forward, cl_prelu_backward, saves=("x0",), workspace=prelu_cl_workspace)),
)
