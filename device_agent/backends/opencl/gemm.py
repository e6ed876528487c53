"""GEMM launcher over kernels/gemm.cl: row-major, element offsets, batched by strides.

    gemm(b, False, True, n, m, f, x, 0, f, w, 0, f, y, 0, m)      # y (n,m) = x (n,f) @ w (m,f)^T

C[M,N] = alpha * op(A) @ op(B) + beta * C (+ bias) for each z < batch, op(A) = A (M,K) or A^T (A
stored (K,M)); op(B) = B (K,N) or B^T (B stored (N,K)); matrix z of A starts at a_off + z*stride_a.
beta == 0 never reads C. bias_mode "col" adds bias[bias_off + n], "row" adds bias[bias_off + m].
reduce_batch=True sums the batch into one C instead: C = alpha * sum_z op(A_z) op(B_z) + beta * C
(conv dW over the images).

Two kernel families (kernels/gemm.cl): "gpu" (work-group tiles staged in local memory) and "cpu"
(wide per-work-item register tiles for PoCL-like CPU devices; with "LB" and 1 x LY work-groups of at
least lb_rows row blocks, the group's op(B) strip is copied to local memory once and read contiguously;
"skinny" tiles with SKINNY: small-M nn/tn products stream the big operand once). The family follows
the device kind unless the tuning data ("variant") or the caller (`variant=`) says otherwise; tile
sizes come from configs/tuning/*.json -> "gemm", overridable with `params=` (tests, `thomas tune`).

Tiles by problem size (shipped defaults, no tuning file needed): "gemm" -> "sizes" is a list of rules
{"name", "min_m", "min_n", "min_k", "min_mnk", "max_k", "tiles"}; the first whose thresholds one product
(M, N, K and M*N*K of one batch entry) meets replaces the tiles (size_rule): e.g. 128x128 tiles for
the H100's 4096^3 SGEMMs while the model-sized GEMMs keep 64x64. Precedence, lowest first: the
family's defaults < the merged tuning data (kind default, vendor, device, the device's tuning-file
winner) < the size rule < a per-shape entry ("shapes", written by `thomas tune`) < `params=` <
"skinny" (M <= skinny_m). A `params=` that names a GPU tile (any of MWG, NWG, KWG, MDIMC, NDIMC) runs
that tile: the tuning's "small" does not replace it (unless params names a "small" too). A rule's GPU
tile that does not fit the device (limits.py) is skipped with one warning line and the tiles below it run.

GPU family and scratch `work` (floats [work_off, work_off + work_floats) of a buffer): when the tiles
leave the device idle (fewer than min_groups work-groups; FC layers at batch 8, 1x1 convolutions on
7x7 maps) K is split over more work-groups writing partial products to `work`, summed in a fixed
order by gemm_reduce (deterministic, no atomics); reduce_batch sums the batch's products the same
way. Without (enough) work the launcher falls back to one launch per batch entry with beta = 1.
"""
from __future__ import annotations

from ...ops._cl import ACTS, FlexLocal, local_floats, row_local_size
from .limits import LaunchLimitError, warn_skipped

GPU_KEYS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC", "LPAD", "PF")
CPU_KEYS = ("TM", "TN", "VW", "DM", "DN", "SMR", "SWV", "SKC")
# the kernel file's own defaults, used when the tuning data has nothing for a forced family
GPU_DEFAULT = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "LPAD": 0, "PF": 0}
CPU_DEFAULT = {"TM": 6, "TN": 16, "VW": 8, "DM": 2, "DN": 4, "SMR": 8, "SWV": 64, "SKC": 8, "LX": 1, "LY": 32,
               "LB": 1}
# smaller GPU tiles, tried in order when the tuned one does not fit the device (limits.py): each keeps
# MWG/MDIMC and NWG/NDIMC multiples of 4 (the float4 path) and halves work-items or local memory.
# PF (K-slice pipelining, kernels/gemm.cl): 0 load-barrier-compute, 1 register prefetch of the next
# slice, 2 prefetch into a second local buffer (twice the local memory); bit-identical results.
# A PF tile that does not fit runs as the same tile with PF 0 first (gemm.fit_tiles).
GPU_FALLBACK = ({"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "LPAD": 0, "PF": 0},
                {"MWG": 32, "NWG": 32, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "LPAD": 0, "PF": 0},
                {"MWG": 32, "NWG": 32, "KWG": 8, "MDIMC": 4, "NDIMC": 4, "LPAD": 0, "PF": 0},
                {"MWG": 16, "NWG": 16, "KWG": 8, "MDIMC": 4, "NDIMC": 4, "LPAD": 0, "PF": 0},
                {"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4, "NDIMC": 4, "LPAD": 0, "PF": 0})
MAX_SPLIT = 64           # K parts per product at most
MIN_KCHUNK_SLICES = 4    # each part gets at least 4 K-slices (KWG each)
WORK_CAP = 1 << 22       # floats of partial products an op reserves at most (16 MiB)
_BIAS = {None: 0, "col": 1, "row": 2}            # bias_mode bits 0-1; ACTS (ops/_cl.py): bits 2-3


def shape_key(form: str, M: int, N: int, K: int, batch: int = 1, reduce_batch: bool = False) -> str:
    """How `thomas tune` names one GEMM shape: "nt 8x1000x1280", "+b32" batched, "+r32" batch-reduced."""
    return f"{form} {M}x{N}x{K}" + (f" {'r' if reduce_batch else 'b'}{batch}" if batch > 1 else "")


def parse_shape_key(key: str) -> tuple[str, int, int, int, int]:
    """shape_key's inverse: "nt 8x1000x1280 r32" -> ("nt", 8, 1000, 1280, 32)."""
    parts = key.split()
    M, N, K = (int(v) for v in parts[1].split("x"))
    return parts[0], M, N, K, int(parts[2][1:]) if len(parts) > 2 else 1


def size_rule(sizes, M: int, N: int, K: int) -> dict | None:
    """The first rule of `sizes` (tuning "gemm" -> "sizes") whose thresholds one M x N x K product
    meets, else None. A rule without thresholds matches every product.

        size_rule([{"min_m": 1024, "min_n": 1024, "min_mnk": 2**31, "tiles": {...}}], 4096, 4096, 4096)
        -> that rule;  (1024, 1024, 1024) -> None (M*N*K = 2^30)
    """
    for r in sizes if isinstance(sizes, list) else ():
        if not (isinstance(r, dict) and isinstance(r.get("tiles"), dict)):
            continue
        big = 1 << 62
        if M >= int(r.get("min_m", 0)) and N >= int(r.get("min_n", 0)) and K >= int(r.get("min_k", 0)) \
                and M * N * K >= int(r.get("min_mnk", 0)) and K <= int(r.get("max_k", big)):
            return r
    return None


def _sized(b, fam: str, out: dict, rule: dict, form: str | None) -> dict:
    """`out` with the rule's tiles, unless they are GPU tiles this device cannot launch (a warning)."""
    cand = dict(out, **rule["tiles"])
    if fam == "gpu" and form is not None and getattr(b, "rt", None) is not None:
        t = {k: int(cand[k]) for k in GPU_KEYS}
        why = tile_misfit(b, form, t)
        if why:
            warn_skipped(f"gemm size rule '{rule.get('name', 'sizes')}' " + tile_name(t), why)
            return out
    return cand


def gemm_config(b, variant: str | None = None, params: dict | None = None, M: int | None = None,
                shape: str | None = None, N: int | None = None, K: int | None = None,
                form: str | None = None) -> tuple[str, dict]:
    """(family, params) for this builder's device: tuning data, then with M, N, K given the first
    matching size rule (that fits the device when `form` is given), then the tiles `thomas tune` chose
    for this `shape` when it chose some, then the caller's overrides (a tile they name is not swapped
    for the tuning's "small" one); with M given, a "skinny" tile
    set replaces the tiles for M <= skinny_m (FC layers: M = batch), N >= skinny_min_n and
    K >= skinny_min_k (both 0 unless the tuning says otherwise)."""
    tun = dict(b.tuning("gemm"))
    fam = variant or tun.get("variant") or b.kind
    if fam not in ("gpu", "cpu"):
        raise ValueError(f"gemm variant must be 'gpu' or 'cpu', got {fam!r}")
    if variant is not None and variant != (tun.get("variant") or b.kind):
        tun = {}  # a forced family does not inherit the other family's tuning
    shapes = tun.pop("shapes", None)
    sizes = tun.pop("sizes", None)
    out = dict(GPU_DEFAULT if fam == "gpu" else CPU_DEFAULT)
    out.update(tun)
    rule = size_rule(sizes, M, N, K) if None not in (M, N, K) else None
    if rule is not None:
        out = _sized(b, fam, out, rule, form)
    if shape is not None and isinstance(shapes, dict) and isinstance(shapes.get(shape), dict):
        out.update(shapes[shape])
    out.update(params or {})
    if params and "small" not in params and any(k in params for k in GPU_KEYS[:5]):
        out.pop("small", None)   # the caller's tile runs (tests, benchmarks): no device's "small" in its place
    if M is not None and out.get("skinny") and M <= int(out.get("skinny_m", 8)) \
            and (N or 0) >= int(out.get("skinny_min_n", 0)) and (K or 0) >= int(out.get("skinny_min_k", 0)):
        out.update(out["skinny"])
        out.pop("small", None)
    return fam, out


def _units(b) -> int:
    rt = getattr(b, "rt", None)
    return int(rt.info.get("compute_units", 1)) if rt is not None else 1


def _gpu_tiles(p: dict, M: int, N: int, batch: int, min_groups: int) -> dict:
    """The big tile unless it leaves the device idle (fewer than min_groups work-groups) and the
    tuning names a "small" one (FC layers at batch 8, late 7x7 convolutions)."""
    tiles = {k: int(p[k]) for k in GPU_KEYS}
    small = p.get("small")
    if small and _groups(tiles, M, N, batch) < min_groups:
        tiles = {k: int(small.get(k, tiles[k])) for k in GPU_KEYS}
    return tiles


def tile_name(t: dict) -> str:
    """"64x64x16 on 16x16" (MWG x NWG x KWG on NDIMC x MDIMC work-items), " PF1" appended when PF is on."""
    pf = int(t.get("PF", 0))
    return "x".join(str(t[k]) for k in GPU_KEYS[:3]) + f" on {t['NDIMC']}x{t['MDIMC']}" + (f" PF{pf}" if pf else "")


def tile_misfit(b, form: str, t: dict) -> str:
    """Why GPU tile `t` cannot launch gemm_gpu_<form> on this device ("" when it can): a PF other
    than 0, 1, 2; its MDIMC x NDIMC work-items against the kernel's limits and max work-item sizes,
    its local tiles (4 * KWG * (MWG + NWG + 2 LPAD) bytes, twice that with PF 2, or what the driver
    reports) against the local memory. Device-level limits are checked before the kernel is built."""
    lim = b.rt.limits
    pf = int(t.get("PF", 0))
    if pf not in (0, 1, 2):
        return f"PF={pf} is not 0, 1 or 2"
    wg = t["MDIMC"] * t["NDIMC"]
    need = 4 * t["KWG"] * (t["MWG"] + t["NWG"] + 2 * t["LPAD"]) * (2 if pf == 2 else 1)
    if wg > lim.wg_cap():
        return f"{t['NDIMC']}x{t['MDIMC']} work-items > the device's {lim.wg_cap()}"
    if t["NDIMC"] > lim.item_sizes[0] or t["MDIMC"] > lim.item_sizes[1]:
        return f"{t['NDIMC']}x{t['MDIMC']} work-items > max work-item sizes {lim.item_sizes[:2]}"
    if need > lim.local_mem:
        return f"{need} bytes of local tiles > the device's {lim.local_mem}"
    kl = b.rt.kernel_limits("gemm.cl", f"gemm_gpu_{form}", _defines(b, "gpu", t))
    if wg > kl.wg:
        return f"{t['NDIMC']}x{t['MDIMC']} work-items > the kernel's limit of {kl.wg}"
    if kl.static_local > kl.local_mem:
        return f"{kl.static_local} bytes of local tiles > the device's {kl.local_mem}"
    return ""


def fit_tiles(b, form: str, t: dict) -> dict:
    """`t`, or (with PF on) the same tile without it, or the first GPU_FALLBACK tile that fits this
    device, with a warning naming the skipped tile and why (tuning data written for a bigger GPU is
    not an error on a smaller one)."""
    why = tile_misfit(b, form, t)
    if not why:
        return t
    name = "gemm " + tile_name(t)
    if int(t.get("PF", 0)) and not tile_misfit(b, form, dict(t, PF=0)):
        warn_skipped(name, why)
        return dict(t, PF=0)
    for cand in GPU_FALLBACK:
        if all(cand[k] <= t[k] for k in ("MWG", "NWG")) or cand is GPU_FALLBACK[-1]:
            if not tile_misfit(b, form, cand):
                warn_skipped(name, why)
                return dict(cand)
    raise LaunchLimitError(f"{name}: {why}, and no smaller GEMM tile fits this device")


def _groups(t: dict, M: int, N: int, batch: int) -> int:
    return -(-M // t["MWG"]) * -(-N // t["NWG"]) * batch


def _split(t: dict, M: int, N: int, K: int, batch: int, min_groups: int, room: int, need: bool) -> int:
    """K parts per product: enough work-groups to fill the device, each part at least
    MIN_KCHUNK_SLICES K-slices long, all partials (batch * parts * M * N floats) fitting in `room`.
    0 = does not fit (only when `need`, i.e. a batch reduction that must go through `work`)."""
    groups = _groups(t, M, N, batch)
    s = max(1, min(MAX_SPLIT, -(-min_groups // groups), K // (MIN_KCHUNK_SLICES * t["KWG"])))
    while s > 1 and batch * s * M * N > room:
        s -= 1
    if need and batch * s * M * N > room:
        return 0
    return s


def split_floats(M: int, N: int, K: int, batch: int = 1, reduce_batch: bool = False) -> int:
    """Scratch floats an op should reserve for gemm(..., work=) of this shape: room for the K split
    a large GPU wants (estimated with 64x64 tiles and 512 work-groups), and for the batch's partial
    products when reduce_batch; capped at WORK_CAP (a smaller `work` only means less splitting)."""
    tiles = -(-M // 64) * -(-N // 64) * batch
    s = max(1, min(MAX_SPLIT, -(-512 // tiles), K // (MIN_KCHUNK_SLICES * 16)))
    if s == 1 and not reduce_batch:
        return 0
    return min(WORK_CAP, max(s * batch * M * N, batch * M * N if reduce_batch else 0))


def _scoped(b, label):
    class _Label:
        def __enter__(self):
            self.old = b.label
            b.label = label or self.old or "gemm"

        def __exit__(self, *exc):
            b.label = self.old
    return _Label()


def gemm(b, ta: bool, tb: bool, M: int, N: int, K: int, A, a_off: int, lda: int, B, b_off: int, ldb: int,
         C, c_off: int, ldc: int, alpha: float = 1.0, beta: float = 0.0, batch: int = 1,
         stride_a: int = 0, stride_b: int = 0, stride_c: int = 0, label: str | None = None, *,
         bias=None, bias_off: int = 0, bias_mode: str | None = None, reduce_batch: bool = False,
         work=None, work_off: int = 0, work_floats: int = 0, act: str | None = None,
         variant: str | None = None, params: dict | None = None) -> list:
    """Record the launches of one GEMM on builder `b`; returns them (none when M, N or batch is 0).
    act "relu" / "relu6": applied to C after the bias (with beta, to the final C only)."""
    M, N, K, batch = int(M), int(N), int(K), int(batch)
    if min(M, N, batch) <= 0:
        return []
    # NOTE: a wrong leading dimension reads a neighbour's data silently, so check it once, here.
    if lda < (M if ta else K) or ldb < (K if tb else N) or ldc < N:
        raise ValueError(f"gemm {'t' if ta else 'n'}{'t' if tb else 'n'} M={M} N={N} K={K}: "
                         f"leading dimensions lda={lda} ldb={ldb} ldc={ldc} too small")
    if (bias is None) != (bias_mode is None):
        raise ValueError("gemm: bias and bias_mode go together")
    form = ("t" if ta else "n") + ("t" if tb else "n")
    key = shape_key(form, M, N, K, batch, reduce_batch)
    launches = _gemm(b, ta, tb, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta, batch,
                     stride_a, stride_b, stride_c, label, bias, bias_off, bias_mode, reduce_batch, work, work_off,
                     work_floats, act, variant, params, key)
    for ln in launches:
        ln.tag = ln.tag or key
    return launches


def _gemm(b, ta, tb, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta, batch, stride_a, stride_b,
          stride_c, label, bias, bias_off, bias_mode, reduce_batch, work, work_off, work_floats, act, variant, params,
          key):
    form = ("t" if ta else "n") + ("t" if tb else "n")
    fam, p = gemm_config(b, variant, params, M, shape=key, N=N, K=K, form=form)
    flops = 2 * M * N * K * batch
    bias_buf = bias if bias is not None else C
    mode = _BIAS[bias_mode] | ACTS[act] << 2
    with _scoped(b, label or f"gemm_{form}"):
        if fam == "cpu":
            if reduce_batch:  # one product at a time, accumulating (beta = 1 after the first)
                return [_launch_cpu(b, form, p, M, N, K, A, a_off + z * stride_a, lda, B, b_off + z * stride_b,
                                    ldb, C, c_off, ldc, alpha, beta if z == 0 else 1.0, 1, 0, 0, 0,
                                    bias_buf if z == batch - 1 else C, bias_off,
                                    mode if z == batch - 1 else 0)
                        for z in range(batch)]
            return [_launch_cpu(b, form, p, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta,
                                batch, stride_a, stride_b, stride_c, bias_buf, bias_off, mode)]
        min_groups = int(p.get("min_groups", 2 * _units(b)))
        t = fit_tiles(b, form, _gpu_tiles(p, M, N, batch, min_groups))
        room = work_floats if work is not None else 0
        s = _split(t, M, N, K, batch, min_groups, room, need=reduce_batch)
        if reduce_batch and s == 0:
            # no room for all the batch's partials: reduce as many entries at a time as fit (beta = 1
            # after the first chunk), or, with room for fewer than two, launch by launch
            per = max(1, room // (M * N)) if room >= 2 * M * N else 1
            out = []
            for z0 in range(0, batch, per):
                zc, last = min(per, batch - z0), z0 + per >= batch
                out += gemm(b, ta, tb, M, N, K, A, a_off + z0 * stride_a, lda, B, b_off + z0 * stride_b, ldb, C,
                            c_off, ldc, alpha, beta if z0 == 0 else 1.0, zc, stride_a, stride_b, 0, label=label,
                            bias=bias if last else None, bias_off=bias_off, bias_mode=bias_mode if last else None,
                            reduce_batch=zc > 1, work=work, work_off=work_off, work_floats=work_floats,
                            act=act if last else None, variant=variant, params=params)
            return out
        if s == 1 and not reduce_batch:
            return [_launch_gpu(b, form, t, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta,
                                batch, stride_a, stride_b, stride_c, bias_buf, bias_off, mode, 1, K, flops)]
        # partial products into work (packed M x N each), then one reduction
        kchunk = -(-K // s)
        kchunk = -(-kchunk // t["KWG"]) * t["KWG"]          # whole K-slices: keeps the float4 path aligned
        s = -(-K // kchunk) if K else 1
        parts = _launch_gpu(b, form, t, M, N, K, A, a_off, lda, B, b_off, ldb, work, work_off, N, 1.0, 0.0,
                            batch * s, stride_a, stride_b, M * N, C, 0, 0, s, kchunk, flops)
        outs, per = (1, batch * s) if reduce_batch else (batch, s)
        red = b.launch("gemm.cl", "gemm_reduce", (N, M, outs), row_local_size(b), work, work_off, per, M, N, C,
                       c_off, ldc,
                       stride_c, float(alpha), float(beta), bias_buf, bias_off, mode,
                       defines=_defines(b, fam, t), flops=M * N * batch * s)
        return [parts, red]


# the CPU family's kernels by form: (register tiles, skinny, register tiles with op(B) staged in local memory)
CPU_KERNELS = {"nn": ("gemm_cpu_nn", "gemm_cpu_sm_nn", "gemm_cpu_nn_lb"),
               "tn": ("gemm_cpu_tn", "gemm_cpu_sm_tn", "gemm_cpu_tn_lb"),
               "tt": ("gemm_cpu_tt", None, "gemm_cpu_tt_lb"),
               "nt": ("gemm_cpu_nt", None, None)}


def _launch_cpu(b, form, p, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta, batch,
                stride_a, stride_b, stride_c, bias, bias_off, bias_mode):
    defines = _defines(b, "cpu", p)
    kernel = CPU_KERNELS[form][0]
    if form == "nt":
        gsize = (-(-N // defines["DN"]), -(-M // defines["DM"]), batch)
    elif p.get("SKINNY") and form in ("nn", "tn"):   # all M rows per work-item ("skinny" tiles, M <= skinny_m)
        kernel = CPU_KERNELS[form][1]
        gsize = (-(-N // (defines["SWV"] * defines["VW"])), 1, batch)
    else:
        gsize = (-(-N // defines["TN"]), -(-M // defines["TM"]), batch)
    lsize, extra = None, ()
    if kernel == CPU_KERNELS[form][1]:
        lsize = FlexLocal((1, 1, 1))      # a work-item is a whole SW-column strip already
    elif p.get("LX") and p.get("LY"):     # rows of a work-group clamped to the rows there are
        lsize = (int(p["LX"]), max(1, min(int(p["LY"]), gsize[1])), 1)
        strip = 4 * K * defines["TN"]
        if form != "nt" and lsize[0] == 1 and p.get("LB") and K >= 16 and lsize[1] >= int(p.get("lb_rows", 8)) \
                and strip <= min(int(p.get("lb_bytes", 1 << 19)), b.rt.limits.local_mem // 2):
            # the group's B strip staged in local memory, once for at least lb_rows row blocks
            kernel = CPU_KERNELS[form][2]
            extra = (local_floats(K * defines["TN"]),)
            lsize = _fit_lb(b, kernel, defines, lsize)
        else:
            lsize = FlexLocal(lsize)
    return b.launch("gemm.cl", kernel, gsize, lsize, M, N, K, A, a_off, lda, B, b_off, ldb,
                    C, c_off, ldc, float(alpha), float(beta), stride_a, stride_b, stride_c, bias, bias_off,
                    bias_mode, *extra, defines=defines, flops=2 * M * N * K * batch)


def _fit_lb(b, kernel: str, defines: dict, lsize: tuple) -> tuple:
    """A 1 x LY work-group the local-B kernel can launch with (its barrier needs a fixed group):
    LY halved until the kernel's and the device's work-group limits allow it."""
    kl = b.rt.kernel_limits("gemm.cl", kernel, defines)
    ly = lsize[1]
    while ly > 1 and (ly > kl.wg or ly > b.rt.limits.item_sizes[1]):
        ly //= 2
    return (1, ly, 1)


def _launch_gpu(b, form, t, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta, groups_z,
                stride_a, stride_b, stride_c, bias, bias_off, bias_mode, ksplit, kchunk, flops):
    # float4 loads/stores need 16-byte aligned rows in every batch entry and K part (kchunk is whole
    # K-slices); bit 1: A, 2: B, 4: C
    aligned = int(a_off % 4 == 0 and lda % 4 == 0 and stride_a % 4 == 0) \
        | 2 * int(b_off % 4 == 0 and ldb % 4 == 0 and stride_b % 4 == 0) \
        | 4 * int(c_off % 4 == 0 and ldc % 4 == 0 and stride_c % 4 == 0)
    lsize = (t["NDIMC"], t["MDIMC"], 1)
    gsize = (-(-N // t["NWG"]) * t["NDIMC"], -(-M // t["MWG"]) * t["MDIMC"], groups_z)
    return b.launch("gemm.cl", f"gemm_gpu_{form}", gsize, lsize, M, N, K, A, a_off, lda, B, b_off, ldb,
                    C, c_off, ldc, float(alpha), float(beta), stride_a, stride_b, stride_c, bias, bias_off,
                    bias_mode, aligned, ksplit, kchunk, defines=_defines(b, "gpu", t), flops=flops)


def _defines(b, fam: str, p: dict) -> dict:
    if fam == "gpu":
        d = {k: int(p[k] if k != "PF" else p.get(k, 0)) for k in GPU_KEYS}
        if not d["PF"]:
            del d["PF"]      # PF 0 is the kernel file's default: the same build (and cache key) as before PF
        d["FAMILY"] = 1
        if b.rt.info["kind"] == "cpu":   # the real device (a profile makes b.kind "gpu" on PoCL)
            d["KUNROLL"] = 0  # a GPU-shaped build on a CPU device is a correctness check: build it fast
        return d
    d = {k: int(p[k]) for k in CPU_KEYS}
    d["FAMILY"] = 2
    return d


def colsum(b, g, s, rows: int, cols: int, label: str | None = None):
    """g (rows, cols) -> s (cols,) = g.sum(axis=0), deterministic (the FC bias gradient)."""
    fam, p = gemm_config(b)
    if fam == "gpu":
        p = {k: int(p[k]) for k in GPU_KEYS}
    with _scoped(b, label or "colsum"):  # built into the device's GEMM program: no extra build
        return b.launch("gemm.cl", "colsum", (cols,), row_local_size(b)[:1], g, s, rows, cols,
                        defines=_defines(b, fam, p), flops=rows * cols)
