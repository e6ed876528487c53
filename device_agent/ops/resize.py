"""ResizeNearest: ONNX Resize with mode=nearest on the two spatial axes.

    x (N,C,H,W) -> y (N,C,OH,OW), (OH, OW) = attrs size;  y[n,c,i,j] = x[n,c,src_h[i],src_w[j]]

Per spatial axis (input length L, output length O, scale s = attrs scale_h/scale_w, or O/L when
null), output index o maps to the input coordinate
    asymmetric            o / s
    half_pixel            (o + 0.5) / s - 0.5
    pytorch_half_pixel    (o + 0.5) / s - 0.5, or 0 when O == 1
    align_corners         o * (L - 1) / (O - 1), or 0 when O == 1
    tf_half_pixel_for_nn  (o + 0.5) / s
then to an index by `nearest` (floor, ceil, round_prefer_floor: halves down, round_prefer_ceil:
halves up), clamped to [0, L - 1]; an output of the input's size at scale 1 copies x (onnxruntime).
The arithmetic is float32 in exactly onnxruntime's order, so the index tables equal onnxruntime's
bit for bit. torch F.interpolate(mode="nearest") is asymmetric + floor (with scale_factor=f: scale
attrs f), mode="nearest-exact" is half_pixel + round_prefer_ceil.

Backward scatters: each input pixel sums gy over the outputs that copied it. The index maps are
non-decreasing, so the outputs reading input index h are one run [beg[h], beg[h+1]).
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import constant_ints, elt
from .base import Attr, ClSpec, OpDef, ShapeError, expect_rank

COORDS = ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn")
NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


def _scale(attrs, key):
    s = attrs[key]
    if s is not None and not s > 0:
        raise ShapeError(key, f"attribute '{key}' must be > 0, got {s!r}")
    return s


def resize_infer(attrs, shapes):
    """x (N,C,H,W) -> [(N,C,OH,OW)]"""
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    _scale(attrs, "scale_h")
    _scale(attrs, "scale_w")
    return [x[:2] + tuple(attrs["size"])]


def source_index(out_len: int, in_len: int, scale: float | None, coord: str, nearest: str) -> np.ndarray:
    """(out_len,) int64: the input index each output index copies along one axis (float32 maths in
    onnxruntime's order: upsamplebase.h GetOriginalCoordinateFromResizedCoordinate, GetNearestPixel)."""
    f = np.float32
    s = f(out_len) / f(in_len) if scale is None else f(scale)
    o = np.arange(out_len, dtype=f)
    if coord == "asymmetric":
        xo = o / s
    elif coord == "half_pixel" or (coord == "pytorch_half_pixel" and out_len > 1):
        xo = (o + f(0.5)) / s - f(0.5)
    elif coord == "tf_half_pixel_for_nn":
        xo = (o + f(0.5)) / s
    elif coord == "align_corners" and out_len > 1:
        xo = o * f(in_len - 1) / f(out_len - 1)
    else:                                                    # pytorch_half_pixel / align_corners, O == 1
        xo = np.zeros(out_len, f)
    lo = np.floor(xo)
    frac = xo - lo                       # exact for the xo >= 0 that matter (negatives clamp to 0)
    if nearest == "floor":
        idx = lo
    elif nearest == "ceil":
        idx = np.ceil(xo)
    elif nearest == "round_prefer_floor":
        idx = lo + (frac > f(0.5))
    else:
        idx = lo + (frac >= f(0.5))
    return np.clip(idx.astype(np.int64), 0, in_len - 1)


def _tables(attrs, x_shape):
    """(src_h (OH,), src_w (OW,), beg_h (H+1,), beg_w (W+1,)) for x_shape"""
    (oh, ow), (h, w) = attrs["size"], x_shape[2:]
    if (oh, ow) == (h, w) and attrs["scale_h"] in (None, 1.0) and attrs["scale_w"] in (None, 1.0):
        # NOTE: onnxruntime (and the ONNX reference) copy the input when every scale is 1, whatever
        # the modes; the formulas would shift tf_half_pixel_for_nn + ceil / round_prefer_ceil by one.
        src_h, src_w = np.arange(h), np.arange(w)
    else:
        src_h = source_index(oh, h, attrs["scale_h"], attrs["coord"], attrs["nearest"])
        src_w = source_index(ow, w, attrs["scale_w"], attrs["coord"], attrs["nearest"])
    beg_h = np.searchsorted(src_h, np.arange(h + 1), side="left")
    beg_w = np.searchsorted(src_w, np.arange(w + 1), side="left")
    return src_h, src_w, beg_h, beg_w


def resize_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,OH,OW)"""
    (x,) = xs
    resize_infer(attrs, [x.shape])
    src_h, src_w, beg_h, beg_w = _tables(attrs, x.shape)
    y = np.take(np.take(x, src_h, axis=2), src_w, axis=3)     # (np.take: ~15x faster than x[:, :, idx])
    return [y], (x.shape, beg_h, beg_w)


def _scatter_axis(g, beg, axis):
    """g (.., O, ..) -> (.., L, ..): input index h sums g over its run [beg[h], beg[h+1]) (0 if empty)"""
    size = len(beg) - 1
    shape = list(g.shape)
    shape[axis] = size
    out = np.zeros(shape, dtype=g.dtype)
    full = np.flatnonzero(beg[1:] > beg[:-1])               # input indices some output copied
    if full.size:
        sums = np.add.reduceat(g, beg[full], axis=axis)
        idx = [slice(None)] * g.ndim
        idx[axis] = full
        out[tuple(idx)] = sums
    return out


def resize_backward(attrs, saved, gys, needs, ctx):
    """g (N,C,OH,OW) -> dx (N,C,H,W)"""
    shape, beg_h, beg_w = saved
    if not needs[0]:
        return [None]
    # undoes: y = x[:, :, src_h][:, :, :, src_w]   (each input pixel sums the gy of its copies)
    return [np.ascontiguousarray(_scatter_axis(_scatter_axis(gys[0], beg_h, 2), beg_w, 3))]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/resize.cl: the index tables are computed here once (the reference's float32 maths, so
# the device's division accuracy never moves an index) and live in a small read-only buffer held
# by the launch: [src_h (OH) | src_w (OW)] forward, [beg_h (H+1) | beg_w (W+1)] backward.
def _dims(x_shape, attrs):
    n, c, h, w = x_shape
    return n * c, h, w, attrs["size"][0], attrs["size"][1]


def cl_resize_forward(b, io):
    (x,), (y,) = io.x, io.y
    src_h, src_w, _, _ = _tables(io.attrs, x.shape)
    tab = constant_ints(b, np.concatenate([src_h, src_w]))
    b.launch("resize.cl", "resize_nearest_fwd", (y.size,), elt(b), x, y, tab, *_dims(x.shape, io.attrs))


def cl_resize_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    _, _, beg_h, beg_w = _tables(io.attrs, gx.shape)
    tab = constant_ints(b, np.concatenate([beg_h, beg_w]))
    # undoes: y = x[:, :, src_h][:, :, :, src_w]
    b.launch("resize.cl", "resize_nearest_bwd", (gx.size,), elt(b), io.gy[0], gx, tab,
             *_dims(gx.shape, io.attrs))


register(
    OpDef("ResizeNearest", ("x",),
          {"size": Attr("ints", length=2, min=1), "scale_h": Attr("float", None),
           "scale_w": Attr("float", None), "coord": Attr("str", "asymmetric", choices=COORDS),
           "nearest": Attr("str", "floor", choices=NEAREST)},
          resize_infer, resize_forward, resize_backward,
          doc="ONNX Resize mode=nearest to size (OH, OW); coord / nearest as ONNX",
          cl=ClSpec(cl_resize_forward, cl_resize_backward)),
)
