"""Reductions over axes: ReduceMean, ReduceMax (ONNX ReduceMean / ReduceMax with an `axes` attribute;
torch x.mean(dims) / x.amax(dims)).

    x (d0..d_{r-1}) -> y: the axes in `axes` reduced (kept as 1s when keepdims, else dropped)

`axes` is non-empty, may be negative, never holds the batch axis 0 nor one axis twice.
ReduceMax's gradient goes to the FIRST maximum of each reduced set in row-major order of the
reduced axes (as MaxPool's; NaN wins, as numpy argmax); torch amax splits ties evenly instead.
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import elt, int4, local_floats, reduce_wg
from .base import Attr, ClSpec, OpDef, ShapeError


def _prod(dims):
    return int(np.prod(dims, dtype=np.int64))


def _axes(attrs, shape):
    """attrs['axes'] checked against x's shape -> sorted non-negative axes; else ShapeError 'axes'"""
    rank, axes = len(shape), attrs["axes"]
    if not axes:
        raise ShapeError("axes", "attribute 'axes' must name at least one axis")
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError("axes", f"attribute 'axes' {list(axes)}: axis {a} is out of range for an "
                                     f"input of rank {rank}")
        out.append(a + rank if a < 0 else a)
    if 0 in out:
        raise ShapeError("axes", f"attribute 'axes' {list(axes)} reduces the batch axis 0")
    if len(set(out)) != len(out):
        raise ShapeError("axes", f"attribute 'axes' {list(axes)} names an axis twice")
    if any(shape[a] == 0 for a in out):
        raise ShapeError("x", f"input 'x' of shape {tuple(shape)} is empty along a reduced axis")
    return tuple(sorted(out))


def reduce_infer(attrs, shapes):
    """x (d_i) -> [(d_i, or 1 / nothing for a reduced axis)]"""
    x = tuple(shapes[0])
    axes = _axes(attrs, x)
    if attrs["keepdims"]:
        return [tuple(1 if i in axes else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def _kept_shape(x_shape, axes):
    """x shape -> y's shape with keepdims (1 on every reduced axis)"""
    return tuple(1 if i in axes else d for i, d in enumerate(x_shape))


# ----------------------------------------------------------------------------- ReduceMean
def mean_forward(attrs, xs, ctx):
    """x (d_i) -> y = mean of x over axes"""
    (x,) = xs
    (out,) = reduce_infer(attrs, [x.shape])
    axes = _axes(attrs, x.shape)
    y = x.mean(axis=axes, dtype=x.dtype)
    return [np.ascontiguousarray(y.reshape(out))], (x.shape, axes)


def mean_backward(attrs, saved, gys, needs, ctx):
    shape, axes = saved
    if not needs[0]:
        return [None]
    count = _prod([shape[a] for a in axes])
    # undoes: y = Σ_axes x / count   (every reduced element gets gy / count)
    g = gys[0].reshape(_kept_shape(shape, axes)) / gys[0].dtype.type(count)
    return [np.ascontiguousarray(np.broadcast_to(g, shape))]


# ----------------------------------------------------------------------------- ReduceMax
def _rows_view(x, axes):
    """x (d_i) -> (kept dims..., R): the reduced axes moved last (their order kept) and flattened"""
    t = np.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim))
    return t.reshape(t.shape[:x.ndim - len(axes)] + (-1,))


def max_forward(attrs, xs, ctx):
    """x (d_i) -> y = max of x over axes; saved: the first argmax (row-major over the axes)"""
    (x,) = xs
    (out,) = reduce_infer(attrs, [x.shape])
    axes = _axes(attrs, x.shape)
    rows = _rows_view(x, axes)                                 # (kept..., R)
    idx = rows.argmax(axis=-1)                                 # first max; NaN wins
    y = np.take_along_axis(rows, idx[..., None], axis=-1)[..., 0]
    return [np.ascontiguousarray(y.reshape(out))], (idx, x.shape, axes)


def max_backward(attrs, saved, gys, needs, ctx):
    idx, shape, axes = saved
    if not needs[0]:
        return [None]
    kept = [d for i, d in enumerate(shape) if i not in axes]
    red = [shape[a] for a in axes]
    # undoes: y = rows[idx]   (each output's gradient to its first argmax, 0 elsewhere)
    rows = np.zeros(tuple(kept) + (_prod(red),), dtype=gys[0].dtype)
    np.put_along_axis(rows, idx[..., None], gys[0].reshape(idx.shape)[..., None], axis=-1)
    moved = rows.reshape(tuple(kept) + tuple(red))
    return [np.ascontiguousarray(np.moveaxis(moved, range(len(kept), len(shape)), axes))]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/reduce.cl. x is viewed as (K0, R0, K1, R1, K2, R2): size-1 axes dropped, adjacent kept
# (K) or reduced (R) axes merged, padded with 1s. The batch axis is never reduced, so any rank <= 6
# fits. y has K0*K1*K2 elements; the reduced index r = (r0*R1 + r1)*R2 + r2 is row-major over the
# reduced axes (ReduceMax's argmax, saved in state "argmax").
# Layout (K0, R0) (the reduced axes innermost, e.g. squeeze-excitation's mean over H, W) with a
# long R0 runs one work-group per output (tree reduction); anything else one work-item per output.
_MEAN, _MAX = 0, 1
ROWS_MIN = 32   # reduced rows shorter than this run one work-item per output


def _groups(shape, axes):
    """x shape + reduced axes -> ((K0, K1, K2), (R0, R1, R2)); ShapeError past 3 groups of each"""
    gs = []                                                  # [size, reduced]
    for i, d in enumerate(shape):
        if d == 1:
            continue
        red = i in axes
        if gs and gs[-1][1] == red:
            gs[-1][0] *= d
        else:
            gs.append([d, red])
    if not gs or gs[0][1]:
        gs.insert(0, [1, False])
    kd, rd = [g[0] for g in gs[0::2]], [g[0] for g in gs[1::2]]
    if len(kd) > 3 or len(rd) > 3:
        raise ShapeError("axes", f"the OpenCL reductions handle at most 3 separate runs of reduced axes, "
                                 f"input 'x' of shape {tuple(shape)} with axes {list(axes)} has {len(rd)}")
    return tuple(kd + [1] * (3 - len(kd))), tuple(rd + [1] * (3 - len(rd)))


def max_cl_state(attrs, in_shapes, out_shapes, training):
    return {"argmax": (tuple(out_shapes[0]), np.int32)}


def _cl_forward(b, io, mode):
    (x,), (y,) = io.x, io.y
    kd, rd = _groups(x.shape, _axes(io.attrs, x.shape))
    arg = io.state["argmax"] if mode == _MAX else y
    if kd[1:] == rd[1:] == (1, 1) and rd[0] >= ROWS_MIN:
        wg = reduce_wg(b, "reduce.cl", "reduce_rows", rd[0], arrays=2)
        b.launch("reduce.cl", "reduce_rows", (kd[0] * wg,), (wg,), x, y, arg, kd[0], rd[0], mode,
                 local_floats(wg), local_floats(wg))
    else:
        b.launch("reduce.cl", "reduce_nd", (y.size,), elt(b), x, y, arg, y.size, int4(kd + (1,)),
                 int4(rd + (1,)), mode)


def _cl_backward(b, io, mode):
    gx = io.gx[0]
    if gx is None:
        return
    kd, rd = _groups(gx.shape, _axes(io.attrs, gx.shape))
    arg = io.state["argmax"] if mode == _MAX else io.gy[0]
    # undoes: y = mean (gy / R everywhere) or max (gy at the argmax, 0 elsewhere) over the axes
    b.launch("reduce.cl", "reduce_bwd", (gx.size,), elt(b), io.gy[0], arg, gx, gx.size, int4(kd + (1,)),
             int4(rd + (1,)), mode)


def cl_mean_forward(b, io):
    _cl_forward(b, io, _MEAN)


def cl_mean_backward(b, io):
    _cl_backward(b, io, _MEAN)


def cl_max_forward(b, io):
    _cl_forward(b, io, _MAX)


def cl_max_backward(b, io):
    _cl_backward(b, io, _MAX)


_ATTRS = {"axes": Attr("ints"), "keepdims": Attr("bool", True)}

register(
    OpDef("ReduceMean", ("x",), dict(_ATTRS), reduce_infer, mean_forward, mean_backward,
          doc="mean over axes (never 0); keepdims keeps them as 1s",
          cl=ClSpec(cl_mean_forward, cl_mean_backward)),
    OpDef("ReduceMax", ("x",), dict(_ATTRS), reduce_infer, max_forward, max_backward,
          doc="max over axes (never 0); gradient to the first max (row-major)",
          cl=ClSpec(cl_max_forward, cl_max_backward, state=max_cl_state)),
)
