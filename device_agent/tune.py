"""`python -m device_agent tune JOB.json`: time a few GEMM tile variants on the model's own GEMMs,
once, and save the winner in the device's tuning file (DeepCL's ForwardAuto; CLBlast's database).

    {"model": "models/mobilenet_v2", "batch": 8, "steps": 3}
    -> hello, tune_variant... , tune | error

For each variant of the device kind (VARIANTS) a full-training Plan (every layer, SGD momentum) is
built with the variant as a tuning override; after one warm-up step the model's GEMM launches (labels
`.../gemm*`: every distinct GEMM shape of its forward and backward, split-K reductions included) are
replayed alone between two queue.finish() calls, median over `steps`. A variant that fails to build
is reported and skipped. The winner goes to tuning_file() under "<device>|<driver>" -> "gemm", which
every later Runtime on this device reads (runtime.Tuning); training never re-times.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import BackendError, InputError, ThomasError
from .protocol import Tune, TuneVariant

# a small set of plausible tiles per device kind (the kernel defaults come first)
VARIANTS = {
    "gpu": [
        {},
        {"MWG": 32, "NWG": 32, "KWG": 16, "MDIMC": 8, "NDIMC": 8},
        {"MWG": 64, "NWG": 64, "KWG": 32, "MDIMC": 8, "NDIMC": 8},
        {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 128, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 8},
    ],
    "cpu": [
        {},
        {"TM": 4, "TN": 16, "VW": 8},
        {"TM": 8, "TN": 8, "VW": 8},
        {"TM": 6, "TN": 8, "VW": 4},
        {"TM": 4, "TN": 32, "VW": 8, "DM": 2, "DN": 2},
    ],
}


def load_job(path: str) -> dict:
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable tune job ({e})") from None
    if not isinstance(job, dict) or not isinstance(job.get("model"), str):
        raise InputError(f"{path}: a tune job needs 'model' (a package directory)")
    job.setdefault("batch", 8)
    job.setdefault("steps", 3)
    for k in ("batch", "steps"):
        if isinstance(job[k], bool) or not isinstance(job[k], int) or job[k] < 1:
            raise InputError(f"tune field '{k}' must be an integer >= 1, got {job[k]!r}")
    return job


def _time_gemms(rt, g, batch: int, steps: int, params: dict) -> tuple[float, int]:
    """(median ms of the model's GEMM launches, how many) with `params` over the tuning."""
    from .backends.opencl.runtime import replay
    from .bench import _inputs
    from .plan import OptimConfig, Plan

    rt.tuning.override = {"gemm": params} if params else {}
    try:
        plan = Plan(g, batch=batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
    finally:
        rt.tuning.override = {}
    x, y = _inputs(g, batch)
    plan.train_step(x, y, lr=1e-4)
    gemms = [ln for ln in plan.fw_launches + plan.bw_launches if "gemm" in ln.label.split("/")[-1]]
    vals = plan._values(0, 1e-4)
    ts = []
    for _ in range(steps):
        rt.queue.finish()
        t0 = time.perf_counter()
        replay(rt.queue, gemms, vals)
        rt.queue.finish()
        ts.append((time.perf_counter() - t0) * 1e3)
    _KEEP.append(plan)
    return float(np.median(ts)), len(gemms)


_KEEP = []   # NOTE: plans stay alive to the process's end (tearing one down mid-run crashed NVIDIA's driver in GC)


def main(args: list[str], emit) -> int:
    from .graph import load_package

    job = load_job(args[0])
    try:
        from .backends.opencl.runtime import Runtime, device_key, tuning_file
    except ImportError as e:
        raise BackendError(f"tune needs pyopencl and an OpenCL device: pyopencl is not installed ({e})") from None
    g = load_package(job["model"])
    rt = Runtime()
    base = rt.tuning.get("gemm")
    fam = base.get("variant") or rt.kind
    results = []
    for i, v in enumerate(VARIANTS["gpu" if fam == "gpu" else "cpu"]):
        params = dict(base, **v)
        try:
            ms, n = _time_gemms(rt, g, job["batch"], job["steps"], params)
            results.append((ms, i, params))
            emit(TuneVariant(i, {k: params[k] for k in sorted(params) if not isinstance(params[k], dict)}, ms, n, None))
        except (ThomasError, RuntimeError) as e:   # cl.Error is a RuntimeError: a tile this device cannot build
            emit(TuneVariant(i, v, None, 0, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
    if not results:
        raise ThomasError("no GEMM variant built on this device; the default tuning stays")
    ms, i, params = min(results)
    default_ms = next(m for m, j, _ in results if j == 0) if any(j == 0 for _, j, _ in results) else None
    path = tuning_file()
    try:
        doc = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        doc = {}                                   # a corrupt file is replaced by a good one
    key = device_key(rt.device)
    doc.setdefault(key, {})["gemm"] = {"params": params, "ms": round(ms, 3), "default_ms": default_ms,
                                       "model": job["model"], "batch": job["batch"], "variant": i,
                                       "tuned": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    emit(Tune(key, "gemm", i, params, ms, default_ms, str(path)))
    return 0
