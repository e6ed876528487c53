"""Implicit-GEMM convolution launchers (kernels/conv_igemm.cl): no im2col columns in global memory.

    mode = conv_mode(b.tuning("conv2d"))                  # "im2col" unless switched or tuned to "igemm"
    igemm_forward(b, io, geo)                             # y = act(w * cols(x) + b), cols gathered per tile
    igemm_backward(b, io, geo)                            # dX (w^T * dY gathered), dW (dY * cols^T by segments)

Which path a regular convolution (groups < C, not 1x1/stride 1/unpadded on a GPU-shaped GEMM) takes:
THOMAS_CL_CONV=igemm|im2col|auto forces it for the process (tests run the kernels on PoCL with it), else
tuning "conv2d" -> "conv", else "im2col" on every device until implicit GEMM is measured faster on a
GPU (on CPUs the CPU-shaped GEMMs over columns are faster than a local-memory tile).

Tiles, the first that this kernel fits on the device (work-group size, max work-item sizes, local
memory: limits.py through b.rt.kernel_limits; a phone profile, PowerVR's 4 KB of local memory, launches):
tuning "conv2d" -> "igemm_tile" ({"MWG", "NWG", "KWG", "MDIMC", "NDIMC", "LPAD"}); NARROW when the
product has at most 16 rows (a 3-channel dX, a 16-filter conv); the device's GPU GEMM tile (tuning
"gemm", e.g. the H100's 64x64 on 16x16 work-items); then TILES in order.

dW sums N*P*Q products per weight; `dw_segments` cuts that reduction in segments so that a small
weight tensor still fills a GPU; the segments' partial sums (nseg * K * C/g*R*S floats, the only
workspace this path needs) are added in a fixed order by conv_igemm_sum (deterministic).
"""
from __future__ import annotations

import os

from ..errors import BackendError
from ._cl import ACTS, row_local_size

MODES = ("igemm", "im2col")
ENV = "THOMAS_CL_CONV"
# tiles tried in order: each keeps MWG/MDIMC, NWG/NDIMC multiples of 4 and THREADS a multiple of KWG.
# LPAD 4: the slices' transposing stores into local memory (w and dY rows, k-contiguous in global
# memory) would otherwise hit one bank 16 times (a row of 64 floats is 2 x 32 banks)
TILES = ({"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "LPAD": 4},
         {"MWG": 32, "NWG": 32, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "LPAD": 4},
         {"MWG": 32, "NWG": 32, "KWG": 8, "MDIMC": 4, "NDIMC": 4, "LPAD": 4},
         {"MWG": 16, "NWG": 16, "KWG": 8, "MDIMC": 4, "NDIMC": 4, "LPAD": 4},
         {"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4, "NDIMC": 4, "LPAD": 4})
KEYS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC", "LPAD")
NARROW = {"MWG": 16, "NWG": 128, "KWG": 16, "MDIMC": 4, "NDIMC": 16, "LPAD": 4}    # products of <= 16 rows
MAX_SEGS = 32              # dW reduction segments per weight at most
MIN_SEG = 1024             # products per segment at least (N*P*Q / nseg)
PART_CAP = 1 << 22         # floats of dW partial sums at most (16 MiB)
WANT_GROUPS = 256          # work-groups the dW launch aims for (64x64 tiles x groups x segments)


class ConvModeError(BackendError):
    """THOMAS_CL_CONV or tuning "conv" names no convolution path, or no tile fits the device."""


def conv_mode(tun: dict) -> str:
    """"igemm" or "im2col" for a device with tuning "conv2d" `tun` (THOMAS_CL_CONV overrides it)."""
    want = (os.environ.get(ENV) or "").strip().lower() or str(tun.get("conv", "auto")).lower()
    if want == "auto":
        # NOTE: im2col unless a tuning entry {"conv2d": {"conv": "igemm"}} opts a device in: the H100's does
        # (AlexNet b32 inference 6.4 -> 4.1 ms there, 2026-12-07); on PoCL it is 1.2-16x slower
        return "im2col"
    if want not in MODES:
        raise ConvModeError(f"{ENV}={want!r} is not a convolution path (igemm, im2col or auto)")
    return want


def dw_segments(kg: int, crsg: int, g: int, npq: int) -> int:
    """Segments of the N*P*Q reduction of dW: enough 64x64 work-groups to fill a GPU, each segment at
    least MIN_SEG products, the partials (nseg * g*Kg * CRSg floats) within PART_CAP; 1 = no partials."""
    tiles = -(-kg // 64) * -(-crsg // 64) * g
    s = max(1, min(MAX_SEGS, -(-WANT_GROUPS // tiles), npq // MIN_SEG))
    while s > 1 and s * g * kg * crsg > PART_CAP:
        s -= 1
    return s


def workspace_floats(k: int, crsg: int, g: int, npq: int, need_w: bool = True) -> int:
    """Floats of workspace the igemm path needs: dW's partial sums (0 with one segment)."""
    s = dw_segments(k // g, crsg, g, npq) if need_w else 1
    return s * k * crsg if s > 1 else 0


def _defines(attrs: dict, t: dict) -> dict:
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    return dict({k: int(t.get(k, 0)) for k in KEYS}, GEO_R=r, GEO_S=s, GEO_SH=sh, GEO_SW=sw, GEO_DH=dh, GEO_DW=dw)


def _valid(t: dict) -> bool:
    """the kernel file's own constraints on a tile (its #error lines)"""
    mt, th = t["MDIMC"] * t["NDIMC"], t["NWG"]
    return (t["MWG"] % (4 * t["MDIMC"]) == 0 and t["NWG"] % (4 * t["NDIMC"]) == 0 and t.get("LPAD", 0) % 4 == 0
            and mt % t["KWG"] == 0 and (mt % th == 0 or th % mt == 0))


def _misfit(b, kernel: str, attrs: dict, t: dict) -> str:
    """Why tile `t` cannot launch `kernel` on this device ("" when it can); device-level limits first
    (no build for a tile that cannot fit), then the built kernel's own."""
    lim = b.rt.limits
    threads, need = t["MDIMC"] * t["NDIMC"], 4 * t["KWG"] * (t["MWG"] + t["NWG"] + 2 * t.get("LPAD", 0))
    if threads > lim.wg_cap() or t["NDIMC"] > lim.item_sizes[0] or t["MDIMC"] > lim.item_sizes[1]:
        return f"{t['NDIMC']}x{t['MDIMC']} work-items"
    if need > lim.local_mem:
        return f"{need} bytes of local tiles"
    kl = b.rt.kernel_limits("conv_igemm.cl", kernel, _defines(attrs, t))
    if threads > kl.wg or kl.static_local > kl.local_mem:
        return f"{t['NDIMC']}x{t['MDIMC']} work-items / {kl.static_local} bytes over the kernel's limits"
    return ""


def pick_tile(b, kernel: str, attrs: dict, rows: int = 1 << 30) -> dict:
    """The first candidate tile (module docstring) this kernel fits on the device, for a product of
    `rows` rows."""
    tuned = b.tuning("conv2d").get("igemm_tile")
    gem = b.tuning("gemm")
    cands = [dict(TILES[0], **tuned)] if isinstance(tuned, dict) else []
    cands += [NARROW] if rows <= NARROW["MWG"] else []
    if (gem.get("variant") or b.kind) == "gpu" and all(k in gem for k in KEYS[:5]):
        cands.append(dict({k: int(gem.get(k, 0)) for k in KEYS}, LPAD=max(4, int(gem.get("LPAD", 0)))))
    for t in cands + list(TILES):
        if _valid(t) and not _misfit(b, kernel, attrs, t):
            return t
    raise ConvModeError(f"conv_igemm.cl:{kernel}: no tile fits this device's limits")


def _launch(b, kernel: str, attrs: dict, cols: int, rows: int, z: int, *args, flops: int = 0):
    t = pick_tile(b, kernel, attrs, rows)
    gsize = (-(-cols // t["NWG"]) * t["NDIMC"], -(-rows // t["MWG"]) * t["MDIMC"], z)
    return b.launch("conv_igemm.cl", kernel, gsize, (t["NDIMC"], t["MDIMC"], 1), *args,
                    defines=_defines(attrs, t), flops=flops)


def igemm_forward(b, io, geo) -> None:
    """x (N,C,H,W), w (K,C/g,R,S), b? (K,) -> y (N,K,P,Q) = act(conv + b), one launch."""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geo
    x, w, y = io.x[0], io.x[1], io.y[0]
    bias = io.x[2] if len(io.x) > 2 else None
    mode = int(bias is not None) | ACTS[io.act] << 1
    _launch(b, "conv_igemm_fwd", io.attrs, n * p * q, k // g, g, x, w, bias if bias is not None else w, mode, y,
            n, c, h, wd, k, p, q, pt, pl, g, flops=2 * n * k * p * q * (c // g) * r * s)


def igemm_backward(b, io, geo, data: bool = True) -> None:
    """dX (unless not `data`) and dW of a regular convolution, where wanted (the bias gradient is the
    caller's)."""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geo
    x, w, gy = io.x[0], io.x[1], io.gy[0]
    gx, gw = io.gx[0], io.gx[1]
    flops = 2 * n * k * p * q * (c // g) * r * s
    if gx is not None and data:
        # undoes: y[n, k, p, q] += w[k, c, r, s] * x[n, c, p*sh + r*dh - pt, q*sw + s*dw - pl]
        _launch(b, "conv_igemm_bwd_data", io.attrs, n * h * wd, c // g, g, gy, w, gx, n, c, h, wd, k, p, q,
                pt, pl, g, flops=flops)
    if gw is None:
        return
    # undoes the same line for w: dw[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * x[n, c, h, w]
    crsg, npq = c // g * r * s, n * p * q
    nseg = dw_segments(k // g, crsg, g, npq)
    ws = io.workspace
    room = (ws.size if ws is not None else 0) // max(1, k * crsg)
    nseg = nseg if nseg <= room else 1
    t = pick_tile(b, "conv_igemm_bwd_filt", io.attrs, k // g)
    seg = -(-(-(-npq // nseg)) // t["KWG"]) * t["KWG"]           # whole KWG slices per segment
    nseg = -(-npq // seg)
    out = gw if nseg == 1 else ws
    _launch(b, "conv_igemm_bwd_filt", io.attrs, crsg, k // g, g * nseg, x, gy, out, n, c, h, wd, k, p, q,
            pt, pl, g, nseg, seg, flops=flops)
    if nseg > 1:
        b.launch("conv_igemm.cl", "conv_igemm_sum", (k * crsg,), row_local_size(b)[:1], ws, nseg, k * crsg, gw,
                 defines=_defines(io.attrs, t), flops=nseg * k * crsg)
