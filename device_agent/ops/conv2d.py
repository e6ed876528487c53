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

from .registry import register
from ._cl import ACTS, FlexLocal, row_local_size
from .conv_depthwise import dw_backward, dw_forward, dw_workspace
from .conv_igemm import conv_mode, igemm_backward, igemm_forward, workspace_floats
from . import conv_winograd as wino
from .base import Attr, ClSpec, OpDef, OpError, ShapeError, expect_rank, expect_shape

_COLS_BUDGET = 1 << 23  # elements of one im2col buffer (32 MiB float32, 64 MiB float64)
_CL_COLS_BUDGET = 1 << 23  # floats of the OpenCL im2col workspace (32 MiB); at least one image's columns


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


# ----------------------------------------------------------------------------- OpenCL
# Three paths, picked per node:
#   depthwise (groups == C > 1): direct kernels (ops/conv_depthwise.py, kernels/conv_depthwise.cl)
#   pointwise (1x1, stride 1, no pads): the NCHW image *is* the GEMM operand, no columns
#   general: im2col of nb images into the workspace (nb, C*R*S, P*Q), then per group one GEMM batched
#            over the nb images; nb = as many images as _CL_COLS_BUDGET holds (whole batch when it fits)
# GEMM shapes per image n and group gi (Kg = K/g, CRSg = C/g*R*S):
#   forward  y[n,gi]  (Kg, PQ)   = w[gi] (Kg, CRSg)  @ cols[n,gi] (CRSg, PQ)       NN, bias in the epilogue
#   dX       dcols[n,gi] (CRSg, PQ) = w[gi]^T        @ gy[n,gi] (Kg, PQ)           TN, then col2im (gather)
#   dW       dw[gi] (Kg, CRSg)  = sum_n gy[n,gi] (Kg, PQ) @ cols[n,gi]^T           NT, summed over the images
#            by the GEMM (reduce_batch: partial products + a fixed-order reduction on GPUs)
#            CPU-shaped GEMMs: gy[n,gi] @ rows[n,gi], rows = cols^T (im2row)       NN, image by image
# Workspace: [columns of nb images | GEMM partial products (split-K, dW's per-image products)].
# Implicit GEMM (ops/conv_igemm.py, kernels/conv_igemm.cl; opt-in by tuning or THOMAS_CL_CONV):
#   general: one launch each for y, dX and dW with the columns gathered per tile in local memory; the
#            workspace holds only dW's segment partial sums
#   pointwise: the GEMMs above on the whole batch (no columns); dW on CPU-shaped GEMMs by conv_igemm
def _cl_geometry(io):
    x = io.x[0]
    n, c, h, wd = x.shape
    a = io.attrs
    k, g = a["out_channels"], a["groups"]
    r, s, sh, sw, dh, dw, pt, pl, pb, pr, p, q = _geometry(a, x.shape)
    return n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q


def _is_pointwise(attrs: dict) -> bool:
    return (tuple(attrs["kernel"]) == (1, 1) and tuple(attrs["stride"]) == (1, 1)
            and not any(attrs["pads"]))


def _ldp(pq: int) -> int:
    """row length of the im2col columns: P*Q rounded up to 4 floats (aligned float4 rows for GPUs)"""
    return -(-pq // 4) * 4


def _cols_images(attrs, x_shape, y_shape) -> tuple[int, int]:
    """(images per column chunk, floats per image) of the workspace's column region"""
    n, c = x_shape[:2]
    r, s = attrs["kernel"]
    per_image = c * r * s * _ldp(y_shape[2] * y_shape[3])
    return max(1, min(n, _CL_COLS_BUDGET // per_image)), per_image




def _cl_im2col(b, io, x, x_off, cols, ldp, crs, m, geo):
    """x images -> cols (m, C*R*S, ldp): four pq per work-item with float4 stores on GPUs (tuning
    "conv2d" -> "im2col_vec" 4 or 1; CPUs default to 1)"""
    c, h, wd = io.x[0].shape[1:]
    pq = geo[2] * geo[3]
    vec = int(b.tuning("conv2d").get("im2col_vec", 1 if b.kind == "cpu" else 4))
    if vec == 4:
        b.launch("conv2d.cl", "im2col4", (ldp // 4, crs, m), row_local_size(b), x, x_off, cols, ldp, c, h, wd, *geo,
                 defines=_defines(b, io.attrs))
    else:
        b.launch("conv2d.cl", "im2col", (pq, crs, m), row_local_size(b), x, x_off, cols, ldp, c, h, wd, *geo,
                 defines=_defines(b, io.attrs))


def _pw_tiles_on(tun: dict, attrs: dict) -> bool:
    """pointwise dW as pw_dw_cpu (CPU-shaped GEMMs only; tuning "conv2d" `tun` -> "pw_dw": "tiles", the
    default, or "im2row": the transposition and an NN GEMM): such a conv needs no im2col / im2row columns
    (its forward and dX are GEMMs on the images themselves)"""
    return _is_pointwise(attrs) and attrs["groups"] == 1 and tun.get("pw_dw", "tiles") == "tiles"


def _pw_cols_free(b, io) -> bool:
    return b.gemm_family() == "cpu" and _pw_tiles_on(b.tuning("conv2d"), io.attrs)


def _pw_dw_tiles(b) -> tuple[int, int]:
    """(PW_TK, PW_TC) of pw_dw_cpu: tuning "conv2d" -> "pw_tile", default [4, 4] (16 eight-wide sums in
    registers; [4, 8] and [6, 4] measured no faster on PoCL)"""
    tk, tc = b.tuning("conv2d").get("pw_tile", (4, 4))
    return int(tk), int(tc)


def _igemm_dev(dev, attrs: dict, c: int) -> tuple[bool, bool]:
    """(implicit GEMM, GPU-shaped GEMMs) for a node on `dev` (the Runtime: kind and tuning; None =
    THOMAS_CL_CONV alone decides, else the im2col sizes, the larger)"""
    if _is_depthwise(c, attrs["groups"]):
        return False, False
    tun = dev.tuning.get("conv2d") if dev is not None else {}
    gpu_gemm = (dev.tuning.get("gemm").get("variant") or dev.kind) == "gpu" if dev is not None else False
    return conv_mode(tun) == "igemm", gpu_gemm


def _igemm_on(b, io) -> bool:
    return not _is_depthwise(io.x[0].shape[1], io.attrs["groups"]) and conv_mode(b.tuning("conv2d")) == "igemm"


def cl_conv_workspace(attrs, in_shapes, out_shapes, dev=None):
    """bytes: im2col columns of nb images (nb = whole batch if within _CL_COLS_BUDGET; pointwise
    convolutions use them only for dW on CPU devices); the GEMM partial products (GPU split-K) of
    `cl_conv_gemms` follow them. Implicit GEMM: dW's segment partial sums only (none for a pointwise
    conv on GPU-shaped GEMMs)."""
    n, c = in_shapes[0][:2]
    if _is_depthwise(c, attrs["groups"]):
        return dw_workspace(attrs, in_shapes, out_shapes)
    igemm, gpu_gemm = _igemm_dev(dev, attrs, c)
    k, (r, s), (p, q) = out_shapes[0][1], attrs["kernel"], out_shapes[0][2:]
    if wino.dev_on(dev, attrs, in_shapes[0]):   # transformed tiles and filters, no columns
        return 4 * wino.workspace_floats(n, c, k, *in_shapes[0][2:], p, q)
    if igemm:
        pw_gpu = _is_pointwise(attrs) and gpu_gemm
        own = 0 if pw_gpu else 4 * workspace_floats(k, c // attrs["groups"] * r * s, attrs["groups"], n * p * q)
    elif dev is not None and not gpu_gemm and _pw_tiles_on(dev.tuning.get("conv2d"), attrs):
        own = 0   # pointwise dW by pw_dw_cpu: no columns anywhere
    else:
        nb, per_image = _cols_images(attrs, in_shapes[0], out_shapes[0])
        own = 4 * nb * per_image
    return own


def cl_conv_gemms(attrs, in_shapes, out_shapes, dev=None):
    """the GEMMs of one column chunk of nb images (per group): forward, dX and dW (batch-reduced);
    implicit GEMM: only a pointwise conv's, over the whole batch"""
    c, g = in_shapes[0][1], attrs["groups"]
    if _is_depthwise(c, g):
        return []
    nb, _ = _cols_images(attrs, in_shapes[0], out_shapes[0])
    igemm, gpu_gemm = _igemm_dev(dev, attrs, c)
    k, (r, s), pq = out_shapes[0][1], attrs["kernel"], out_shapes[0][2] * out_shapes[0][3]
    if wino.dev_on(dev, attrs, in_shapes[0]):
        return wino.gemm_shapes(in_shapes[0][0], c, k, *in_shapes[0][2:], *out_shapes[0][2:])
    if igemm:
        if not _is_pointwise(attrs) or not gpu_gemm:   # CPU-shaped GEMMs take no partial products
            return []
        nb = in_shapes[0][0]
    kg, crsg = k // g, c // g * r * s
    return [(kg, pq, crsg, nb, False), (crsg, pq, kg, nb, False), (kg, crsg, pq, nb, True)]


def _defines(b, attrs: dict) -> dict:
    """conv2d.cl's build: LWG work-items per bias_grad reduction (1 on CPUs: one work-item walks it, no
    barriers; halved until it fits the kernel's limits), the node's kernel size, stride and dilation as
    constants (one build per such geometry)."""
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    d = {"LWG": int(b.tuning("conv2d").get("LWG", 1 if b.kind == "cpu" else 64)),
         "GEO_R": r, "GEO_S": s, "GEO_SH": sh, "GEO_SW": sw, "GEO_DH": dh, "GEO_DW": dw}
    while d["LWG"] > 1:
        kl = b.rt.kernel_limits("conv2d.cl", "bias_grad", d)
        if d["LWG"] <= min(kl.wg, kl.item_sizes[0]) and kl.static_local <= kl.local_mem:
            break
        d = dict(d, LWG=d["LWG"] // 2)
    return d


def _regions(io, igemm: bool = False) -> tuple[int, dict]:
    """(images per chunk, gemm kwargs for the partial-product region after the columns); implicit
    GEMM (pointwise convs): the whole batch, the whole workspace for partial products"""
    if igemm:
        ws = io.workspace
        return io.x[0].shape[0], {"work": ws, "work_off": 0, "work_floats": ws.size if ws is not None else 0}
    nb, per_image = _cols_images(io.attrs, io.x[0].shape, io.y[0].shape)
    ws = io.workspace
    if ws is None or ws.size < nb * per_image:
        raise ValueError(f"{io.name}: Conv2d needs a workspace of at least {nb * per_image} floats")
    return nb, {"work": ws, "work_off": nb * per_image, "work_floats": ws.size - nb * per_image}


def cl_conv_forward(b, io):
    """x (N,C,H,W), w (K,C/g,R,S), b? (K,) -> y (N,K,P,Q); io.act "relu"/"relu6": y = act(conv)
    (a frozen conv + activation pair fused by the Plan)"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = _cl_geometry(io)
    x, w, y = io.x[0], io.x[1], io.y[0]
    bias = io.x[2] if len(io.x) > 2 else None
    geo = (r, s, p, q, sh, sw, dh, dw, pt, pl)
    if _is_depthwise(c, g):
        dw_forward(b, io, _cl_geometry(io))
        return
    if wino.wino_on(b, io.attrs, io.x[0].shape):
        wino.wino_forward(b, io, _cl_geometry(io))
        return
    igemm = _igemm_on(b, io)
    if igemm and not _is_pointwise(io.attrs):
        igemm_forward(b, io, _cl_geometry(io))
        return
    kg, cg = k // g, c // g
    crs, crsg, pq = c * r * s, cg * r * s, p * q
    nb, work = _regions(io, igemm or _pw_cols_free(b, io))
    bias_kw = {"bias": bias, "bias_mode": "row" if bias is not None else None, "act": io.act}
    if _is_pointwise(io.attrs):
        for gi in range(g):
            b.gemm(False, False, kg, pq, cg, w, gi * kg * cg, cg, x, gi * cg * pq, pq, y, gi * kg * pq, pq,
                 batch=n, stride_b=c * pq, stride_c=k * pq, bias_off=gi * kg, **bias_kw, **work)
        return
    cols, ldp = io.workspace, _ldp(pq)
    for i0 in range(0, n, nb):
        m = min(nb, n - i0)
        _cl_im2col(b, io, x, i0 * c * h * wd, cols, ldp, crs, m, geo)
        for gi in range(g):
            b.gemm(False, False, kg, pq, crsg, w, gi * kg * crsg, crsg, cols, gi * crsg * ldp, ldp,
                 y, i0 * k * pq + gi * kg * pq, pq, batch=m, stride_b=crs * ldp, stride_c=k * pq,
                 bias_off=gi * kg, **bias_kw, **work)


def cl_conv_backward(b, io):
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = _cl_geometry(io)
    x, w, gy = io.x[0], io.x[1], io.gy[0]
    gx, gw = io.gx[0], io.gx[1]
    gb = io.gx[2] if len(io.gx) > 2 else None
    geo = (r, s, p, q, sh, sw, dh, dw, pt, pl)
    defs = _defines(b, io.attrs)
    lwg = defs["LWG"]
    if gb is not None:
        # undoes: y += b[None, :, None, None]
        b.launch("conv2d.cl", "bias_grad", (k * lwg,), (lwg,), gy, gb, n, k, p * q, defines=defs)
    if _is_depthwise(c, g):
        dw_backward(b, io, _cl_geometry(io))
        return
    if gx is None and gw is None:
        return
    if wino.wino_on(b, io.attrs, io.x[0].shape):
        wino.wino_backward(b, io, _cl_geometry(io))
        return
    kg, cg = k // g, c // g
    crs, crsg, pq = c * r * s, cg * r * s, p * q
    pointwise = _is_pointwise(io.attrs)
    igemm = _igemm_on(b, io)
    if igemm and (not pointwise or b.gemm_family() == "cpu"):
        # general: dX and dW implicit; pointwise on CPU-shaped GEMMs: dW implicit (no im2row), dX below
        igemm_backward(b, io, _cl_geometry(io), data=not pointwise)
        if not pointwise:
            return
        gw = None
    nb, work = _regions(io, igemm or _pw_cols_free(b, io))
    cols, ldp = io.workspace, _ldp(pq)
    if gw is not None:
        cpu = b.gemm_family() == "cpu"
        if _pw_cols_free(b, io):
            # undoes: y[n] = w @ x[n]  ->  dw = sum_n gy[n] @ x[n]^T, dot products along the contiguous pixels
            tk, tc = _pw_dw_tiles(b)
            b.launch("conv2d.cl", "pw_dw_cpu", (-(-c // tc), -(-k // tk)), FlexLocal((1, 1)), x, gy, gw, n, c, k, pq,
                     defines=dict(defs, PW_TK=tk, PW_TC=tc), flops=2 * n * k * c * pq)
            gw = None
        for i0 in range(0, n if gw is not None else 0, nb):
            m = min(nb, n - i0)
            beta = 0.0 if i0 == 0 else 1.0
            if cpu:
                # undoes: y[n,gi] = w[gi] @ cols[n,gi]  ->  dw[gi] += gy[n,gi] @ rows[n,gi]  (rows = cols^T)
                # NOTE: the CPU-shaped GEMM is 3-10x faster as NN than as NT when K = P*Q is short.
                b.launch("conv2d.cl", "im2row", (crs, pq, m), row_local_size(b), x, i0 * c * h * wd, cols, c, h, wd,
                         *geo,
                         defines=defs)
                for gi in range(g):
                    b.gemm(False, False, kg, crsg, pq, gy, i0 * k * pq + gi * kg * pq, pq, cols, gi * crsg, crs,
                         gw, gi * kg * crsg, crsg, beta=beta, batch=m, stride_a=k * pq, stride_b=pq * crs,
                         reduce_batch=True, **work)
                continue
            # undoes: y[n,gi] = w[gi] @ cols[n,gi]  ->  dw[gi] = sum_n gy[n,gi] @ cols[n,gi]^T  (pointwise: x[n,gi])
            if not pointwise:
                _cl_im2col(b, io, x, i0 * c * h * wd, cols, ldp, crs, m, geo)
            src, ld = (x, pq) if pointwise else (cols, ldp)
            off, stride = (i0 * c * pq, c * pq) if pointwise else (0, crs * ldp)
            for gi in range(g):
                b.gemm(False, True, kg, crsg, pq, gy, i0 * k * pq + gi * kg * pq, pq, src, off + gi * crsg * ld,
                     ld, gw, gi * kg * crsg, crsg, beta=beta, batch=m, stride_a=k * pq, stride_b=stride,
                     reduce_batch=True, **work)
    if gx is None:
        return
    if pointwise:
        # undoes: y[n,gi] = w[gi] @ x[n,gi]  ->  dx[n,gi] (Cg,HW) = w[gi]^T @ gy[n,gi]
        for gi in range(g):
            b.gemm(True, False, cg, pq, kg, w, gi * kg * cg, cg, gy, gi * kg * pq, pq, gx, gi * cg * pq, pq,
                 batch=n, stride_b=k * pq, stride_c=c * pq, **work)
        return
    # undoes: y[n,gi] = w[gi] @ cols[n,gi]  ->  dcols[n,gi] = w[gi]^T @ gy[n,gi], then col2im
    for i0 in range(0, n, nb):
        m = min(nb, n - i0)
        for gi in range(g):
            b.gemm(True, False, crsg, pq, kg, w, gi * kg * crsg, crsg, gy, i0 * k * pq + gi * kg * pq, pq,
                 cols, gi * crsg * ldp, ldp, batch=m, stride_b=k * pq, stride_c=crs * ldp, **work)
        b.launch("conv2d.cl", "col2im", (h * wd, c, m), row_local_size(b), cols, ldp, gx, i0 * c * h * wd, c, h, wd,
                 *geo,
                 defines=defs)


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
    cl=ClSpec(cl_conv_forward, cl_conv_backward, saves=("x0", "x1"), workspace=cl_conv_workspace,
              gemms=cl_conv_gemms),
))
