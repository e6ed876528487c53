"""Depthwise Conv2d on OpenCL (groups == C > 1, any channel multiplier): the direct kernels of
kernels/conv_depthwise.cl, launched by ops/conv2d.py (shapes, attrs and the numpy reference live there).

    x (N,C,H,W), w (K,1,R,S), b? (K,) -> y (N,K,P,Q),  K = C*mult
    y[n,k,p,q] = b[k] + sum_{r,s} x[n, k/mult, p*sh + r*dh - pt, q*sw + s*dw - pl] * w[k,0,r,s]

Variants (tuning "conv2d", keys kept from when these lived in conv2d.py):
  forward / dX  dw_fwd_rows, dw_bwd_data_rows: a plane per work-item, 8 outputs at a time in registers
                ("dw_rows", CPUs by default; "dw_prows" rows per work-item, 0 = the plane);
                else dw_fwd, dw_bwd_data: "dw_run" outputs of a row per work-item (GPUs: one).
  dW            dw_bwd_filter_rows: a work-item per (segment, channel), vector sums in registers
                ("dw_filter_rows", default as "dw_rows"; "dw_seg" rows per segment, "dw_vec" lanes);
                else dw_bwd_filter_part: work-groups of LWG ("LWG") with a local tree, "dw_seg" rows.
                Both add their segments with dw_bwd_filter_finish in a fixed order (deterministic).
"""
from __future__ import annotations

from ._cl import ACTS, FlexLocal, row_local_size

DW_SEG_ROWS = 4    # rows (n, p) per row lane of a depthwise dW segment (tuning "conv2d" -> "dw_seg" rows)
DW_MAX_SEGS = 64   # segments per weight at most (their partial sums live in the workspace)
DW_ROW_ITEMS = 64  # CPUs: work-items (segments x channels) of dw_bwd_filter_rows at least
FILE = "conv_depthwise.cl"


def dw_workspace(attrs: dict, in_shapes, out_shapes) -> int:
    """bytes: the dW segments' partial sums"""
    r, s = attrs["kernel"]
    return 4 * out_shapes[0][1] * r * s * min(DW_MAX_SEGS, in_shapes[0][0] * out_shapes[0][2])


def dw_defines(b, attrs: dict) -> dict:
    """conv_depthwise.cl's build: LWG work-items per dW reduction (1 on CPUs: one work-item walks it, no
    barriers), the node's kernel size, stride and dilation as constants (one build per such geometry),
    DW_WMAX private weights of dw_bwd_data_rows for channel multipliers over 2, DW_VEC ("dw_vec")."""
    (r, s), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    tun = b.tuning("conv2d")
    d = {"LWG": int(tun.get("LWG", 1 if b.kind == "cpu" else 64)),
         "GEO_R": r, "GEO_S": s, "GEO_SH": sh, "GEO_SW": sw, "GEO_DH": dh, "GEO_DW": dw}
    if attrs["out_channels"] // attrs["groups"] > 2:
        d["DW_WMAX"] = attrs["out_channels"] // attrs["groups"] * r * s
    if "dw_vec" in tun:
        d["DW_VEC"] = int(tun["dw_vec"])
    while d["LWG"] > 1:   # halved until dw_bwd_filter_part fits: work-group limits, DW_TAPS * LWG local floats
        kl = b.rt.kernel_limits(FILE, "dw_bwd_filter_part", d)
        if d["LWG"] <= min(kl.wg, kl.item_sizes[0]) and kl.static_local <= kl.local_mem:
            break
        d = dict(d, LWG=d["LWG"] // 2)
    return d


def _dw_rows(b) -> bool:
    """forward / dX as the row kernels: tuning "conv2d" -> "dw_rows", CPUs by default"""
    return bool(b.tuning("conv2d").get("dw_rows", b.kind == "cpu"))


def _plane_rows(b, rows: int) -> int:
    """rows per work-item of dw_fwd_rows / dw_bwd_data_rows: tuning "conv2d" -> "dw_prows", 0 (the
    default) = the whole plane (PoCL pays per work-group; a plane per work-item still leaves N*C)"""
    pb = int(b.tuning("conv2d").get("dw_prows", 0))
    return rows if pb <= 0 else min(pb, rows)


def _run(b, length: int) -> int:
    """outputs per work-item along a row in dw_fwd / dw_bwd_data: tuning "conv2d" -> "dw_run", 0 = the
    whole row; default one on GPUs, the whole row on CPUs (no index division per output there)"""
    run = int(b.tuning("conv2d").get("dw_run", 0 if b.kind == "cpu" else 1))
    return length if run <= 0 else min(run, length)


def _segments(b, rows: int, lanes: int) -> tuple[int, int]:
    """(rows per segment, segments) of dw_bwd_filter_part over N*P rows, `lanes` rows at a time"""
    seg = int(b.tuning("conv2d").get("dw_seg", lanes * DW_SEG_ROWS))
    seg = max(1, seg, -(-rows // DW_MAX_SEGS))
    return seg, -(-rows // seg)


def _filter_rows(b) -> bool:
    """dW as dw_bwd_filter_rows: tuning "conv2d" -> "dw_filter_rows", default as "dw_rows" (CPUs)"""
    return bool(b.tuning("conv2d").get("dw_filter_rows", _dw_rows(b)))


def _row_segments(b, rows: int, k: int) -> tuple[int, int]:
    """(rows per segment, segments) of dw_bwd_filter_rows: tuning "conv2d" -> "dw_seg" rows, else as few
    segments as give DW_ROW_ITEMS work-items over the K channels (one segment: no finish launch)"""
    seg = b.tuning("conv2d").get("dw_seg")
    segs = -(-DW_ROW_ITEMS // k) if seg is None else -(-rows // max(1, int(seg)))
    segs = max(1, min(segs, DW_MAX_SEGS, rows))
    seg = -(-rows // segs)
    return seg, -(-rows // seg)


def dw_forward(b, io, geometry) -> None:
    """y = act(conv(x) + b); geometry = conv2d._cl_geometry(io)"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geometry
    x, w, y = io.x[0], io.x[1], io.y[0]
    bias = io.x[2] if len(io.x) > 2 else None
    geo = (r, s, p, q, sh, sw, dh, dw, pt, pl)
    mode = int(bias is not None) | ACTS[io.act] << 1
    defs, flops = dw_defines(b, io.attrs), 2 * n * k * p * q * r * s
    if _dw_rows(b):
        pb = _plane_rows(b, p)
        b.launch(FILE, "dw_fwd_rows", (-(-p // pb), k, n), FlexLocal((1, 8, 1)), x, w,
                 bias if bias is not None else w, mode, y, c, h, wd, k // c, *geo, pb, defines=defs, flops=flops)
        return
    qb = _run(b, q)
    b.launch(FILE, "dw_fwd", (p * -(-q // qb), k, n), row_local_size(b), x, w, bias if bias is not None else w,
             mode, y, c, h, wd, k // c, *geo, qb, defines=defs, flops=flops)


def dw_backward(b, io, geometry) -> None:
    """dX and dW where wanted (the bias gradient is the caller's)"""
    n, c, h, wd, k, g, r, s, sh, sw, dh, dw, pt, pl, p, q = geometry
    x, w, gy, gx, gw = io.x[0], io.x[1], io.gy[0], io.gx[0], io.gx[1]
    geo, defs, flops = (r, s, p, q, sh, sw, dh, dw, pt, pl), dw_defines(b, io.attrs), 2 * n * k * p * q * r * s
    # undoes: y[n,k] = sum_{r,s} x[n, k/mult, p*sh+r*dh-pt, q*sw+s*dw-pl] * w[k,0,r,s]
    if gx is not None and _dw_rows(b):
        hb = _plane_rows(b, h)
        b.launch(FILE, "dw_bwd_data_rows", (-(-h // hb), c, n), FlexLocal((1, 8, 1)), gy, w, gx, c, h, wd,
                 k // c, *geo, hb, defines=defs, flops=flops)
    elif gx is not None:
        wb = _run(b, wd)
        b.launch(FILE, "dw_bwd_data", (h * -(-wd // wb), c, n), row_local_size(b), gy, w, gx, c, h, wd,
                 k // c, *geo, wb, defines=defs, flops=flops)
    if gw is None:
        return
    if _filter_rows(b):
        seg, segs = _row_segments(b, n * p, k)
        out = gw if segs == 1 else io.workspace    # one segment: the sums are dW itself
        b.launch(FILE, "dw_bwd_filter_rows", (segs, k), FlexLocal((1, 1)), x, gy, out, n, c, h, wd,
                 k // c, *geo, seg, segs, defines=defs, flops=flops)
    else:
        lwg = defs["LWG"]
        lq = min(lwg, 1 << max(0, q - 1).bit_length())    # lanes along q: a power of two >= Q, <= LWG
        seg, segs = _segments(b, n * p, lwg // lq)
        b.launch(FILE, "dw_bwd_filter_part", (segs * lwg, k), (lwg, 1), x, gy, io.workspace,
                 n, c, h, wd, k // c, *geo, seg, lq, defines=defs, flops=flops)
    if segs > 1 or not _filter_rows(b):
        b.launch(FILE, "dw_bwd_filter_finish", (k * r * s,), row_local_size(b)[:1], io.workspace, segs,
                 gw, k * r * s, defines=defs)
