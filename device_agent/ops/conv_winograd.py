"""Winograd F(2x2, 3x3) convolution launchers (kernels/conv_winograd.cl): forward, dX and dW of a 3x3,
stride-1, undilated, ungrouped convolution, each in 16 batched GEMMs of 4/9 of im2col's multiply-adds
and without its columns.

    wino_on(b, attrs, c)            # this node takes the Winograd path (switch + shape rule below)
    wino_forward(b, io, geo)        # y = act(conv(x, w) + b): filter, input, 16 GEMMs, output transform
    wino_backward(b, io, geo)       # dW (the forward's adjoint in w), then dX (dY correlated with the flipped,
                                    # transposed filters, pads 2 - pad)

Each output tile is 2x2, so P*Q is covered by ceil(P/2)*ceil(Q/2) tiles and an odd edge computes a
cropped tile. dW sums the tiles' products in the GEMMs (chunk after chunk with beta = 1: a fixed order),
then transforms the 16 sums back to 3x3.

Which convolutions: THOMAS_CL_WINOGRAD=1|0 forces it for the process on every 3x3 stride-1 node or none
(tests run it on PoCL), else tuning "conv2d" -> "winograd" (true/false, `thomas tune` measures it), else
the device kind's default, and then only where the size rule holds: both channel counts at least
MIN_CHANNELS and the batch's output tiles at least MIN_TILES (below either, the transforms cost more than
the GEMMs save: AlexNet at 64x64, batch 2, 8 tiles per layer, ran its full step 0.74x as fast on PoCL).

Error: F(2x2,3x3)'s transforms have entries 0, +-1/2, +-1, so the products carry a few more float32
roundings than a direct sum; the numpy reference agrees to 1e-4 on the test grid.

Workspace (floats), in order: the 16 transformed filters or filter gradients (16 x K x C), then per chunk
of nb images the transformed inputs (16 x I x T) and products or transformed dY (16 x O x T), T = nb *
tiles per image, nb as many images as WINO_BUDGET floats hold (>= 1).
"""
from __future__ import annotations

import os

from ._cl import ACTS, row_local_size

ENV = "THOMAS_CL_WINOGRAD"
MIN_CHANNELS = 16      # C and K at least this (the GEMMs' K and M)
MIN_TILES = 64         # 2x2 output tiles of the batch at least (the GEMMs' N)
WINO_BUDGET = 1 << 23  # floats of one chunk's V + M (32 MiB)


def geometric(attrs: dict) -> bool:
    """a 3x3, stride-1, undilated, ungrouped convolution: what F(2x2,3x3) computes"""
    return (tuple(attrs["kernel"]) == (3, 3) and tuple(attrs["stride"]) == (1, 1)
            and tuple(attrs["dilation"]) == (1, 1) and attrs["groups"] == 1)


def worth_it(attrs: dict, x_shape) -> bool:
    """the size rule: C and K >= MIN_CHANNELS and the batch's output tiles >= MIN_TILES (the 16 GEMMs'
    N); below either the transforms cost more than the GEMMs save"""
    n, c, h, w = x_shape
    pt, pl, pb, pr = attrs["pads"]
    return (min(c, attrs["out_channels"]) >= MIN_CHANNELS
            and n * _tiles(h + pt + pb - 2, w + pl + pr - 2) >= MIN_TILES)


def decide(tun: dict, kind: str, attrs: dict, x_shape) -> bool:
    """THOMAS_CL_WINOGRAD=1 takes every 3x3 stride-1 node (=0 none); else tuning "conv2d" -> "winograd",
    else the device kind's default, turns on the nodes the size rule picks"""
    if not geometric(attrs):
        return False
    env = (os.environ.get(ENV) or "").strip().lower()
    if env:
        return env not in ("0", "off", "false", "no")
    return bool(tun.get("winograd", default_on(kind))) and worth_it(attrs, x_shape)


def default_on(kind: str) -> bool:
    # NOTE: measured on PoCL (docs/BACKENDS.md "Winograd"); a GPU turns it on by its vendor entry (the H100's
    # does, measured 2026-12-07) or `thomas tune`, else keeps the GEMM paths
    return kind == "cpu"


def wino_on(b, attrs: dict, x_shape) -> bool:
    return decide(b.tuning("conv2d"), b.kind, attrs, x_shape)


def dev_on(dev, attrs: dict, x_shape) -> bool:
    """wino_on for a Runtime `dev` (the workspace hooks; None = the environment alone decides)"""
    return decide(dev.tuning.get("conv2d") if dev is not None else {}, dev.kind if dev is not None else "",
                  attrs, x_shape)


def _tiles(p: int, q: int) -> int:
    return -(-p // 2) * -(-q // 2)


def _chunk(n: int, o: int, i: int, tiles: int) -> int:
    return max(1, min(n, WINO_BUDGET // (16 * (o + i) * tiles)))


def _pass_floats(n: int, o: int, i: int, tiles: int) -> int:
    """floats of one pass: the 16 transformed filters (or their gradients) and one chunk's tiles of both sides"""
    return 16 * o * i + 16 * (o + i) * tiles * _chunk(n, o, i, tiles)


def workspace_floats(n: int, c: int, k: int, h: int, w: int, p: int, q: int) -> int:
    """floats of the largest pass: forward and dW (tiles over P x Q) or dX (tiles over H x W)"""
    return max(_pass_floats(n, k, c, _tiles(p, q)), _pass_floats(n, c, k, _tiles(h, w)))


def gemm_shapes(n: int, c: int, k: int, h: int, w: int, p: int, q: int) -> list:
    """(M, N, K, batch, reduce_batch) of the 16 GEMMs of one chunk: forward, dX, dW (ClSpec.gemms)"""
    t_fw, t_dx = _tiles(p, q), _tiles(h, w)
    t_fw *= _chunk(n, k, c, t_fw)
    return [(k, t_fw, c, 16, False), (c, t_dx * _chunk(n, c, k, t_dx), k, 16, False), (k, c, t_fw, 16, False)]


def _lsize(b) -> tuple:
    return row_local_size(b)[:1] + (1,)


def _run(b, io, src, src_img: int, dst, dst_img: int, n: int, o: int, i: int, hw_in: tuple, hw_out: tuple,
         pads: tuple, bias, mode: int, flip: int):
    """dst (n, o, *hw_out) = the F(2x2,3x3) correlation of src (n, i, *hw_in) with pads `pads`; w from io"""
    ws = io.workspace
    tp, tq = -(-hw_out[0] // 2), -(-hw_out[1] // 2)
    nb = _chunk(n, o, i, tp * tq)
    v_off = 16 * o * i
    # U: the 16 transformed filters, once per pass (the weights change every step)
    b.launch("conv_winograd.cl", "wino_filter", (i, o), _lsize(b), io.x[1], ws, o, i, io.x[1].shape[1], flip)
    for i0 in range(0, n, nb):
        m = min(nb, n - i0)
        t = m * tp * tq
        m_off = v_off + 16 * i * t
        used = m_off + 16 * o * t
        b.launch("conv_winograd.cl", "wino_input", (t, i), _lsize(b), src, i0 * src_img, ws, v_off, i, *hw_in,
                 tp, tq, *pads, t, 0)
        b.gemm(False, False, o, t, i, ws, 0, i, ws, v_off, t, ws, m_off, t, batch=16, stride_a=o * i,
               stride_b=i * t, stride_c=o * t, work=ws, work_off=used, work_floats=max(0, ws.size - used))
        b.launch("conv_winograd.cl", "wino_output", (t, o), _lsize(b), ws, m_off, dst, i0 * dst_img, bias, mode, o,
                 *hw_out, tp, tq, t)


def _filter_grad(b, io, geo) -> None:
    """dW (K, C, 3, 3) = G^T [sum over tiles of (B^T x B) . (A dY A^T)] G, chunk by chunk"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geo
    ws = io.workspace
    tp, tq = -(-p // 2), -(-q // 2)
    nb = _chunk(n, k, c, tp * tq)
    v_off = 16 * k * c
    for i0 in range(0, n, nb):
        m = min(nb, n - i0)
        t = m * tp * tq
        y_off = v_off + 16 * c * t
        used = y_off + 16 * k * t
        b.launch("conv_winograd.cl", "wino_input", (c, t), _lsize(b), io.x[0], i0 * c * h * wd, ws, v_off, c, h,
                 wd, tp, tq, pt, pl, t, 1)
        b.launch("conv_winograd.cl", "wino_grad_tile", (t, k), _lsize(b), io.gy[0], i0 * k * p * q, ws, y_off, k,
                 p, q, tp, tq, t)
        b.gemm(False, False, k, c, t, ws, y_off, t, ws, v_off, c, ws, 0, c, beta=0.0 if i0 == 0 else 1.0,
               batch=16, stride_a=k * t, stride_b=t * c, stride_c=k * c, work=ws, work_off=used,
               work_floats=max(0, ws.size - used))
    b.launch("conv_winograd.cl", "wino_filter_grad", (c, k), _lsize(b), ws, io.gx[1], k, c)


def wino_forward(b, io, geo) -> None:
    """y = act(x * w + b) (io.act: a fused ReLU/ReLU6)"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geo
    bias = io.x[2] if len(io.x) > 2 else None
    mode = int(bias is not None) | ACTS[io.act] << 1
    _run(b, io, io.x[0], c * h * wd, io.y[0], k * p * q, n, k, c, (h, wd), (p, q), (pt, pl),
         bias if bias is not None else io.x[1], mode, 0)


def wino_backward(b, io, geo) -> None:
    """dW (io.gx[1]), then dX (io.gx[0]): dX[n,c,h,w] = sum_{k,r,s} dY[n,k,h+pt-r,w+pl-s] w[k,c,r,s], the
    correlation of dY (pads 2-pt, 2-pl) with w rotated by 180 degrees and transposed (C outputs, K inputs)"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geo
    if io.gx[1] is not None:
        _filter_grad(b, io, geo)
    if io.gx[0] is not None:
        _run(b, io, io.gy[0], k * p * q, io.gx[0], c * h * wd, n, c, k, (p, q), (h, wd), (2 - pt, 2 - pl),
             io.x[1], 0, 1)
