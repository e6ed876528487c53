"""GEMM launcher over kernels/gemm.cl: row-major, element offsets, batched by strides.

    gemm(b, False, True, n, m, f, x, 0, f, w, 0, f, y, 0, m)      # y (n,m) = x (n,f) @ w (m,f)^T

C[M,N] = alpha * op(A) @ op(B) + beta * C (+ bias) for each z < batch, op(A) = A (M,K) or A^T (A
stored (K,M)); op(B) = B (K,N) or B^T (B stored (N,K)); matrix z of A starts at a_off + z*stride_a.
beta == 0 never reads C. bias_mode "col" adds bias[bias_off + n], "row" adds bias[bias_off + m].

Two kernel families (kernels/gemm.cl): "gpu" (work-group tiles staged in local memory) and "cpu"
(wide per-work-item register tiles, no local memory, for PoCL-like CPU devices). The family follows
the device kind unless the tuning data ("variant") or the caller (`variant=`) says otherwise; tile
sizes come from configs/tuning/*.json -> "gemm", overridable with `params=` (tests, `thomas tune`).
"""
from __future__ import annotations

GPU_KEYS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC")
CPU_KEYS = ("TM", "TN", "VW", "DM", "DN")
# the kernel file's own defaults, used when the tuning data has nothing for a forced family
GPU_DEFAULT = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8}
CPU_DEFAULT = {"TM": 6, "TN": 16, "VW": 8, "DM": 2, "DN": 4, "LX": 4, "LY": 4}
_BIAS = {None: 0, "col": 1, "row": 2}


def gemm_config(b, variant: str | None = None, params: dict | None = None) -> tuple[str, dict]:
    """(family, params) for this builder's device: tuning data, then the caller's overrides."""
    tun = dict(b.tuning("gemm"))
    fam = variant or tun.get("variant") or b.kind
    if fam not in ("gpu", "cpu"):
        raise ValueError(f"gemm variant must be 'gpu' or 'cpu', got {fam!r}")
    if variant is not None and variant != (tun.get("variant") or b.kind):
        tun = {}  # a forced family does not inherit the other family's tuning
    out = dict(GPU_DEFAULT if fam == "gpu" else CPU_DEFAULT)
    out.update(tun)
    out.update(params or {})
    return fam, out


def _gpu_tiles(p: dict, M: int, N: int, batch: int, units: int) -> dict:
    """The big tile unless it leaves the device idle (fewer than min_groups work-groups) and the
    tuning names a "small" one (FC layers at batch 8, late 7x7 convolutions)."""
    tiles = {k: int(p[k]) for k in GPU_KEYS}
    small = p.get("small")
    if small:
        groups = -(-M // tiles["MWG"]) * -(-N // tiles["NWG"]) * batch
        if groups < int(p.get("min_groups", 2 * units)):
            tiles = {k: int(small.get(k, tiles[k])) for k in GPU_KEYS}
    return tiles


def gemm(b, ta: bool, tb: bool, M: int, N: int, K: int, A, a_off: int, lda: int, B, b_off: int, ldb: int,
         C, c_off: int, ldc: int, alpha: float = 1.0, beta: float = 0.0, batch: int = 1,
         stride_a: int = 0, stride_b: int = 0, stride_c: int = 0, label: str | None = None, *,
         bias=None, bias_off: int = 0, bias_mode: str | None = None,
         variant: str | None = None, params: dict | None = None):
    """Record one GEMM launch on builder `b`; returns the Launch (None when M, N or batch is 0)."""
    M, N, K, batch = int(M), int(N), int(K), int(batch)
    if min(M, N, batch) <= 0:
        return None
    # NOTE: a wrong leading dimension reads a neighbour's data silently, so check it once, here.
    if lda < (M if ta else K) or ldb < (K if tb else N) or ldc < N:
        raise ValueError(f"gemm {'t' if ta else 'n'}{'t' if tb else 'n'} M={M} N={N} K={K}: "
                         f"leading dimensions lda={lda} ldb={ldb} ldc={ldc} too small")
    if (bias is None) != (bias_mode is None):
        raise ValueError("gemm: bias and bias_mode go together")
    fam, p = gemm_config(b, variant, params)
    form = ("t" if ta else "n") + ("t" if tb else "n")
    args = [M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, float(alpha), float(beta),
            stride_a, stride_b, stride_c, bias if bias is not None else C, bias_off, _BIAS[bias_mode]]
    if fam == "gpu":
        units = int(b.rt.info.get("compute_units", 1)) if hasattr(b, "rt") else 1
        t = _gpu_tiles(p, M, N, batch, units)
        aligned = int(a_off % 4 == 0 and lda % 4 == 0 and stride_a % 4 == 0) \
            | 2 * int(b_off % 4 == 0 and ldb % 4 == 0 and stride_b % 4 == 0)
        defines = _defines(b, fam, t)
        lsize = (t["NDIMC"], t["MDIMC"], 1)
        gsize = (-(-N // t["NWG"]) * t["NDIMC"], -(-M // t["MWG"]) * t["MDIMC"], batch)
        args.append(aligned)
    else:
        defines = _defines(b, fam, p)
        if form == "nt":
            gsize = (-(-N // defines["DN"]), -(-M // defines["DM"]), batch)
        else:
            gsize = (-(-N // defines["TN"]), -(-M // defines["TM"]), batch)
        lsize = None
        if p.get("LX") and p.get("LY"):
            lsize = (int(p["LX"]), int(p["LY"]), 1)
    old = b.label
    b.label = label or old or f"gemm_{form}"
    try:
        return b.launch("gemm.cl", f"gemm_{fam}_{form}", gsize, lsize, *args, defines=defines,
                        flops=2 * M * N * K * batch)
    finally:
        b.label = old


def _defines(b, fam: str, p: dict) -> dict:
    if fam == "gpu":
        d = {k: int(p[k]) for k in GPU_KEYS}
        d["FAMILY"] = 1
        if b.kind == "cpu":
            d["KUNROLL"] = 0  # a GPU-shaped build on a CPU device is a correctness check: build it fast
        return d
    d = {k: int(p[k]) for k in CPU_KEYS}
    d["FAMILY"] = 2
    return d


def colsum(b, g, s, rows: int, cols: int, label: str | None = None):
    """g (rows, cols) -> s (cols,) = g.sum(axis=0), deterministic (the FC bias gradient)."""
    fam, p = gemm_config(b)
    old = b.label
    b.label = label or old or "colsum"
    try:  # built into the device's GEMM program: no extra build
        return b.launch("gemm.cl", "colsum", (cols,), None, g, s, rows, cols, defines=_defines(b, fam, p),
                        flops=rows * cols)
    finally:
        b.label = old
