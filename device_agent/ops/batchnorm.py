"""BatchNorm (torch `BatchNorm1d`/`BatchNorm2d` semantics, PyTorch momentum convention).

    x (N,C,H,W) or (N,C), weight (C,), bias (C,), running_mean (C,), running_var (C,) -> y (same as x)

ctx.bn_batch_stats: normalise with the batch mean and the biased batch variance over
(N,H,W), and record the new running statistics through ctx.update:
    running_mean <- (1-m) running_mean + m mean
    running_var  <- (1-m) running_var  + m var * n/(n-1)      (unbiased, n = N*H*W)
otherwise: frozen, y = (x - running_mean)/sqrt(running_var + eps) * weight + bias.
The running statistics are buffers and never get a gradient.
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import ACTS, FlexLocal, act_defines, elt, local_floats, pow2_floor, reduce_wg
from .base import Attr, ClSpec, OpDef, OpError, ShapeError, expect_rank, expect_shape

SLOTS = ("weight", "bias", "running_mean", "running_var")


def _check_attrs(attrs):
    if not attrs["momentum"] <= 1:
        raise OpError("momentum", f"attribute 'momentum' must be in [0, 1], got {attrs['momentum']!r}")


def bn_param_shapes(attrs, x_shape):
    """x (N,C,...) -> {weight, bias, running_mean, running_var: (C,)}"""
    expect_rank("x", x_shape, (2, 4))
    return {s: (x_shape[1],) for s in SLOTS}


def bn_infer(attrs, shapes):
    """x (N,C,H,W) or (N,C), weight/bias/running_mean/running_var (C,) -> [x shape]"""
    _check_attrs(attrs)
    x = tuple(shapes[0])
    expect_rank("x", x, (2, 4))
    for slot, s in zip(SLOTS, shapes[1:]):
        expect_shape(slot, s, (x[1],))
    return [x]


def _bshape(x):
    """shape that broadcasts a (C,) vector against x: (1,C,1,1) or (1,C)"""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def bn_forward(attrs, xs, ctx):
    """x (N,C,H,W)|(N,C), w (C,), b (C,), rm (C,), rv (C,) -> y (like x)"""
    bn_infer(attrs, [np.shape(a) for a in xs])
    x, w, b, rm, rv = xs
    dt = x.dtype
    eps, m = dt.type(attrs["eps"]), attrs["momentum"]
    axes = (0,) + tuple(range(2, x.ndim))         # reduce over N (and H, W)
    bs = _bshape(x)
    if ctx.bn_batch_stats:
        n = x.size // x.shape[1]                  # values per channel: N*H*W
        if n < 2:
            raise ShapeError("x", f"BatchNorm with batch statistics needs more than 1 value per "
                                  f"channel, got input shape {x.shape}")
        mean = x.mean(axis=axes)                  # (C,)
        xc = x - mean.reshape(bs)                 # (N,C,H,W)
        var = (xc * xc).mean(axis=axes)           # (C,) biased
        invstd = (1 / np.sqrt(var + eps)).astype(dt, copy=False)  # (C,)
        xhat = xc * invstd.reshape(bs)
        y = xhat * w.reshape(bs) + b.reshape(bs)
        unbiased = var * (n / (n - 1))
        ctx.update("running_mean", ((1 - m) * rm + m * mean).astype(rm.dtype, copy=False))
        ctx.update("running_var", ((1 - m) * rv + m * unbiased).astype(rv.dtype, copy=False))
        saved = (True, xhat, invstd, w, n)
    else:
        invstd = (1 / np.sqrt(rv + eps)).astype(dt, copy=False)   # (C,)
        xhat = (x - rm.reshape(bs)) * invstd.reshape(bs)
        y = xhat * w.reshape(bs) + b.reshape(bs)
        saved = (False, xhat, invstd, w, None)
    return [y.astype(dt, copy=False)], saved


def bn_backward(attrs, saved, gys, needs, ctx):
    """g (like x) -> dx (like x), dw (C,), db (C,), None, None"""
    batch, xhat, invstd, w, n = saved
    (g,) = gys
    axes = (0,) + tuple(range(2, g.ndim))
    bs = _bshape(g)
    grads = [None] * 5
    # undoes: y = xhat * w + b
    if needs[1]:
        grads[1] = (g * xhat).sum(axis=axes)
    if needs[2]:
        grads[2] = g.sum(axis=axes)
    if needs[0]:
        dxhat = g * w.reshape(bs)
        if batch:
            # undoes: xhat = (x - mean(x)) / sqrt(var(x) + eps), mean and biased var over n values:
            # dx = invstd/n * (n dxhat - Σ dxhat - xhat Σ (dxhat xhat))
            s1 = dxhat.sum(axis=axes).reshape(bs)
            s2 = (dxhat * xhat).sum(axis=axes).reshape(bs)
            grads[0] = (invstd.reshape(bs) / n) * (n * dxhat - s1 - xhat * s2)
        else:
            # undoes: xhat = (x - running_mean) * invstd  (running stats are constants)
            grads[0] = dxhat * invstd.reshape(bs)
    return grads


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/batchnorm.cl; x viewed as (N, C, L), L = H*W or 1.
#   state "mean", "invstd" (C,) float32: the batch statistics the forward normalised with
#   (written only with bn_batch_stats; allocated either way, 8*C bytes).
#   batch statistics: x[3] running_mean and x[4] running_var are updated IN PLACE by the forward.
#   workspace: 2*C floats for the backward's per-channel sums (Σ g, Σ g xhat), then 2 floats per
#   (channel, segment) of the segmented reductions.
#   backward reads x (saved), weight, and the statistics (state, or the running buffers if frozen).
# Reductions: the N*L values of a channel are cut in S segments of `seg` values, one work-group
# each, so that a few wide channels (MobileNetV2's first layers: 32 channels of 32*112*112 values)
# still fill a GPU; a second tiny launch merges each channel's segments in a fixed order.
# seg: tuning "batchnorm" -> "seg", default SEG_ITEMS values per work-item; never more than MAX_SEGS segments.
SEG_ITEMS = 8
MAX_SEGS = 256
PLANE_MIN_L = 16   # per-plane segments (CPU) only for planes of at least this many values


def bn_cl_state(attrs, in_shapes, out_shapes, training):
    c = in_shapes[0][1]
    return {"mean": ((c,), np.float32), "invstd": ((c,), np.float32)}


def bn_cl_workspace(attrs, in_shapes, out_shapes):
    n, c, length = _ncl(in_shapes[0])
    return 4 * 2 * c * (1 + min(MAX_SEGS, n * length))


def _wg(b, kernel: str, cnt: int, defines=None) -> int:
    """work-group size of a segmented reduction: reduce_wg, capped by tuning "batchnorm" -> "wg" (the cpu
    default is 8: on PoCL, 256-wide groups with local trees ran the BN reductions ~1.5x slower)"""
    wg = reduce_wg(b, "batchnorm.cl", kernel, cnt, defines)
    cap = b.tuning("batchnorm").get("wg")
    return min(wg, pow2_floor(int(cap))) if cap else wg


def _planes(b, n: int, length: int) -> bool:
    """segments = the images' planes, one work-item each (tuning "batchnorm" -> "planes"; CPUs by default):
    plain contiguous loops where PoCL ran the strided group walk at ~1 value per 5 cycles"""
    want = b.tuning("batchnorm").get("planes", b.kind == "cpu")
    return bool(want) and length >= PLANE_MIN_L and n <= MAX_SEGS


def _channel(b) -> bool:
    """batch-statistics BN as one work-item per channel (bn_fwd_channel / bn_bwd_channel: statistics,
    update and apply, or sums and dx, in one launch; tuning "batchnorm" -> "channel", CPUs by default):
    x read from memory once and again from cache, where the plane kernels made a pass each"""
    return bool(b.tuning("batchnorm").get("channel", b.kind == "cpu"))


def _segments(b, cnt: int, wg: int) -> tuple[int, int]:
    """(seg, S): values per segment and segments per channel"""
    seg = int(b.tuning("batchnorm").get("seg", wg * SEG_ITEMS))
    seg = max(1, seg, -(-cnt // MAX_SEGS))
    return seg, -(-cnt // seg)


def _ncl(shape):
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


LCN_MIN_L = 32   # elementwise passes on a (L, C, N) grid (no division per element; float4 when L % 4 == 0)


def _apply(b, x, w, bias, mean, var_or_invstd, y, c, length, frozen, eps, act):
    if _channel(b) and length >= 8:   # CPUs: a plane per work-item, no builtins (PoCL calls them)
        b.launch("batchnorm.cl", "bn_apply_plane", (x.shape[0], c), FlexLocal((1, 8)), x, w, bias, mean,
                 var_or_invstd, y, x.shape[0], c, length, frozen, eps, act, defines=act_defines(b, x))
        return
    if length >= LCN_MIN_L:
        v = 4 if length % 4 == 0 else 1    # float4 loads and stores when rows allow
        b.launch("batchnorm.cl", "bn_apply_lcn4" if v == 4 else "bn_apply_lcn", (length // v, c, x.shape[0]),
                 elt(b) + (1, 1), x, w, bias, mean, var_or_invstd, y, c, length // v, frozen, eps, act,
                 defines=act_defines(b, x))
    else:
        b.launch("batchnorm.cl", "bn_apply", (x.size,), elt(b), x, w, bias, mean, var_or_invstd, y, x.size, c, length,
                 frozen, eps, act, defines=act_defines(b, x))


def cl_bn_forward(b, io):
    """x (N,C,...), w, b, running mean/var (C,) -> y = act(BN(x)); io.act: a ReLU/ReLU6 fused by the
    Plan (its backward recomputes the activation's input from x for the mask)"""
    (x, w, bias, rm, rv), (y,) = io.x, io.y
    n, c, length = _ncl(x.shape)
    eps = np.float32(io.attrs["eps"])
    act = ACTS[io.act]
    if not io.bn_batch_stats:
        _apply(b, x, w, bias, rm, rv, y, c, length, 1, eps, act)
        return
    cnt = n * length
    if cnt < 2:
        raise ShapeError("x", f"BatchNorm with batch statistics needs more than 1 value per channel, "
                              f"got input shape {x.shape}")
    m = io.attrs["momentum"]
    mean, invstd = io.state["mean"], io.state["invstd"]
    if _channel(b):
        b.launch("batchnorm.cl", "bn_fwd_channel", (c,), FlexLocal((1,)), x, w, bias, rm, rv, mean, invstd, y, n, c,
                 length, eps, np.float32(1 - m), np.float32(m), np.float32(cnt / (cnt - 1)), act)
        return
    part = io.workspace   # floats [2C, 2C + 2*C*S)
    if _planes(b, n, length):
        seg, segs = length, n
        b.launch("batchnorm.cl", "bn_stats_plane", (n, c), None, x, part, 2 * c, n, c, length)
    else:
        wg = _wg(b, "bn_stats_part", cnt)
        seg, segs = _segments(b, cnt, wg)
        b.launch("batchnorm.cl", "bn_stats_part", (segs * wg, c), (wg, 1), x, part, 2 * c, n, c, length, seg,
                 local_floats(wg))
    b.launch("batchnorm.cl", "bn_stats_finish", (c,), elt(b), part, 2 * c, segs, seg, rm, rv, mean, invstd, n, c, length,
             eps, np.float32(1 - m), np.float32(m), np.float32(cnt / (cnt - 1)))
    _apply(b, x, w, bias, mean, invstd, y, c, length, 0, eps, act)


def cl_bn_recompute(b, io):
    """y = act(BN(x)) again from the saved x and the statistics the forward used (no stats update)"""
    (x, w, bias, rm, rv), (y,) = io.x, io.y
    n, c, length = _ncl(x.shape)
    eps = np.float32(io.attrs["eps"])
    if io.bn_batch_stats:
        _apply(b, x, w, bias, io.state["mean"], io.state["invstd"], y, c, length, 0, eps, ACTS[io.act])
    else:
        _apply(b, x, w, bias, rm, rv, y, c, length, 1, eps, ACTS[io.act])


def cl_bn_backward(b, io):
    x, w, bias, rm, rv = io.x
    g = io.gy[0]
    gx, gw, gb = io.gx[:3]
    n, c, length = _ncl(x.shape)
    eps = np.float32(io.attrs["eps"])
    frozen = not io.bn_batch_stats
    mean, vi = (rm, rv) if frozen else (io.state["mean"], io.state["invstd"])
    sums = io.workspace
    act = ACTS[io.act]   # undoes the fused act(): g masked where it cut (its input recomputed from x)
    dx_def = act_defines(b, x)   # dtype mixed: x may come as the halves kept for this backward
    if not frozen and _channel(b):
        # undoes: y = xhat * w + b and xhat = (x - mean) * invstd, one work-item per channel
        b.launch("batchnorm.cl", "bn_bwd_channel", (c,), FlexLocal((1,)), x, g, w, bias, act, mean, vi, sums,
                 gw or sums, gb or sums, gx or sums, n, c, length, gw is not None, gb is not None, gx is not None,
                 defines=dx_def)
        return
    if not frozen or gw is not None or gb is not None:
        # undoes: y = xhat * w + b  (per-channel Σ g, Σ g xhat; the batch dx needs both too)
        if _planes(b, n, length):
            segs = n
            b.launch("batchnorm.cl", "bn_bwd_plane", (n, c), None, x, g, w, bias, act, mean, vi, sums, 2 * c, n, c, length,
                     frozen, eps, defines=dx_def)
        else:
            wg = _wg(b, "bn_bwd_part", n * length, dx_def)
            seg, segs = _segments(b, n * length, wg)
            b.launch("batchnorm.cl", "bn_bwd_part", (segs * wg, c), (wg, 1), x, g, w, bias, act, mean, vi, sums, 2 * c, n,
                     c, length, seg, frozen, eps, local_floats(wg), defines=dx_def)
        b.launch("batchnorm.cl", "bn_bwd_finish", (c,), elt(b), sums, 2 * c, segs, sums, gw or sums, gb or sums, c,
                 gw is not None, gb is not None)
    if gx is not None:
        # undoes: xhat = (x - mean) * invstd  (frozen: constants; batch: statistics of x)
        if length >= LCN_MIN_L:
            v = 4 if length % 4 == 0 else 1
            b.launch("batchnorm.cl", "bn_dx_lcn4" if v == 4 else "bn_dx_lcn", (length // v, c, n), elt(b) + (1, 1), x, g,
                     bias, act, w, mean, vi, sums, gx, c, length // v, frozen, eps, n * length, defines=dx_def)
        else:
            b.launch("batchnorm.cl", "bn_dx", (x.size,), elt(b), x, g, bias, act, w, mean, vi, sums, gx, x.size, c, length,
                     frozen, eps, n * length, defines=dx_def)


register(OpDef("BatchNorm", ("x", "weight", "bias", "running_mean", "running_var"),
               {"eps": Attr("float", 1e-5, min=0.0), "momentum": Attr("float", 0.1, min=0.0)},
               bn_infer, bn_forward, bn_backward, params=("weight", "bias"),
               buffers=("running_mean", "running_var"), param_shapes=bn_param_shapes,
               doc="batch norm over channel axis 1; batch or frozen running statistics",
               cl=ClSpec(cl_bn_forward, cl_bn_backward, saves=("x0",), state=bn_cl_state,
                         workspace=bn_cl_workspace, recompute=cl_bn_recompute)))
