"""SGEMM tile sweep: GFLOP/s of the GPU-shaped GEMM (kernels/gemm.cl) per tile set, PF included, on
square products, beside torch.matmul on CUDA (TF32 off) measured in the same process.

    THOMAS_CL_DEVICE=nvidia python3 benchmarks/gemm_sweep.py --square 2048,4096 --forms nn,nt,tn \
        [--params '[{"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16, "PF": 1}, ...]'] \
        [--torch-cuda] [--reps 5] [--out F.json]
    python3 benchmarks/gemm_sweep.py --square 256 --params '[{"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4,
        "NDIMC": 4, "PF": 0}, {"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4, "NDIMC": 4, "PF": 1}]'   # PoCL

Each tile set runs through the gemm() launcher (family "gpu", the set's keys over GPU_DEFAULT, no
"small" tile, no split-K: exactly the tile named); a set this device cannot launch (gemm.tile_misfit)
is listed as skipped, not timed as a fallback. Per shape, every set and torch get one warm-up and a
run count lasting ~50 ms (benchmarks/ops.py), then `--reps` rounds in which the sets alternate (order
rotated each round), so clock and load drift hit them alike; the median per set is reported. C of
every set is checked against numpy (float64) and, for sets that differ from another only in PF,
bit for bit against PF 0 of the same tile (the kernel promises identical results).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from ops import SAMPLE_S, run_torch_cuda  # noqa: E402   benchmarks/ops.py

_T = {"MDIMC": 16, "NDIMC": 16}
# the shipped 64x64 and 128x128 tiles on 16x16 work-items, KWG 16 and 32, and 128x64; PF 0 / 1 / 2 each
DEFAULT_PARAMS = [dict(_T, MWG=m, NWG=n, KWG=k, PF=pf) for m, n, k in
                  ((64, 64, 16), (128, 128, 16), (64, 64, 32), (128, 128, 32), (128, 64, 16))
                  for pf in (0, 1, 2)] + [dict(_T, MWG=128, NWG=128, KWG=16, LPAD=4, PF=1)]


def tile_label(t: dict) -> str:
    extra = "".join(f" {k}{t[k]}" for k in ("LPAD",) if t.get(k))
    return f"{t['MWG']}x{t['NWG']}x{t['KWG']} on {t['NDIMC']}x{t['MDIMC']}{extra} PF{t.get('PF', 0)}"


def rounds(fns: list, sync, reps: int) -> list[float]:
    """median seconds of one call of each fn: warm-up, a run count of ~SAMPLE_S per fn, then `reps`
    rounds alternating the fns (order rotated each round)"""
    counts = []
    for fn in fns:
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        counts.append(max(1, min(1000, int(SAMPLE_S / max(time.perf_counter() - t0, 1e-6)))))
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(reps):
        for i in [(j + r) % len(fns) for j in range(len(fns))]:
            t0 = time.perf_counter()
            for _ in range(counts[i]):
                fns[i]()
            sync()
            samples[i].append((time.perf_counter() - t0) / counts[i])
    return [float(np.median(s)) for s in samples]


def sweep(params: list[dict], squares: list[int], forms: list[str], reps: int) -> tuple[list[dict], dict]:
    import pyopencl as cl

    from device_agent.backends.opencl.gemm import GPU_DEFAULT, GPU_KEYS, gemm, tile_misfit
    from device_agent.backends.opencl.runtime import LaunchBuilder, Runtime, TensorRef, replay

    rt = Runtime()
    rng = np.random.default_rng(0)
    rows = []
    for sq in squares:
        a, bm = (rng.standard_normal((sq, sq), dtype=np.float32) for _ in range(2))
        bufs = []
        for name, v in (("A", a), ("B", bm), ("C", np.full((sq, sq), np.nan, np.float32))):
            bufs.append(TensorRef(name, (sq * sq,), rt.alloc(4 * sq * sq)))
            cl.enqueue_copy(rt.queue, bufs[-1].buf, v)
        tA, tB, tC = bufs
        for form in forms:
            ta, tb = form[0] == "t", form[1] == "t"
            ref = (a.T if ta else a).astype(np.float64) @ (bm.T if tb else bm).astype(np.float64)
            cases, fns = [], []
            for p in params:
                t = {k: int(p.get(k, GPU_DEFAULT[k])) for k in GPU_KEYS}
                row = dict(form=form, M=sq, N=sq, K=sq, tile=tile_label(t), params=t)
                rows.append(row)
                why = tile_misfit(LaunchBuilder(rt), form, t)
                if why:
                    row["skipped"] = why
                    continue
                b = LaunchBuilder(rt)
                gemm(b, ta, tb, sq, sq, sq, tA, 0, sq, tB, 0, sq, tC, 0, sq, variant="gpu",
                     params=dict(t, skinny=None))
                cases.append((row, b.launches))
                fns.append(lambda ls=b.launches: replay(rt.queue, ls))
            for (row, launches), s in zip(cases, rounds(fns, rt.queue.finish, reps)):
                row["ms"], row["gflops"] = s * 1e3, 2 * sq ** 3 / s / 1e9
                replay(rt.queue, launches)          # C of this set alone (the last timed run was another's)
                c = np.empty((sq, sq), np.float32)
                cl.enqueue_copy(rt.queue, c, tC.buf)
                row["max_err"] = float(np.abs(c - ref).max() / (np.sqrt(sq) + np.abs(ref).max()))
                row["digest"] = hashlib.sha256(c.tobytes()).hexdigest()[:16]
            for row, _ in cases:                    # PF must not change a bit
                base = next((r for r, _ in cases if r["params"] == dict(row["params"], PF=0)), None)
                if base is not None and base is not row:
                    row["same_as_pf0"] = row["digest"] == base["digest"]
        del tA, tB, tC, bufs
    return rows, {"device": rt.info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--square", default="2048,4096")
    ap.add_argument("--forms", default="nn,nt,tn")
    ap.add_argument("--params", default=None, help="JSON list of GPU tile sets (default: DEFAULT_PARAMS)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--torch-cuda", action="store_true", help="also time torch.matmul on CUDA, TF32 off")
    ap.add_argument("--out", default=str(HERE / "results" / "gemm_sweep.json"))
    a = ap.parse_args()
    try:
        params = json.loads(a.params) if a.params else DEFAULT_PARAMS
        squares = [int(v) for v in a.square.split(",") if v]
        forms = [f for f in a.forms.split(",") if f]
        if not (isinstance(params, list) and all(isinstance(p, dict) for p in params)):
            raise ValueError("--params must be a JSON list of objects")
        if bad := [f for f in forms if f not in ("nn", "nt", "tn", "tt")]:
            raise ValueError(f"--forms: {bad} not among nn, nt, tn, tt")
    except ValueError as e:
        sys.exit(f"gemm_sweep: {e}")
    rows, meta = sweep(params, squares, forms, a.reps)
    if a.torch_cuda:
        shapes = [dict(form=f, M=sq, N=sq, K=sq, batch=1, acc=False) for sq in squares for f in forms]
        secs, meta["torch_cuda"] = run_torch_cuda(shapes, a.reps)
        cublas = {(s["form"], s["M"]): 2 * s["M"] ** 3 / t / 1e9 for s, t in zip(shapes, secs)}
        for r in rows:
            r["cublas_gflops"] = cublas[(r["form"], r["M"])]
            if "gflops" in r:
                r["pct_cublas"] = 100 * r["gflops"] / r["cublas_gflops"]
    meta.update(date=time.strftime("%Y-%m-%d %H:%M"), reps=a.reps)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    dev = meta["device"]
    print(f"\nGPU-shaped SGEMM, {dev.get('device', '-')} ({dev.get('platform', '-')}), median of {a.reps} "
          f"alternating rounds; {meta['date']}\n")
    print("| size | form | tile | ms | GFLOP/s | cuBLAS GFLOP/s | % cuBLAS | max err | = PF0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['M']} | {r['form']} | {r['tile']} | skipped: {r['skipped']} | | | | | |")
            continue
        cub = f"{r['cublas_gflops']:.0f} | {r['pct_cublas']:.1f}" if "pct_cublas" in r else "- | -"
        same = {True: "yes", False: "**NO**"}.get(r.get("same_as_pf0"), "")
        print(f"| {r['M']} | {r['form']} | {r['tile']} | {r['ms']:.3f} | {r['gflops']:.1f} | {cub} | "
              f"{r['max_err']:.1e} | {same} |")


if __name__ == "__main__":
    main()
