"""Conv2d: 2-D cross-correlation as torch `conv2d`, with asymmetric pads and groups.

    x (N,C,H,W), weight (K,C/g,R,S), bias? (K,) -> y (N,K,P,Q)

      P = (H + pad_top + pad_bottom - dil_h*(R-1) - 1) // stride_h + 1   (Q likewise)
      y[n,k,p,q] = b[k] + Σ_{c,r,s} xp[n, g(k)*C/g + c, p*sh + r*dh, q*sw + s*dw] · w[k,c,r,s]

where xp is x zero-padded by `pads` = [top, left, bottom, right].

This is the serial CPU reference/baseline, so it is vectorised:
  * general path: im2col through a strided view of the padded input, then one batched
    GEMM over the groups, (g, K/g, C/g·R·S) @ (g, C/g·R·S, n·P·Q); the batch is cut in
    chunks so the column buffer stays around _COLS_BUDGET elements.
  * depthwise (groups == C > 1, any channel multiplier K/C): a loop over the R·S taps,
    each tap a broadcast multiply-add over (N, C, m, P, Q); a GEMM with one input
    channel per group would be all overhead.
Backward recomputes the columns (nothing but the padded input is saved), gets dW by
dY @ cols^T and dX by col2im: W^T @ dY, then the taps are scattered back with one
strided slice-add per (r, s) and the padding is cropped.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import register
from .base import Attr, OpDef, OpError, ShapeError, expect_rank, expect_shape

_COLS_BUDGET = 1 << 23  # elements of one im2col buffer (32 MiB float32, 64 MiB float64)


# ----------------------------------------------------------------------------- helpers
def pad_nchw(x: np.ndarray, top: int, left: int, bottom: int, right: int, value=0.0) -> np.ndarray:
    """x (N,C,H,W) -> xp (N,C,top+H+bottom,left+W+right), filled with `value`; x itself if no pads.

    Negative bottom/right crop (used by pooling, whose windows need not reach the end)."""
    if top == left == bottom == right == 0:
        return x
    n, c, h, w = x.shape
    hp, wp = top + h + max(bottom, 0), left + w + max(right, 0)
    xp = np.full((n, c, hp, wp), value, dtype=x.dtype)
    xp[:, :, top:top + h, left:left + w] = x
    return xp[:, :, :top + h + bottom, :left + w + right] if min(bottom, right) < 0 else xp


def window_view(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
                oh: int, ow: int) -> np.ndarray:
    """xp (N,C,Hp,Wp) -> read-only view v (N,C,oh,ow,kh,kw), v[n,c,p,q,r,s] = xp[n,c,p*sh+r*dh,q*sw+s*dw]."""
    n, c, hp, wp = xp.shape
    if (oh - 1) * sh + (kh - 1) * dh >= hp or (ow - 1) * sw + (kw - 1) * dw >= wp:
        raise AssertionError(f"window_view out of bounds: {xp.shape} k=({kh},{kw}) o=({oh},{ow})")
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (n, c, oh, ow, kh, kw), (s0, s1, s2 * sh, s3 * sw, s2 * dh, s3 * dw),
                      writeable=False)


def tap(r0: int, s0: int, sh: int, sw: int, oh: int, ow: int) -> tuple:
    """Index of one kernel tap's (oh, ow) output grid in the last two axes: a[..., r0::sh, s0::sw]."""
    return (..., slice(r0, r0 + (oh - 1) * sh + 1, sh), slice(s0, s0 + (ow - 1) * sw + 1, sw))


def _geometry(attrs: dict, x_shape: tuple) -> tuple:
    r, s = attrs["kernel"]
    sh, sw = attrs["stride"]
    dh, dw = attrs["dilation"]
    pt, pl, pb, pr = attrs["pads"]
    h, w = x_shape[2], x_shape[3]
    p = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    q = (w + pl + pr - dw * (s - 1) - 1) // sw + 1
    return r, s, sh, sw, dh, dw, pt, pl, pb, pr, p, q


def _chunk(n: int, per_image: int) -> int:
    return max(1, min(n, _COLS_BUDGET // max(per_image, 1)))


# ----------------------------------------------------------------------------- schema
def conv_param_shapes(attrs: dict, x_shape: tuple) -> dict:
    k, g = attrs["out_channels"], attrs["groups"]
    r, s = attrs["kernel"]
    return {"weight": (k, x_shape[1] // g, r, s), "bias": (k,)}


def conv_infer(attrs: dict, shapes: list) -> list:
    x = tuple(shapes[0])
    expect_rank("x", x, 4)
    n, c, h, w = x
    k, g = attrs["out_channels"], attrs["groups"]
    if c % g:
        raise ShapeError("x", f"input 'x' has {c} channels, not divisible by groups={g}")
    if k % g:
        raise OpError("out_channels", f"out_channels={k} is not divisible by groups={g}")
    want = conv_param_shapes(attrs, x)
    if len(shapes) < 2 or shapes[1] is None:
        raise ShapeError("weight", "input 'weight' is missing")
    expect_shape("weight", shapes[1], want["weight"])
    if len(shapes) > 2 and shapes[2] is not None:
        expect_shape("bias", shapes[2], want["bias"])
    r, s, sh, sw, dh, dw, pt, pl, pb, pr, p, q = _geometry(attrs, x)
    if p < 1 or q < 1:
        raise ShapeError("x", f"input 'x' spatial size {h}x{w} (padded {h + pt + pb}x{w + pl + pr}) is "
                              f"smaller than the dilated kernel {dh * (r - 1) + 1}x{dw * (s - 1) + 1}: "
                              f"output would be {p}x{q}")
    return [(n, k, p, q)]


def conv_flops(attrs: dict, in_shapes: list, out_shapes: list) -> int:
    n, k, p, q = out_shapes[0]
    c = in_shapes[0][1]
    r, s = attrs["kernel"]
    return int(2 * n * k * p * q * (c // attrs["groups"]) * r * s)


def _is_depthwise(c: int, g: int) -> bool:
    return g == c and g > 1


# ----------------------------------------------------------------------------- forward
def _im2col(xp, g, r, s, sh, sw, dh, dw, p, q):
    """xp (n,C,Hp,Wp) -> cols (g, C/g·R·S, n·P·Q), rows ordered (c, r, s) like w.reshape(K, -1)."""
    n, c = xp.shape[:2]
    v = window_view(xp, r, s, sh, sw, dh, dw, p, q)            # (n, C, P, Q, R, S)
    v = v.reshape(n, g, c // g, p, q, r, s).transpose(1, 2, 5, 6, 0, 3, 4)
    return np.ascontiguousarray(v).reshape(g, (c // g) * r * s, n * p * q)


def conv_forward(attrs, xs, ctx):
    """x (N,C,H,W), w (K,C/g,R,S), b (K,) -> y (N,K,P,Q)"""
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    conv_infer(attrs, [x.shape, w.shape] + ([b.shape] if b is not None else []))
    n, c, h, wd = x.shape
    k, g = attrs["out_channels"], attrs["groups"]
    r, s, sh, sw, dh, dw, pt, pl, pb, pr, p, q = _geometry(attrs, x.shape)
    w = w.astype(x.dtype, copy=False)
    xp = pad_nchw(x, pt, pl, pb, pr)
    if _is_depthwise(c, g):
        m = k // c
        y = np.zeros((n, c, m, p, q), dtype=x.dtype)
        w4 = w.reshape(c, m, r, s)
        tmp = np.empty((n, c, m, p, q), dtype=x.dtype)
        for ri in range(r):
            for si in range(s):
                xt = xp[tap(ri * dh, si * dw, sh, sw, p, q)]            # (N,C,P,Q)
                # y[n,c,j] += xp[n,c,p*sh+r*dh,q*sw+s*dw] * w[c*m+j,0,r,s]
                np.multiply(xt[:, :, None], w4[None, :, :, ri, si, None, None], out=tmp)
                y += tmp
        y = y.reshape(n, k, p, q)
    else:
        y = np.empty((n, k, p, q), dtype=x.dtype)
        wg = w.reshape(g, k // g, -1)                                       # (g, K/g, C/g·R·S)
        nb = _chunk(n, c * r * s * p * q)
        for i in range(0, n, nb):
            j = min(n, i + nb)
            cols = _im2col(xp[i:j], g, r, s, sh, sw, dh, dw, p, q)           # (g, C/g·R·S, n·P·Q)
            yg = np.matmul(wg, cols)                                        # (g, K/g, n·P·Q)
            y[i:j] = yg.reshape(k, j - i, p, q).transpose(1, 0, 2, 3)
    if b is not None:
        y += b.astype(x.dtype, copy=False)[None, :, None, None]
    return [y], (xp, w, b is not None, x.shape)


# ----------------------------------------------------------------------------- backward
def conv_backward(attrs, saved, gys, needs, ctx):
    xp, w, has_bias, x_shape = saved
    (gy,) = gys                                                             # (N,K,P,Q)
    n, c, h, wd = x_shape
    k, g = attrs["out_channels"], attrs["groups"]
    r, s, sh, sw, dh, dw, pt, pl, pb, pr, p, q = _geometry(attrs, x_shape)
    gy = gy.astype(xp.dtype, copy=False)
    need_x, need_w = needs[0], needs[1]
    need_b = has_bias and len(needs) > 2 and needs[2]
    dx = dw_ = db = None

    if need_b:
        # undoes: y += b[None, :, None, None]
        db = gy.sum(axis=(0, 2, 3))

    if _is_depthwise(c, g) and (need_x or need_w):
        m = k // c
        gy5 = gy.reshape(n, c, m, p, q)
        w4 = w.reshape(c, m, r, s)
        dw4 = np.empty((c, m, r, s), dtype=xp.dtype) if need_w else None
        dxp = np.zeros(xp.shape, dtype=xp.dtype) if need_x else None
        for ri in range(r):
            for si in range(s):
                # undoes: y[n,c,j] += xp[n,c,p*sh+r*dh,q*sw+s*dw] * w[c*m+j,0,r,s]
                t = tap(ri * dh, si * dw, sh, sw, p, q)
                if need_w:
                    dw4[:, :, ri, si] = np.einsum("ncjpq,ncpq->cj", gy5, xp[t])
                if need_x:
                    if m == 1:
                        dxp[t] += gy * w4[None, :, 0, ri, si, None, None]
                    else:
                        dxp[t] += np.einsum("ncjpq,cj->ncpq", gy5, w4[:, :, ri, si])
        if need_w:
            dw_ = dw4.reshape(k, 1, r, s)
        if need_x:
            dx = np.ascontiguousarray(dxp[:, :, pt:pt + h, pl:pl + wd])
    elif need_x or need_w:
        cg, kg = c // g, k // g
        wg = w.reshape(g, kg, cg * r * s)
        dwg = np.zeros((g, kg, cg * r * s), dtype=xp.dtype) if need_w else None
        dx = np.empty(x_shape, dtype=xp.dtype) if need_x else None
        nb = _chunk(n, c * r * s * p * q)
        for i in range(0, n, nb):
            j = min(n, i + nb)
            # dY laid out like the GEMM output: (g, K/g, n·P·Q)
            gyg = np.ascontiguousarray(gy[i:j].transpose(1, 0, 2, 3)).reshape(g, kg, (j - i) * p * q)
            if need_w:
                # undoes: yg = wg @ cols   ->  dW = dY @ cols^T
                cols = _im2col(xp[i:j], g, r, s, sh, sw, dh, dw, p, q)
                dwg += np.matmul(gyg, cols.transpose(0, 2, 1))
                del cols
            if need_x:
                # undoes: yg = wg @ cols   ->  dcols = W^T @ dY, then col2im
                dcols = np.matmul(wg.transpose(0, 2, 1), gyg).reshape(c, r, s, j - i, p, q)
                dxp = np.zeros((c, j - i) + xp.shape[2:], dtype=xp.dtype)   # (C, n, Hp, Wp)
                for ri in range(r):
                    for si in range(s):
                        dxp[tap(ri * dh, si * dw, sh, sw, p, q)] += dcols[:, ri, si]
                dx[i:j] = dxp[:, :, pt:pt + h, pl:pl + wd].transpose(1, 0, 2, 3)
        if need_w:
            dw_ = dwg.reshape(k, cg, r, s)

    grads = [dx if need_x else None, dw_ if need_w else None]
    if len(needs) > 2:
        grads.append(db if need_b else None)
    return grads


register(OpDef(
    "Conv2d", ("x", "weight", "bias?"),
    {
        "out_channels": Attr("int", min=1),
        "kernel": Attr("ints", length=2, min=1),
        "stride": Attr("ints", (1, 1), length=2, min=1),
        "pads": Attr("ints", (0, 0, 0, 0), length=4, min=0),
        "dilation": Attr("ints", (1, 1), length=2, min=1),
        "groups": Attr("int", 1, min=1),
    },
    conv_infer, conv_forward, conv_backward,
    params=("weight", "bias"),
    param_shapes=conv_param_shapes,
    flops=conv_flops,
    doc="2-D cross-correlation as torch conv2d; pads [top,left,bottom,right]; depthwise when groups == C",
))
