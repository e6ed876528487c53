"""Pooling: MaxPool, AveragePool, GlobalAveragePool (semantics of torch max_pool2d / avg_pool2d).

    x (N,C,H,W) -> y (N,C,OH,OW)

Window o along a spatial dim reads the taps start + i*d, i < k (start = o*s - p0, d = dilation;
the effective kernel is ek = d*(k-1) + 1). Output size (pads asymmetric: p0 before, p1 after):
    OH = floor_or_ceil((H + p0 + p1 - ek) / s) + 1
    ceil mode only: if (OH-1)*s >= H + p0 then OH -= 1   (the last window must start inside
    the input or the leading padding; torch's rule)
In ceil mode the last window may run past the padded end; those positions count as absent.

Each pad must be smaller than the effective kernel, and every window must hold at least one
input tap (a dilation can step over a small input): torch itself asks pad <= kernel // 2;
larger pads are ONNX-legal and behave as if the input had been padded first: -inf for MaxPool,
zeros counted per count_include_pad.

MaxPool pads with -inf; the gradient of each window goes to its FIRST maximum in row-major
order (torch's rule; NaN propagates as in torch).
AveragePool divides the window sum by
    count_include_pad=False: the number of real input taps in the window
    count_include_pad=True : the taps inside the padded input [-p0, H + p1) (torch; with dilation,
                             which torch avg_pool2d lacks, this is ONNX AveragePool-19 / onnxruntime)
Implementation: a strided window view / a loop over the kH·kW kernel taps, each tap one
strided slice of the padded input; no Python loops over pixels.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .registry import register
from ._cl import FlexLocal, elt, local_floats, reduce_wg
from .base import Attr, ClSpec, OpDef, OpError, ShapeError, expect_rank
from .conv2d import pad_nchw, tap, window_view


# ----------------------------------------------------------------------------- geometry
def _out_size(n: int, k: int, s: int, p0: int, p1: int, ceil: bool) -> int:
    """k: the effective kernel d*(k-1) + 1"""
    span = n + p0 + p1 - k
    if span < 0:
        return 0
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p0:
        o -= 1
    return o


class Geom(NamedTuple):
    """One pooling node's geometry: kernel, stride, dilation, pads [top,left,bottom,right], output."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    oh: int
    ow: int

    @property
    def ekh(self) -> int:
        return self.dh * (self.kh - 1) + 1

    @property
    def ekw(self) -> int:
        return self.dw * (self.kw - 1) + 1

    def tap(self, t: int) -> tuple:
        """The (OH, OW) grid kernel tap t = i*kw + j reads, as an index of the padded input."""
        i, j = divmod(t, self.kw)
        return tap(i * self.dh, j * self.dw, self.sh, self.sw, self.oh, self.ow)


def _geometry(attrs: dict, x_shape: tuple) -> Geom:
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"] if attrs["stride"] is not None else (kh, kw)
    dh, dw = attrs["dilation"]
    pt, pl, pb, pr = attrs["pads"]
    h, w = x_shape[2], x_shape[3]
    oh = _out_size(h, dh * (kh - 1) + 1, sh, pt, pb, attrs["ceil_mode"])
    ow = _out_size(w, dw * (kw - 1) + 1, sw, pl, pr, attrs["ceil_mode"])
    return Geom(kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, oh, ow)


def _tap_counts(o: int, k: int, s: int, d: int, p0: int, lo: int, hi: int) -> np.ndarray:
    """(o,) number of taps start + i*d (i < k, start = window*s - p0) inside [lo, hi)."""
    pos = (np.arange(o) * s - p0)[:, None] + d * np.arange(k)[None, :]
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def pool_infer(attrs: dict, shapes: list) -> list:
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    n, c, h, w = x
    g = _geometry(attrs, x)
    if max(g.pt, g.pb) >= g.ekh or max(g.pl, g.pr) >= g.ekw:
        what = "kernel" if (g.dh, g.dw) == (1, 1) else "effective (dilated) kernel"
        raise OpError("pads", f"pads {list(attrs['pads'])} must each be smaller than the {what} "
                              f"{[g.ekh, g.ekw]}, else a window lies wholly in the padding")
    if g.oh < 1 or g.ow < 1:
        raise ShapeError("x", f"input 'x' spatial size {h}x{w} (padded {h + g.pt + g.pb}x{w + g.pl + g.pr}) "
                              f"is smaller than the pooling kernel {g.ekh}x{g.ekw}")
    for axis, (o, k, s, d, p0, size) in (("H", (g.oh, g.kh, g.sh, g.dh, g.pt, h)),
                                         ("W", (g.ow, g.kw, g.sw, g.dw, g.pl, w))):
        empty = np.flatnonzero(_tap_counts(o, k, s, d, p0, 0, size) == 0)
        if empty.size:
            raise OpError("dilation", f"dilation {list(attrs['dilation'])} with pads {list(attrs['pads'])}: "
                                      f"window {int(empty[0])} along {axis} steps over the input "
                                      f"(size {size}) and reads only padding")
    return [(n, c, g.oh, g.ow)]


def _padded(x, g: Geom, value):
    """x (N,C,H,W) -> xp (N,C,(OH-1)*sh+ekh,(OW-1)*sw+ekw): exactly the rows/cols the windows read."""
    h, w = x.shape[2:]
    need_h, need_w = (g.oh - 1) * g.sh + g.ekh, (g.ow - 1) * g.sw + g.ekw
    return pad_nchw(x, g.pt, g.pl, need_h - g.pt - h, need_w - g.pl - w, value)


def _grad_buffer(x_shape, g: Geom, dtype):
    """Zeros covering both the windows and the (padded) input, so the input can be cropped out."""
    n, c, h, w = x_shape
    return np.zeros((n, c, max((g.oh - 1) * g.sh + g.ekh, g.pt + h),
                     max((g.ow - 1) * g.sw + g.ekw, g.pl + w)), dtype=dtype)


# ----------------------------------------------------------------------------- MaxPool
def maxpool_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,OH,OW)"""
    (x,) = xs
    pool_infer(attrs, [x.shape])
    g = _geometry(attrs, x.shape)
    xp = _padded(x, g, -np.inf)
    if g.kh == g.kw == 1:
        y = np.ascontiguousarray(xp[g.tap(0)])
        return [y], (np.zeros(y.shape, np.uint8), x.shape)
    win = window_view(xp, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.oh, g.ow)
    flat = win.reshape(win.shape[:4] + (g.kh * g.kw,))                 # (N,C,OH,OW,kh*kw) copy
    idx = flat.argmax(axis=-1)                                          # first max, row-major; NaN wins
    y = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    idx = idx.astype(np.uint8 if g.kh * g.kw <= 255 else np.int32)
    return [y], (idx, x.shape)


def maxpool_backward(attrs, saved, gys, needs, ctx):
    idx, x_shape = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    g = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    dxp = _grad_buffer(x_shape, g, gy.dtype)
    for t in range(g.kh * g.kw):
        # undoes: y = window[idx]   (each window's gradient to its argmax tap)
        dxp[g.tap(t)] += np.where(idx == t, gy, 0)
    return [np.ascontiguousarray(dxp[:, :, g.pt:g.pt + h, g.pl:g.pl + w])]


# ----------------------------------------------------------------------------- AveragePool
def _divisor(attrs, x_shape, dtype):
    """(OH, OW) number of taps per window that avg_pool2d divides by (module docstring)."""
    g = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    cip = attrs["count_include_pad"]
    dh = _tap_counts(g.oh, g.kh, g.sh, g.dh, g.pt, -g.pt if cip else 0, h + g.pb if cip else h)
    dw = _tap_counts(g.ow, g.kw, g.sw, g.dw, g.pl, -g.pl if cip else 0, w + g.pr if cip else w)
    return np.outer(dh, dw).astype(dtype)


def avgpool_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,OH,OW)"""
    (x,) = xs
    pool_infer(attrs, [x.shape])
    g = _geometry(attrs, x.shape)
    xp = _padded(x, g, 0.0)
    acc = np.array(xp[g.tap(0)])
    for t in range(1, g.kh * g.kw):
        acc += xp[g.tap(t)]
    acc /= _divisor(attrs, x.shape, x.dtype)
    return [acc], (x.shape,)


def avgpool_backward(attrs, saved, gys, needs, ctx):
    (x_shape,) = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    g = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    # undoes: y = Σ_taps xp[tap] / divisor
    gd = gy / _divisor(attrs, x_shape, gy.dtype)
    dxp = _grad_buffer(x_shape, g, gy.dtype)
    for t in range(g.kh * g.kw):
        dxp[g.tap(t)] += gd
    return [np.ascontiguousarray(dxp[:, :, g.pt:g.pt + h, g.pl:g.pl + w])]


# ----------------------------------------------------------------------------- GlobalAveragePool
def gap_infer(attrs, shapes):
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    return [(x[0], x[1], 1, 1)]


def gap_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,1,1)"""
    (x,) = xs
    expect_rank("x", x.shape, 4)
    return [x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)], (x.shape,)


def gap_backward(attrs, saved, gys, needs, ctx):
    (x_shape,) = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    # undoes: y = mean over (H, W)
    dx = np.empty(x_shape, dtype=gy.dtype)
    dx[...] = gy / (x_shape[2] * x_shape[3])
    return [dx]


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/pool.cl: one work-item per output element forward, one per input pixel backward (a
# gather over the windows containing it). MaxPool keeps its argmax tap per output in state
# "argmax" (int32, y's shape), allocated whether or not dropout trains: any backward needs it.
# On a CPU device MaxPool runs the CPU-shaped forms instead: one work-item per output row forward,
# one per plane backward (a scatter in raster order: the gather's summation order, the same bits).
def _cl_geom(attrs, x_shape):
    """(N*C, H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL) and (PB, PR)"""
    g = _geometry(attrs, x_shape)
    n, c, h, w = x_shape
    return (n * c, h, w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl), (g.pb, g.pr)


def maxpool_cl_state(attrs, in_shapes, out_shapes, training):
    return {"argmax": (tuple(out_shapes[0]), np.int32)}


def cl_maxpool_forward(b, io):
    (x,), (y,) = io.x, io.y
    g, _ = _cl_geom(io.attrs, x.shape)
    if b.kind == "cpu":
        b.launch("pool.cl", "maxpool_fwd_rows", (g[0] * g[3],), FlexLocal((8,)), x, y, io.state["argmax"], *g)
        return
    b.launch("pool.cl", "maxpool_fwd", (y.size,), elt(b), x, y, io.state["argmax"], *g)


def cl_maxpool_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    g, _ = _cl_geom(io.attrs, gx.shape)
    # undoes: y = window[argmax]
    if b.kind == "cpu":
        b.launch("pool.cl", "maxpool_bwd_planes", (g[0],), FlexLocal((1,)), io.gy[0], io.state["argmax"], gx, *g)
        return
    b.launch("pool.cl", "maxpool_bwd", (gx.size,), elt(b), io.gy[0], io.state["argmax"], gx, *g)


def cl_avgpool_forward(b, io):
    (x,), (y,) = io.x, io.y
    g, pads = _cl_geom(io.attrs, x.shape)
    b.launch("pool.cl", "avgpool_fwd", (y.size,), elt(b), x, y, *g, *pads, io.attrs["count_include_pad"])


def cl_avgpool_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    g, pads = _cl_geom(io.attrs, gx.shape)
    # undoes: y = Σ_taps xp[tap] / divisor
    b.launch("pool.cl", "avgpool_bwd", (gx.size,), elt(b), io.gy[0], gx, *g, *pads,
             io.attrs["count_include_pad"])


def cl_gap_forward(b, io):
    (x,), (y,) = io.x, io.y
    nc, plane = y.size, x.shape[2] * x.shape[3]
    wg = reduce_wg(b, "pool.cl", "gap_fwd", plane)
    b.launch("pool.cl", "gap_fwd", (nc * wg,), (wg,), x, y, nc, plane, local_floats(wg))


def cl_gap_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    # undoes: y = mean over (H, W)
    b.launch("pool.cl", "gap_bwd", (gx.size,), elt(b), io.gy[0], gx, gx.size, gx.shape[2] * gx.shape[3])


_POOL_ATTRS = {
    "kernel": Attr("ints", length=2, min=1),
    "stride": Attr("ints", None, length=2, min=1),
    "pads": Attr("ints", (0, 0, 0, 0), length=4, min=0),
    "dilation": Attr("ints", (1, 1), length=2, min=1),
    "ceil_mode": Attr("bool", False),
}

register(
    OpDef("MaxPool", ("x",), dict(_POOL_ATTRS), pool_infer, maxpool_forward, maxpool_backward,
          doc="max over (dilated) kernel windows (torch max_pool2d); pads [top,left,bottom,right] are -inf",
          cl=ClSpec(cl_maxpool_forward, cl_maxpool_backward, state=maxpool_cl_state)),
    OpDef("AveragePool", ("x",), dict(_POOL_ATTRS, count_include_pad=Attr("bool", False)),
          pool_infer, avgpool_forward, avgpool_backward,
          doc="mean over (dilated) kernel windows (torch avg_pool2d, ONNX AveragePool-19); pads "
              "[top,left,bottom,right]",
          cl=ClSpec(cl_avgpool_forward, cl_avgpool_backward)),
    OpDef("GlobalAveragePool", ("x",), {}, gap_infer, gap_forward, gap_backward,
          doc="mean over H and W -> (N,C,1,1)", cl=ClSpec(cl_gap_forward, cl_gap_backward)),
)
