"""Shape ops: Flatten, Reshape, Concat, Pad, Slice, Transpose.

    Flatten  x (d0..d_{r-1})            -> y (d0*..*d_{axis-1}, d_axis*..*d_{r-1})
    Reshape  x (*)                      -> y (shape; 0 copies x's dim, one -1 is inferred)
    Concat   x0 (..,A0,..), x1 (..,A1,..), ... -> y (..,A0+A1+..,..) along axis
    Pad      x (d0..d_{r-1})            -> y (d_i + pads[i] + pads[r+i]) with np.pad semantics
    Slice    x (.., D, ..)              -> y (.., L, ..) = x[.., start:end, ..] along axis (never 0)
    Transpose x (d0..d_{r-1})           -> y (d_perm[0]..d_perm[r-1]); rank 2..6, perm[0] = 0
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import alias_backward, alias_forward, elt, int4, int8
from .base import Attr, ClSpec, OpDef, ShapeError


def _prod(dims):
    return int(np.prod(dims, dtype=np.int64))


def _axis(attrs, rank, allow_end=False):
    """attrs['axis'] in [-rank, rank) (Flatten: [-rank, rank]) -> non-negative; else ShapeError 'axis'"""
    a = attrs["axis"]
    if not -rank <= a < rank + (1 if allow_end else 0):
        raise ShapeError("axis", f"attribute 'axis' = {a} is out of range for an input of rank {rank}")
    return a + rank if a < 0 else a


# ----------------------------------------------------------------------------- Flatten
def flatten_infer(attrs, shapes):
    """x (d0..d_{r-1}) -> [(prod(d[:axis]), prod(d[axis:]))]; axis in [-r, r]"""
    x = tuple(shapes[0])
    a = _axis(attrs, len(x), allow_end=True)
    return [(_prod(x[:a]), _prod(x[a:]))]


def flatten_forward(attrs, xs, ctx):
    """x (d0..d_{r-1}) -> y (prod(d[:axis]), prod(d[axis:]))"""
    (x,) = xs
    (out,) = flatten_infer(attrs, [x.shape])
    return [x.reshape(out)], (x.shape,)


# ----------------------------------------------------------------------------- Reshape
def reshape_infer(attrs, shapes):
    """x (*) -> [shape with 0 = copy x's dim there, -1 = whatever is left]"""
    x, want = tuple(shapes[0]), attrs["shape"]
    if sum(1 for d in want if d == -1) > 1:
        raise ShapeError("shape", f"attribute 'shape' {list(want)} has more than one -1")
    out = []
    for i, d in enumerate(want):
        if d == 0:
            if i >= len(x):
                raise ShapeError("shape", f"attribute 'shape' {list(want)} copies dimension {i} (0), "
                                          f"but input 'x' has shape {x}")
            d = x[i]
        out.append(d)
    total = _prod(x)
    if -1 in out:
        rest = _prod([d for d in out if d != -1])
        if rest == 0 or total % rest:
            raise ShapeError("shape", f"cannot reshape input 'x' of shape {x} ({total} elements) "
                                      f"to {list(want)}")
        out[out.index(-1)] = total // rest
    if _prod(out) != total:
        raise ShapeError("shape", f"cannot reshape input 'x' of shape {x} ({total} elements) to "
                                  f"{list(want)} ({_prod(out)} elements)")
    return [tuple(out)]


def reshape_forward(attrs, xs, ctx):
    """x (*) -> y (shape)"""
    (x,) = xs
    (out,) = reshape_infer(attrs, [x.shape])
    return [x.reshape(out)], (x.shape,)


def reshape_backward(attrs, saved, gys, needs, ctx):
    (shape,) = saved
    # undoes: y = x.reshape(...)  (Flatten and Reshape alike)
    return [gys[0].reshape(shape) if needs[0] else None]


# ----------------------------------------------------------------------------- Concat
def concat_infer(attrs, shapes):
    """x_i (.., A_i, ..) -> [(.., Σ A_i, ..)]; every other dimension must agree with input0"""
    shapes = [tuple(s) for s in shapes]
    first = shapes[0]
    a = _axis(attrs, len(first))
    for i, s in enumerate(shapes[1:], 1):
        if len(s) != len(first) or any(d != e for k, (d, e) in enumerate(zip(s, first)) if k != a):
            raise ShapeError(f"input{i}", f"input 'input{i}' has shape {s}, which does not match "
                                          f"'input0' {first} outside axis {a}")
    out = list(first)
    out[a] = sum(s[a] for s in shapes)
    return [tuple(out)]


def concat_forward(attrs, xs, ctx):
    """x_i (.., A_i, ..) -> y (.., Σ A_i, ..)"""
    concat_infer(attrs, [np.shape(x) for x in xs])
    a = _axis(attrs, np.ndim(xs[0]))
    y = np.concatenate(xs, axis=a)
    return [y.astype(xs[0].dtype, copy=False)], (a, [x.shape[a] for x in xs])


def concat_backward(attrs, saved, gys, needs, ctx):
    a, sizes = saved
    (g,) = gys
    # undoes: y = concatenate(xs, axis)  (each input gets its slice of g)
    parts = np.split(g, np.cumsum(sizes)[:-1], axis=a)
    return [p if need else None for p, need in zip(parts, needs)]


# ----------------------------------------------------------------------------- Pad
def pad_infer(attrs, shapes):
    """x (d_i) -> [(d_i + begin_i + end_i)]; pads = [begins..., ends...] (ONNX order)"""
    x, pads, mode = tuple(shapes[0]), attrs["pads"], attrs["mode"]
    r = len(x)
    if len(pads) != 2 * r:
        raise ShapeError("pads", f"attribute 'pads' needs 2*rank = {2 * r} entries for input 'x' "
                                 f"of shape {x}, got {len(pads)}")
    for i, d in enumerate(x):
        lo, hi = pads[i], pads[r + i]
        if mode == "reflect" and max(lo, hi) >= d:
            raise ShapeError("pads", f"reflect padding of axis {i} needs pads < the size {d} of "
                                     f"input 'x' (shape {x}), got {lo} and {hi}")
        if mode == "edge" and d == 0 and max(lo, hi) > 0:
            raise ShapeError("pads", f"edge padding of axis {i} needs a non-empty input 'x', got shape {x}")
    return [tuple(d + pads[i] + pads[r + i] for i, d in enumerate(x))]


def pad_forward(attrs, xs, ctx):
    """x (d_i) -> y (d_i + begin_i + end_i)"""
    (x,) = xs
    pad_infer(attrs, [x.shape])
    r, pads, mode = x.ndim, attrs["pads"], attrs["mode"]
    width = [(pads[i], pads[r + i]) for i in range(r)]
    if mode == "constant":
        y = np.pad(x, width, mode="constant", constant_values=x.dtype.type(attrs["value"]))
    else:
        y = np.pad(x, width, mode=mode)
    return [y.astype(x.dtype, copy=False)], (x.shape,)


def _source_index(d, lo, hi, mode):
    """(d + lo + hi,) int: the index of x along this axis each output position copies; -1 = constant"""
    idx = np.arange(d)
    if mode == "constant":
        return np.pad(idx, (lo, hi), mode="constant", constant_values=-1)
    return np.pad(idx, (lo, hi), mode=mode)


def pad_backward(attrs, saved, gys, needs, ctx):
    """g (d_i + begin_i + end_i) -> dx (d_i)"""
    (shape,) = saved
    r, pads, mode = len(shape), attrs["pads"], attrs["mode"]
    g = gys[0]
    if not needs[0]:
        return [None]
    if mode == "constant":
        # undoes: y = np.pad(x, ..., constant): x sits in the middle block; the padding is constant
        return [np.ascontiguousarray(g[tuple(slice(pads[i], pads[i] + d) for i, d in enumerate(shape))])]
    # undoes: y = np.pad(x, ...), one axis at a time: every output position adds its gradient
    # to the input position it copied (reflect/edge copy an input position several times).
    # (_source_index marks constant padding -1: it copies nothing and gets no gradient.)
    for ax, d in enumerate(shape):
        lo, hi = pads[ax], pads[r + ax]
        if lo == 0 and hi == 0:
            continue
        src = _source_index(d, lo, hi, mode)       # (d + lo + hi,)
        keep = src >= 0
        gm = np.moveaxis(g, ax, 0)                 # (d+lo+hi, ...)
        acc = np.zeros((d,) + gm.shape[1:], dtype=g.dtype)
        np.add.at(acc, src[keep], gm[keep])
        g = np.moveaxis(acc, 0, ax)
    return [np.ascontiguousarray(g)]


# ----------------------------------------------------------------------------- Slice
def _slice_axis(attrs, rank):
    """attrs['axis'] -> non-negative axis in [1, rank); the batch axis 0 is never sliced"""
    a = _axis(attrs, rank)
    if a == 0:
        raise ShapeError("axis", f"attribute 'axis' = {attrs['axis']} is the batch axis; Slice cuts "
                                 f"axes 1..{rank - 1} only")
    return a


def _slice_bounds(attrs, d):
    """(start, end) of x[start:end] along an axis of length d, clamped as Python slices are"""
    start, end, _ = slice(attrs["start"], attrs["end"]).indices(d)
    return start, max(start, end)


def slice_infer(attrs, shapes):
    """x (.., D, ..) -> [(.., end - start, ..)] along axis; start/end clamped as Python slices"""
    x = tuple(shapes[0])
    a = _slice_axis(attrs, len(x))
    start, end = _slice_bounds(attrs, x[a])
    if end == start:
        raise ShapeError("x", f"Slice [{attrs['start']}:{attrs['end']}] of axis {a} of input 'x' "
                              f"(shape {x}) is empty")
    return [x[:a] + (end - start,) + x[a + 1:]]


def slice_forward(attrs, xs, ctx):
    """x (.., D, ..) -> y (.., L, ..) = x[.., start:end, ..]"""
    (x,) = xs
    slice_infer(attrs, [x.shape])
    a = _slice_axis(attrs, x.ndim)
    start, end = _slice_bounds(attrs, x.shape[a])
    idx = (slice(None),) * a + (slice(start, end),)
    return [np.ascontiguousarray(x[idx])], (x.shape, a, start, end)


def slice_backward(attrs, saved, gys, needs, ctx):
    """g (.., L, ..) -> dx (.., D, ..)"""
    shape, a, start, end = saved
    if not needs[0]:
        return [None]
    # undoes: y = x[.., start:end, ..]  (the rest of x gets no gradient)
    dx = np.zeros(shape, dtype=gys[0].dtype)
    dx[(slice(None),) * a + (slice(start, end),)] = gys[0]
    return [dx]


# ----------------------------------------------------------------------------- Transpose
def _perm(attrs, rank):
    """attrs['perm'] checked against x's rank: a permutation of 0..rank-1 with perm[0] == 0"""
    perm = tuple(attrs["perm"])
    if not 2 <= rank <= 6:
        raise ShapeError("x", f"Transpose handles inputs of rank 2 to 6, got rank {rank}")
    if sorted(perm) != list(range(rank)):
        raise ShapeError("perm", f"attribute 'perm' {list(perm)} is not a permutation of the "
                                 f"{rank} axes of input 'x'")
    if perm[0] != 0:
        raise ShapeError("perm", f"attribute 'perm' {list(perm)} moves the batch axis; perm[0] must be 0")
    return perm


def transpose_infer(attrs, shapes):
    """x (d0..d_{r-1}) -> [(d_perm[0]..d_perm[r-1])]"""
    x = tuple(shapes[0])
    return [tuple(x[p] for p in _perm(attrs, len(x)))]


def transpose_forward(attrs, xs, ctx):
    """x (d0..d_{r-1}) -> y (d_perm[0]..d_perm[r-1]), y[i_0..] = x[i_{inv[0]}..]"""
    (x,) = xs
    perm = _perm(attrs, x.ndim)
    return [np.ascontiguousarray(np.transpose(x, perm))], (perm,)


def transpose_backward(attrs, saved, gys, needs, ctx):
    (perm,) = saved
    # undoes: y = transpose(x, perm)  (gx = transpose(gy, perm^-1))
    return [np.ascontiguousarray(np.transpose(gys[0], np.argsort(perm))) if needs[0] else None]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/shape.cl. Flatten/Reshape: aliases (ClSpec.alias, no launch).
# Concat: viewed as (outer, A_i * inner) blocks, one strided copy per input each way.
def _concat_blocks(io, shapes):
    a = _axis(io.attrs, len(shapes[0]))
    outer, inner = _prod(shapes[0][:a]), _prod(shapes[0][a + 1:])
    total = sum(sh[a] for sh in shapes) * inner
    off = 0
    for i, sh in enumerate(shapes):
        cols = sh[a] * inner
        yield i, outer, cols, total, off
        off += cols


def cl_concat_forward(b, io):
    (y,) = io.y
    for i, rows, cols, total, off in _concat_blocks(io, [x.shape for x in io.x]):
        if rows * cols:
            b.launch("shape.cl", "copy2d", (rows * cols,), elt(b), io.x[i], y, rows, cols,
                     cols, total, 0, off)


def cl_concat_backward(b, io):
    g = io.gy[0]
    for i, rows, cols, total, off in _concat_blocks(io, [x.shape for x in io.x]):
        # undoes: y = concatenate(xs, axis)  (gx_i = its slice of gy)
        if io.gx[i] is not None and rows * cols:
            b.launch("shape.cl", "copy2d", (rows * cols,), elt(b), g, io.gx[i], rows, cols,
                     total, cols, off, 0)


_PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2}


def _pad_axes(attrs, shape):
    """x shape + ONNX pads -> (xd, yd, lo) as rank-4 tuples: adjacent unpadded axes merged,
    leading 1s added; ShapeError when more than 4 axes remain."""
    r, pads = len(shape), attrs["pads"]
    axes = []                                            # [d, lo, hi]
    for i, d in enumerate(shape):
        lo, hi = pads[i], pads[r + i]
        if axes and lo == hi == 0 and axes[-1][1] == axes[-1][2] == 0:
            axes[-1][0] *= d
        else:
            axes.append([d, lo, hi])
    if len(axes) > 4:
        raise ShapeError("pads", f"the OpenCL Pad handles at most 4 padded/unpadded axis groups, "
                                 f"input 'x' of shape {tuple(shape)} with pads {list(pads)} has {len(axes)}")
    axes = [[1, 0, 0]] * (4 - len(axes)) + axes
    xd = tuple(d for d, _, _ in axes)
    return xd, tuple(d + lo + hi for d, lo, hi in axes), tuple(lo for _, lo, _ in axes)


def cl_pad_forward(b, io):
    (x,), (y,) = io.x, io.y
    if y.size == 0:
        return
    xd, yd, lo = _pad_axes(io.attrs, x.shape)
    b.launch("shape.cl", "pad_fwd", (y.size,), elt(b), x, y, y.size, int4(xd), int4(yd), int4(lo),
             _PAD_MODES[io.attrs["mode"]], np.float32(io.attrs["value"]))


def cl_pad_backward(b, io):
    gx = io.gx[0]
    if gx is None or gx.size == 0:
        return
    xd, yd, lo = _pad_axes(io.attrs, gx.shape)
    b.launch("shape.cl", "pad_bwd", (gx.size,), elt(b), io.gy[0], gx, gx.size, int4(xd), int4(yd), int4(lo),
             _PAD_MODES[io.attrs["mode"]])


# Slice: x viewed as (outer, D*inner) rows; forward copies each row's [start*inner, end*inner)
# columns (copy2d), backward writes every gx element (gy where sliced, 0 elsewhere).
def _slice_geom(io, x_shape):
    """(outer, D, L, inner, start) of a Slice of x_shape"""
    a = _slice_axis(io.attrs, len(x_shape))
    start, end = _slice_bounds(io.attrs, x_shape[a])
    return _prod(x_shape[:a]), x_shape[a], end - start, _prod(x_shape[a + 1:]), start


def cl_slice_forward(b, io):
    (x,), (y,) = io.x, io.y
    outer, d, n, inner, start = _slice_geom(io, x.shape)
    b.launch("shape.cl", "copy2d", (y.size,), elt(b), x, y, outer, n * inner, d * inner, n * inner,
             start * inner, 0)


def cl_slice_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    outer, d, n, inner, start = _slice_geom(io, gx.shape)
    # undoes: y = x[.., start:end, ..]
    b.launch("shape.cl", "slice_bwd", (gx.size,), elt(b), io.gy[0], gx, gx.size, d, n, inner, start)


def _transpose_axes(shape, perm):
    """x shape + perm -> (yd, xs) as 6-tuples: y's dims and, for each, the stride of x it walks.
    Size-1 axes are dropped and axes that stay adjacent and in order are merged, so a channel
    shuffle (N,g,C/g,HW) -> (N,C/g,g,HW) runs as a rank-3 gather; leading dims of 1 pad to 6."""
    dims = [d for d in shape if d != 1]                    # x without its size-1 axes
    rank = {a: i for i, a in enumerate(a for a, d in enumerate(shape) if d != 1)}
    runs = []                                              # runs of those axes, in y's order
    for p in (rank[p] for p in perm if shape[p] != 1):
        if runs and runs[-1][-1] + 1 == p:
            runs[-1].append(p)
        else:
            runs.append([p])
    stride, strides = 1, {}
    for run in sorted(runs, key=lambda r: r[0], reverse=True):   # x's order, innermost first
        strides[run[0]] = stride
        stride *= _prod([dims[p] for p in run])
    yd = [_prod([dims[p] for p in run]) for run in runs]
    xs = [strides[run[0]] for run in runs]
    pad = 6 - len(yd)
    return (1,) * pad + tuple(yd), (0,) * pad + tuple(xs)


def _cl_transpose(b, src, dst, perm):
    yd, xs = _transpose_axes(src.shape, perm)
    b.launch("shape.cl", "transpose_nd", (dst.size,), elt(b), src, dst, dst.size, int8(yd), int8(xs))


def cl_transpose_forward(b, io):
    (x,), (y,) = io.x, io.y
    _cl_transpose(b, x, y, _perm(io.attrs, len(x.shape)))


def cl_transpose_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    # undoes: y = transpose(x, perm)  (gx = transpose(gy, perm^-1))
    inv = tuple(int(i) for i in np.argsort(_perm(io.attrs, len(gx.shape))))
    _cl_transpose(b, io.gy[0], gx, inv)


_ALIAS = ClSpec(alias_forward, alias_backward, alias=True)

register(
    OpDef("Flatten", ("x",), {"axis": Attr("int", 1)}, flatten_infer, flatten_forward,
          reshape_backward, doc="(d0..d_{axis-1}, prod(rest))", cl=_ALIAS),
    OpDef("Reshape", ("x",), {"shape": Attr("ints", min=-1)}, reshape_infer, reshape_forward,
          reshape_backward, doc="0 copies that dim, one -1 is inferred", cl=_ALIAS),
    OpDef("Concat", ("*",), {"axis": Attr("int", 1)}, concat_infer, concat_forward,
          concat_backward, doc="concatenate along axis (may be negative)",
          cl=ClSpec(cl_concat_forward, cl_concat_backward)),
    OpDef("Pad", ("x",), {"pads": Attr("ints", min=0),
                          "mode": Attr("str", "constant", choices=("constant", "reflect", "edge")),
                          "value": Attr("float", 0.0)},
          pad_infer, pad_forward, pad_backward, doc="np.pad semantics, pads in ONNX order",
          cl=ClSpec(cl_pad_forward, cl_pad_backward)),
    OpDef("Slice", ("x",), {"axis": Attr("int"), "start": Attr("int"), "end": Attr("int")},
          slice_infer, slice_forward, slice_backward,
          doc="x[.., start:end, ..] along axis (never 0), step 1, Python clamping",
          cl=ClSpec(cl_slice_forward, cl_slice_backward)),
    OpDef("Transpose", ("x",), {"perm": Attr("ints", min=0)}, transpose_infer, transpose_forward,
          transpose_backward, doc="permute axes (rank 2..6, perm[0] = 0)",
          cl=ClSpec(cl_transpose_forward, cl_transpose_backward)),
)
