"""Pooling: MaxPool, AveragePool, GlobalAveragePool (semantics of torch max_pool2d / avg_pool2d).

    x (N,C,H,W) -> y (N,C,OH,OW)

Output size, per spatial dim (pads asymmetric: p0 before, p1 after):
    OH = floor_or_ceil((H + p0 + p1 - k) / s) + 1
    ceil mode only: if (OH-1)*s >= H + p0 then OH -= 1   (the last window must start inside
    the input or the leading padding; torch's rule)
In ceil mode the last window may run past the padded end; those positions count as absent.

Each pad must be smaller than the kernel, so every window overlaps the input (torch itself
asks pad <= kernel // 2; larger pads up to kernel - 1 are ONNX-legal and behave as if the
input had been padded first: -inf for MaxPool, zeros counted per count_include_pad).

MaxPool pads with -inf; the gradient of each window goes to its FIRST maximum in row-major
order (torch's rule; NaN propagates as in torch).
AveragePool divides the window sum by
    count_include_pad=False: the number of real input elements in the window
    count_include_pad=True : the window clipped to the padded input, i.e. per dim
                             min(start + k, H + p1) - start, start = o*s - p0  (torch)
Implementation: a strided window view / a loop over the kH·kW kernel taps, each tap one
strided slice of the padded input; no Python loops over pixels.
"""
from __future__ import annotations

import numpy as np

from . import register
from ._cl import elt, local_floats, reduce_wg
from .base import Attr, ClSpec, OpDef, OpError, ShapeError, expect_rank
from .conv2d import pad_nchw, tap, window_view


# ----------------------------------------------------------------------------- geometry
def _out_size(n: int, k: int, s: int, p0: int, p1: int, ceil: bool) -> int:
    span = n + p0 + p1 - k
    if span < 0:
        return 0
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p0:
        o -= 1
    return o


def _geometry(attrs: dict, x_shape: tuple) -> tuple:
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"] if attrs["stride"] is not None else (kh, kw)
    pt, pl, pb, pr = attrs["pads"]
    h, w = x_shape[2], x_shape[3]
    oh = _out_size(h, kh, sh, pt, pb, attrs["ceil_mode"])
    ow = _out_size(w, kw, sw, pl, pr, attrs["ceil_mode"])
    return kh, kw, sh, sw, pt, pl, pb, pr, oh, ow


def pool_infer(attrs: dict, shapes: list) -> list:
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    n, c, h, w = x
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x)
    if max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise OpError("pads", f"pads {list(attrs['pads'])} must each be smaller than the kernel "
                              f"{list(attrs['kernel'])}, else a window lies wholly in the padding")
    if oh < 1 or ow < 1:
        raise ShapeError("x", f"input 'x' spatial size {h}x{w} (padded {h + pt + pb}x{w + pl + pr}) "
                              f"is smaller than the pooling kernel {kh}x{kw}")
    return [(n, c, oh, ow)]


def _padded(x, kh, kw, sh, sw, pt, pl, oh, ow, value):
    """x (N,C,H,W) -> xp (N,C,(OH-1)*sh+kh,(OW-1)*sw+kw): exactly the rows/cols the windows read."""
    h, w = x.shape[2:]
    need_h, need_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    return pad_nchw(x, pt, pl, need_h - pt - h, need_w - pl - w, value)


def _grad_buffer(x_shape, kh, kw, sh, sw, pt, pl, oh, ow, dtype):
    """Zeros covering both the windows and the (padded) input, so the input can be cropped out."""
    n, c, h, w = x_shape
    return np.zeros((n, c, max((oh - 1) * sh + kh, pt + h), max((ow - 1) * sw + kw, pl + w)), dtype=dtype)


# ----------------------------------------------------------------------------- MaxPool
def maxpool_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,OH,OW)"""
    (x,) = xs
    pool_infer(attrs, [x.shape])
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x.shape)
    xp = _padded(x, kh, kw, sh, sw, pt, pl, oh, ow, -np.inf)
    if kh == kw == 1:
        y = np.ascontiguousarray(xp[tap(0, 0, sh, sw, oh, ow)])
        return [y], (np.zeros(y.shape, np.uint8), x.shape)
    win = window_view(xp, kh, kw, sh, sw, 1, 1, oh, ow)
    flat = win.reshape(win.shape[:4] + (kh * kw,))                     # (N,C,OH,OW,kh*kw) copy
    idx = flat.argmax(axis=-1)                                          # first max, row-major; NaN wins
    y = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    idx = idx.astype(np.uint8 if kh * kw <= 255 else np.int32)
    return [y], (idx, x.shape)


def maxpool_backward(attrs, saved, gys, needs, ctx):
    idx, x_shape = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    dxp = _grad_buffer(x_shape, kh, kw, sh, sw, pt, pl, oh, ow, gy.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        # undoes: y = window[idx]   (each window's gradient to its argmax tap)
        dxp[tap(i, j, sh, sw, oh, ow)] += np.where(idx == t, gy, 0)
    return [np.ascontiguousarray(dxp[:, :, pt:pt + h, pl:pl + w])]


# ----------------------------------------------------------------------------- AveragePool
def _divisor(attrs, x_shape, dtype):
    """(OH, OW) window sizes torch avg_pool2d divides by."""
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    hs, ws = np.arange(oh) * sh - pt, np.arange(ow) * sw - pl
    if attrs["count_include_pad"]:
        dh = np.minimum(hs + kh, h + pb) - hs
        dw = np.minimum(ws + kw, w + pr) - ws
    else:
        dh = np.minimum(hs + kh, h) - np.maximum(hs, 0)
        dw = np.minimum(ws + kw, w) - np.maximum(ws, 0)
    return np.outer(dh, dw).astype(dtype)


def avgpool_forward(attrs, xs, ctx):
    """x (N,C,H,W) -> y (N,C,OH,OW)"""
    (x,) = xs
    pool_infer(attrs, [x.shape])
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x.shape)
    xp = _padded(x, kh, kw, sh, sw, pt, pl, oh, ow, 0.0)
    acc = np.array(xp[tap(0, 0, sh, sw, oh, ow)])
    for t in range(1, kh * kw):
        i, j = divmod(t, kw)
        acc += xp[tap(i, j, sh, sw, oh, ow)]
    acc /= _divisor(attrs, x.shape, x.dtype)
    return [acc], (x.shape,)


def avgpool_backward(attrs, saved, gys, needs, ctx):
    (x_shape,) = saved
    (gy,) = gys
    if not needs[0]:
        return [None]
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x_shape)
    h, w = x_shape[2:]
    # undoes: y = Σ_taps xp[tap] / divisor
    g = gy / _divisor(attrs, x_shape, gy.dtype)
    dxp = _grad_buffer(x_shape, kh, kw, sh, sw, pt, pl, oh, ow, gy.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        dxp[tap(i, j, sh, sw, oh, ow)] += g
    return [np.ascontiguousarray(dxp[:, :, pt:pt + h, pl:pl + w])]


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
def _cl_geom(attrs, x_shape):
    """(N*C, H, W, OH, OW, KH, KW, SH, SW, PT, PL) and (PB, PR)"""
    kh, kw, sh, sw, pt, pl, pb, pr, oh, ow = _geometry(attrs, x_shape)
    n, c, h, w = x_shape
    return (n * c, h, w, oh, ow, kh, kw, sh, sw, pt, pl), (pb, pr)


def maxpool_cl_state(attrs, in_shapes, out_shapes, training):
    return {"argmax": (tuple(out_shapes[0]), np.int32)}


def cl_maxpool_forward(b, io):
    (x,), (y,) = io.x, io.y
    g, _ = _cl_geom(io.attrs, x.shape)
    b.launch("pool.cl", "maxpool_fwd", (y.size,), elt(b), x, y, io.state["argmax"], *g)


def cl_maxpool_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    g, _ = _cl_geom(io.attrs, gx.shape)
    # undoes: y = window[argmax]
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
    "ceil_mode": Attr("bool", False),
}

register(
    OpDef("MaxPool", ("x",), dict(_POOL_ATTRS), pool_infer, maxpool_forward, maxpool_backward,
          doc="max over kernel windows (torch max_pool2d); pads [top,left,bottom,right] are -inf",
          cl=ClSpec(cl_maxpool_forward, cl_maxpool_backward, state=maxpool_cl_state)),
    OpDef("AveragePool", ("x",), dict(_POOL_ATTRS, count_include_pad=Attr("bool", False)),
          pool_infer, avgpool_forward, avgpool_backward,
          doc="mean over kernel windows (torch avg_pool2d); pads [top,left,bottom,right]",
          cl=ClSpec(cl_avgpool_forward, cl_avgpool_backward)),
    OpDef("GlobalAveragePool", ("x",), {}, gap_infer, gap_forward, gap_backward,
          doc="mean over H and W -> (N,C,1,1)", cl=ClSpec(cl_gap_forward, cl_gap_backward)),
)
