"""GPU-shaped GEMM with K-slice pipelining (tile key PF, kernels/gemm.cl): PF 1 reads slice k+1 into
registers while slice k is computed, PF 2 also double-buffers the local tiles. Local memory ends up
holding the same values at the same places and every accumulator runs the same fma chain, so each
PF tile must match numpy AND be bit-identical to PF 0 with the same tiles, on every path: the four
forms over partial tiles, batched strides and offsets, alpha/beta, bias, activations, split-K and
batch reductions, K = 0; a PF tile that cannot run is skipped with one warning (the same tile with PF 0
runs), and PF tiles run under the capped phone profiles. Every output buffer is NaN before the launch
(run_gemm of test_cl_gemm_conv)."""
from __future__ import annotations

import numpy as np
import pytest

import clcheck
from clcheck import needs_cl
from test_cl_gemm_conv import FORMS, SIZES, check, run_gemm
from test_cl_limits import PROFILES, TINY

pytestmark = needs_cl

# 1 float4 of each operand per work-item and K-slice; 2 of each; a non-square tile whose A slice
# (16 float4s) is smaller than its 32 work-items (the guarded register loop); the 8x8 work-item tile
# with 4 float4s of each per work-item.
T16 = {"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4, "NDIMC": 4}
T16K8 = dict(T16, KWG=8)
ODD = {"MWG": 16, "NWG": 32, "KWG": 4, "MDIMC": 4, "NDIMC": 8}
T64 = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8}
TILES = {"16x16k4": T16, "16x16k8": T16K8, "16x32k4": ODD, "64x64k16": T64}
PFS = (1, 2)


def run_aligned(form, M, N, K, variant, params, *, batch=2, beta=0.0, seed=0, work_floats=0):
    """gemm() with every row, offset and batch stride a multiple of 4 floats (run_gemm's odd strides
    never set the kernel's `aligned` bits): the float4 loads and stores; returns (got, want), (batch, M, N)"""
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay

    rt, rng = clcheck.runtime(), np.random.default_rng(seed)
    ta, tb = form[0] == "t", form[1] == "t"
    (ar, ac), (br, bc) = (K, M) if ta else (M, K), (N, K) if tb else (K, N)
    r4 = lambda v: -(-v // 4) * 4  # noqa: E731
    lda, ldb, ldc = r4(ac) + 4, r4(bc), r4(N)
    sa, sb, sc = ar * lda + 4, br * ldb + 8, M * ldc + 4
    A, B = (rng.standard_normal(n).astype(np.float32) for n in (4 + sa * batch, 8 + sb * batch))
    C0 = rng.standard_normal(12 + sc * batch).astype(np.float32)
    tA, tB = clcheck.upload(rt, "A", A), clcheck.upload(rt, "B", B)
    tC = clcheck.upload(rt, "C", C0 if beta else np.full_like(C0, np.nan))
    work = clcheck.upload(rt, "work", np.full(work_floats + 8, np.nan, np.float32)) if work_floats else None
    b = LaunchBuilder(rt)
    lns = gemm(b, ta, tb, M, N, K, tA, 4, lda, tB, 8, ldb, tC, 12, ldc, 1.0, beta, batch, sa, sb, sc,
               work=work, work_off=8, work_floats=work_floats, variant=variant, params=params)
    assert lns[0].args[20] == 7, "not the float4 paths"
    replay(rt.queue, b.launches)
    out = clcheck.download(rt, tC)
    mat = lambda v, o, r, ld, c: v[o:][:r * ld].reshape(r, ld)[:, :c].astype(np.float64)  # noqa: E731
    got, want = [], []
    for z in range(batch):
        a, bm = mat(A, 4 + z * sa, ar, lda, ac), mat(B, 8 + z * sb, br, ldb, bc)
        want.append((a.T if ta else a) @ (bm.T if tb else bm) + beta * mat(C0, 12 + z * sc, M, ldc, N))
        got.append(mat(out, 12 + z * sc, M, ldc, N).astype(np.float32))
    return np.stack(got), np.stack(want)


def same_as_pf0(form, M, N, K, tiles, runner=run_gemm, **kw):
    """runner (run_gemm) with PF 0, 1, 2 on the same inputs: PF 0 against numpy, the others bit for bit
    against it"""
    got0, want = runner(form, M, N, K, "gpu", dict(tiles, PF=0), **kw)
    check(got0, want, K * (kw.get("batch", 1) if kw.get("reduce_batch") else 1))
    for pf in PFS:
        got, _ = runner(form, M, N, K, "gpu", dict(tiles, PF=pf), **kw)
        assert not np.isnan(got).any(), f"PF={pf}: unwritten output (NaN)"
        if not np.array_equal(got, got0):
            bad = np.argwhere(got != got0)
            raise AssertionError(f"PF={pf} {form} {M}x{N}x{K} {kw}: {len(bad)} elements differ from PF=0, "
                                 f"first at {tuple(bad[0])}: {got[tuple(bad[0])]} vs {got0[tuple(bad[0])]}")


def spy_defines(monkeypatch) -> list[dict]:
    """The defines of every gemm_gpu_* launch recorded from now on."""
    from device_agent.backends.opencl.runtime import LaunchBuilder

    seen, orig = [], LaunchBuilder.launch

    def spy(self, file, kernel, *a, **kw):
        if kernel.startswith("gemm_gpu_"):
            seen.append(dict(kw.get("defines") or {}))
        return orig(self, file, kernel, *a, **kw)

    monkeypatch.setattr(LaunchBuilder, "launch", spy)
    return seen


@pytest.mark.parametrize("tile", ["16x16k4", "16x32k4"])
@pytest.mark.parametrize("form", FORMS)
def test_pf_grid(form, tile):
    """every M, N, K in SIZES: partial tiles in M, N and K (K = 1, 3, 17, 129: a partial last slice;
    64: whole slices and the float4 fast path); beta = 0 with C full of NaN"""
    for M in SIZES:
        for N in SIZES:
            for K in SIZES:
                same_as_pf0(form, M, N, K, TILES[tile], seed=M * 7 + N * 3 + K)


@pytest.mark.parametrize("form", FORMS)
def test_pf_more_float4s_per_work_item(form):
    """2 and 4 float4s of each operand per work-item and slice (KWG 8 on 16 work-items, the 64x64 tile
    of 8x8 work-items with KWG 16), several slices, partial and whole tiles"""
    for (M, N, K) in [(17, 33, 129), (64, 64, 64), (3, 129, 40)]:
        same_as_pf0(form, M, N, K, T16K8, seed=M + N + K)
    for (M, N, K) in [(128, 128, 128), (129, 70, 200), (64, 1, 33), (5, 131, 64)]:
        same_as_pf0(form, M, N, K, T64, seed=M + N + K)


@pytest.mark.parametrize("form", FORMS)
def test_pf_float4_paths(form):
    """aligned rows, offsets and batch strides: whole slices read as float4s, a partial last K-slice
    (K = 129, 70) element by element; split-K parts each start on a whole slice"""
    for tiles in (T16, ODD, T16K8):
        for (M, N, K) in [(64, 64, 64), (17, 33, 129), (32, 48, 70), (3, 5, 8)]:
            same_as_pf0(form, M, N, K, tiles, runner=run_aligned, seed=M + N + K)
    same_as_pf0(form, 128, 128, 128, T64, runner=run_aligned, batch=1, beta=0.5)
    same_as_pf0(form, 16, 20, 130, dict(T16, min_groups=64), runner=run_aligned, work_floats=64 * 2 * 16 * 20)


@pytest.mark.parametrize("form", FORMS)
def test_pf_batched_offsets_alpha_beta_bias(form):
    """padded leading dimensions, element offsets, odd batch strides, alpha, beta, both bias modes"""
    for (M, N, K), pad, offs, alpha, beta, bias in [
        ((17, 64, 3), (1, 2, 3), (1, 2, 3), 0.5, 0.0, None),
        ((64, 17, 129), (0, 4, 0), (4, 0, 8), 1.0, 1.5, "col"),
        ((3, 129, 64), (3, 0, 1), (0, 5, 0), -2.0, 1.0, "row"),
        ((64, 64, 64), (4, 4, 4), (4, 8, 4), 1.0, 0.0, "row"),     # aligned: the float4 paths
    ]:
        for tiles in (T16, ODD):
            same_as_pf0(form, M, N, K, tiles, alpha=alpha, beta=beta, batch=3, pad=pad, offs=offs,
                        bias_mode=bias)


@pytest.mark.parametrize("form", FORMS)
def test_pf_split_k_and_batch_reduction(form):
    """K split over work-groups (each part starts its prefetch at its own kbeg), then the fixed-order
    reduction; and the batch summed into one C through the same partials"""
    split = dict(T16, min_groups=64)
    for (M, N, K), batch, beta, bias in [((3, 17, 129), 1, 0.0, "col"), ((17, 5, 64), 2, 1.5, "row"),
                                         ((1, 1, 129), 3, 0.0, None)]:
        same_as_pf0(form, M, N, K, split, batch=batch, beta=beta, bias_mode=bias,
                    work_floats=64 * batch * M * N, expect_launches=2)
    same_as_pf0(form, 17, 5, 64, split, batch=3, bias_mode="row", reduce_batch=True, work_floats=10_000,
                expect_launches=2)
    same_as_pf0(form, 17, 5, 64, split, batch=3, beta=0.5, bias_mode="col", reduce_batch=True,
                work_floats=2 * 17 * 5, expect_launches=4)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_pf_epilogue_activation(act):
    for form in FORMS:
        for (M, N, K), beta, bias in [((17, 64, 129), 0.0, "row"), ((64, 17, 33), 1.5, "col")]:
            same_as_pf0(form, M, N, K, T16, beta=beta, batch=2, bias_mode=bias, act=act)


def test_pf_k_zero():
    """K = 0 (no slice to prefetch): C = beta * C + bias"""
    for form in FORMS:
        same_as_pf0(form, 5, 19, 0, T16, beta=0.5, bias_mode="col")


def test_pf_reaches_the_kernel_and_pf0_builds_as_before(monkeypatch):
    """PF 1/2 are passed as a define; PF 0 passes none (the kernel's own default: the same program
    and cache key as before PF existed)"""
    seen = spy_defines(monkeypatch)
    for pf in (0, 1, 2):
        run_gemm("nn", 17, 17, 17, "gpu", dict(T16, PF=pf))
    assert "PF" not in seen[0] and seen[1]["PF"] == 1 and seen[2]["PF"] == 2, seen


def test_an_invalid_pf_is_skipped_with_one_warning(monkeypatch, capsys):
    """PF 3 is no kernel: one warning line naming it, then the same tile with PF 0 runs (right results)"""
    from device_agent.backends.opencl import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    b = LaunchBuilder(clcheck.runtime())
    assert gemm.tile_misfit(b, "nn", dict(T16, LPAD=0, PF=3)) == "PF=3 is not 0, 1 or 2"
    assert gemm.tile_misfit(b, "nn", dict(T16, LPAD=0, PF=2)) == ""
    seen = spy_defines(monkeypatch)
    for _ in range(2):
        got, want = run_gemm("tn", 17, 33, 65, "gpu", dict(T16, PF=3))
        check(got, want, 65)
    assert all("PF" not in d and d["MWG"] == 16 and d["KWG"] == 4 for d in seen), seen
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["thomas: warning: tuning gemm 16x16x4 on 4x4 PF3 skipped (PF=3 is not 0, 1 or 2); "
                   "using a smaller one"], err


@pytest.fixture
def profiled(request, monkeypatch):
    profile = TINY if request.param == "tiny" else request.param
    yield from clcheck.profiled_runtime(profile, monkeypatch)


@pytest.mark.parametrize("profiled", ["powervr"], indirect=True)
def test_pf2_over_the_local_memory_runs_the_tile_without_it(profiled, monkeypatch, capsys):
    """PowerVR's 4 KB of local memory holds a 32x16 tile's K-slices of 16 (3 KB) once, not twice (PF 2):
    PF 2 is skipped with a warning naming the bytes and the same tile runs with PF 0; PF 1 (no extra
    local memory) runs as asked. (3 KB, not a whole 4 KB: NVIDIA's driver adds bytes of its own to a
    kernel's local memory, so a tile of exactly 4 KB falls back to a smaller one there.)"""
    from device_agent.backends.opencl import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    t = {"MWG": 32, "NWG": 16, "KWG": 16, "MDIMC": 8, "NDIMC": 4, "LPAD": 0}
    b = LaunchBuilder(profiled)
    assert gemm.tile_misfit(b, "nn", dict(t, PF=2)) == "6144 bytes of local tiles > the device's 4096"
    assert gemm.tile_misfit(b, "nt", dict(t, PF=0)) == ""
    seen = spy_defines(monkeypatch)
    for pf in (2, 1):
        got, want = run_gemm("nt", 40, 33, 70, "gpu", dict(t, PF=pf))
        check(got, want, 70)
    assert [(d["MWG"], d["NWG"], d["KWG"], d.get("PF", 0)) for d in seen] == [(32, 16, 16, 0), (32, 16, 16, 1)], seen
    err = capsys.readouterr().err
    assert "tuning gemm 32x16x16 on 4x8 PF2 skipped (6144 bytes of local tiles > the device's 4096)" in err


@pytest.mark.parametrize("profiled", PROFILES + ["tiny"], indirect=True)
def test_pf_under_the_phone_profiles(profiled, monkeypatch):
    """the 16x16 tile (16 work-items, 512 B of local tiles, 1 KB with PF 2: fits even `tiny`) with PF on,
    bit-identical to PF 0 under each profile's capped limits, and PF really ran"""
    from device_agent.backends.opencl import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    # PF 2 doubles the local tiles: `tiny`'s 1 KB holds them where the driver reports the bare 1 KB
    # (PoCL), not where it adds its own bytes (NVIDIA: 1040), and then PF 0 must run in its place
    b = LaunchBuilder(profiled)
    fits = {pf for pf in (1, 2) if all(not gemm.tile_misfit(b, f, dict(T16, LPAD=0, PF=pf)) for f in FORMS)}
    assert 1 in fits
    seen = spy_defines(monkeypatch)
    for form in FORMS:
        same_as_pf0(form, 17, 33, 70, T16, beta=0.5, bias_mode="row")
    assert {d.get("PF", 0) for d in seen} == {0} | fits, seen


def test_gemm_sweep_runs_and_checks_what_it_times(tmp_path):
    """benchmarks/gemm_sweep.py (the H100 SGEMM sweep) on the test device: every set timed and checked
    against numpy, PF 1 bit-identical to PF 0 of the same tile, a PF the kernel lacks listed as skipped;
    a bad --params is one line and a non-zero exit"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gemm_sweep.py"
    t = dict(T16, PF=0)
    out = tmp_path / "sweep.json"
    r = subprocess.run([sys.executable, str(script), "--square", "64", "--forms", "nn,tt", "--reps", "1",
                        "--params", json.dumps([t, dict(t, PF=1), dict(t, PF=7)]), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["form"], x["params"]["PF"]) for x in rows] == [("nn", 0), ("nn", 1), ("nn", 7),
                                                               ("tt", 0), ("tt", 1), ("tt", 7)]
    for x in rows:
        if x["params"]["PF"] == 7:
            assert x["skipped"] == "PF=7 is not 0, 1 or 2" and "gflops" not in x
        else:
            assert x["gflops"] > 0 and x["max_err"] < 1e-5, x
            assert x.get("same_as_pf0") is (True if x["params"]["PF"] else None), x
    assert "| 64 | tt | 16x16x4 on 4x4 PF1 |" in r.stdout
    bad = subprocess.run([sys.executable, str(script), "--square", "64", "--params", "{"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
