"""`python -m device_agent tune JOB.json`: time a few GEMM tile variants on the model's own GEMMs,
once, and save the winner in the device's tuning file (DeepCL's ForwardAuto; CLBlast's database).

    {"model": "models/mobilenet_v2", "batch": 8, "steps": 3}
    -> hello, tune_variant... , tune | error

For each variant of the device kind (VARIANTS) a full-training Plan (every layer, SGD momentum) is
built with the variant as a tuning override; after one warm-up step the model's GEMM launches (labels
`.../gemm*`: every distinct GEMM shape of its forward and backward, split-K reductions included) are
replayed alone between two queue.finish() calls, median over `steps`, and then each GEMM shape's
launches alone (Launch.tag, gemm.shape_key). A variant that fails to build is reported and
skipped, and so is one whose warm-up step computes another loss than the shipped tiles (a fast wrong
tile never wins). The variant fastest over all the GEMMs wins; a shape that another variant ran more
than 10 % (and 0.02 ms) faster keeps that variant's tiles (gemm.shapes: FC layers at a small batch and
skinny dW products want other tiles than the big convolutions), kept only if the whole set re-timed is
faster. The result goes to tuning_file() under "<device>|<driver>" ->
"gemm", which every later Runtime on this device reads (runtime.Tuning); training never re-times.

Then the convolution paths (job field "conv", default true): with the tuned GEMMs, a full training step
of the model with each path of CONV_VARIANTS (im2col or implicit GEMM, Winograd F(2x2,3x3) on or off
for its 3x3 stride-1 nodes; the first is the shipped default), median of `steps` steps after a warm-up.
Variants whose launch lists come out the same (no node they change: no 3x3 stride-1 conv, say) are
not timed; when only one remains nothing is timed or saved. The fastest whose warm-up loss agrees is saved
under "conv2d" ({"conv": ..., "winograd": ...}), which conv2d.py and conv_winograd.py read. Events: the GEMM
variants, the convolution variants and their `tune` event (op "conv2d"), and last the GEMM's `tune` event.
"""
from __future__ import annotations

import json
import time

import numpy as np

from ..errors import BackendError, InputError, ThomasError
from ..fsutil import atomic_write
from ..protocol import TuneEvent, TuneVariantEvent

# a small set of plausible tiles per device kind (the kernel defaults come first)
VARIANTS = {
    "gpu": [
        {},
        {"MWG": 32, "NWG": 32, "KWG": 16, "MDIMC": 8, "NDIMC": 8},
        {"MWG": 64, "NWG": 64, "KWG": 32, "MDIMC": 8, "NDIMC": 8},
        {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 64, "NWG": 64, "KWG": 32, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 128, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 8},
        {"MWG": 128, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 64, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16},
        {"MWG": 32, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 16},
        {"MWG": 64, "NWG": 32, "KWG": 16, "MDIMC": 16, "NDIMC": 8},
        # register prefetch of the next K-slice (PF 1; PF 2 with two local buffers), bit-identical: on the
        # H100 it lifted 4096^3 from 66 to 73-78 % of cuBLAS (docs/BENCHMARKS.md 2026-12-07)
        {"PF": 0},
        {"PF": 1},
        {"PF": 2},
        {"MWG": 128, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 16, "PF": 2},
    ],
    "cpu": [
        {},
        {"TM": 4, "TN": 16, "VW": 8},
        {"TM": 8, "TN": 8, "VW": 8},
        {"TM": 6, "TN": 8, "VW": 4},
        {"TM": 4, "TN": 32, "VW": 8, "DM": 2, "DN": 2},
        {"LB": 0},                     # op(B) strips read from global memory, not staged in local memory
        {"LX": 1, "LY": 8},            # smaller work-groups (fewer row blocks share a staged strip)
    ],
}


# convolution paths per device kind, the shipped default first (implicit GEMM's local-memory tiles are
# GPU-shaped: on CPUs they run 1.2-16x slower than im2col, docs/BACKENDS.md, so CPUs do not time them)
CONV_VARIANTS = {
    "gpu": [{}, {"conv": "im2col", "winograd": False}, {"conv": "im2col", "winograd": True},
            {"conv": "igemm", "winograd": False}, {"conv": "igemm", "winograd": True}],
    "cpu": [{}, {"conv": "im2col", "winograd": False}, {"conv": "im2col", "winograd": True}],
}


def load_job(path: str) -> dict:
    from .bench import read_job

    job = read_job(path, "tune", {"batch": 8, "steps": 3})
    if not isinstance(job.setdefault("conv", True), bool):
        raise InputError(f"tune field 'conv' must be true or false, got {job['conv']!r}")
    return job


def _time_gemms(rt, g, batch: int, steps: int, params: dict, shapes: dict | None = None
                ) -> tuple[float, int, dict[str, float], float]:
    """(median ms of all the model's GEMM launches, how many, median ms per GEMM shape, the loss of the
    warm-up step) with `params` over the tuning and `shapes` as the per-shape tiles (those of an
    earlier tune are set aside)."""
    from ..backends.opencl.plan import OptimConfig, Plan
    from ..backends.opencl.runtime import replay
    from .bench import _inputs

    # sizes=[]: each variant runs as itself on every shape (no shipped size rule swaps its tiles)
    rt.tuning.override = {"gemm": dict(params, shapes=shapes or {}, sizes=[])}
    try:
        plan = Plan(g, batch=batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
    finally:
        rt.tuning.override = {}
    x, y = _inputs(g, batch)
    loss, _ = plan.train_step(x, y, lr=1e-4)
    gemms = [ln for ln in plan.fw_launches + plan.bw_launches if "gemm" in ln.label.split("/")[-1]]
    by_shape: dict[str, list] = {}
    for ln in gemms:
        by_shape.setdefault(ln.tag or ln.label, []).append(ln)
    vals = plan._values(0, 1e-4)
    ts, per = [], {k: [] for k in by_shape}
    for _ in range(steps):
        rt.queue.finish()
        t0 = time.perf_counter()
        replay(rt.queue, gemms, vals)
        rt.queue.finish()
        ts.append((time.perf_counter() - t0) * 1e3)
        for k, lns in by_shape.items():       # each shape alone, repeated so that one finish() is noise
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or (time.perf_counter() - t0 < 2e-3 and reps < 64):
                replay(rt.queue, lns, vals)
                reps += 1
                if reps in (3, 12):
                    rt.queue.finish()
            rt.queue.finish()
            per[k].append((time.perf_counter() - t0) * 1e3 / reps)
    _KEEP.append(plan)
    return float(np.median(ts)), len(gemms), {k: float(np.median(v)) for k, v in per.items()}, float(loss)


def _agrees(loss: float, ref: float | None) -> bool:
    """A variant must compute what the shipped tiles compute (same seeded step): a fast wrong tile never wins."""
    return ref is None or (np.isfinite(loss) and abs(loss - ref) <= 1e-3 * max(1.0, abs(ref)))


def pick_shapes(results: list[tuple[float, int, dict, dict]], best: int, margin: float = 0.1,
                min_ms: float = 0.02) -> dict[str, dict]:
    """Per GEMM shape, the tiles of the variant that ran it fastest, kept only where that beats the overall
    winner `best` on the shape by more than `margin` and `min_ms` (timing noise must not scatter the tiles)."""
    shapes: dict[str, dict] = {}
    base = next(r for r in results if r[1] == best)
    for key, ms0 in base[3].items():
        ms, i, params, _ = min(((r[3][key], r[1], r[2], r[3]) for r in results if key in r[3]), key=lambda r: r[0])
        if i != best and ms < ms0 * (1 - margin) and ms0 - ms > min_ms:
            shapes[key] = {k: v for k, v in params.items() if isinstance(v, (int, float)) and k.isupper()}
    return shapes


def pin_sized(results: list[tuple[float, int, dict, dict]], sizes, shapes: dict) -> dict[str, dict]:
    """Shapes a shipped size rule covers (gemm.size_rule), which pick_shapes left alone, get the tiles
    of the variant that ran them fastest: every variant was timed as itself, so without an entry the
    rule's tiles would run there instead of a measured choice."""
    from ..backends.opencl.gemm import parse_shape_key, size_rule

    out: dict[str, dict] = {}
    for key in results[0][3] if results else ():
        try:
            _, M, N, K, _ = parse_shape_key(key)
        except (ValueError, IndexError):
            continue                                   # a launch label, not a GEMM shape key
        if key in shapes or size_rule(sizes, M, N, K) is None:
            continue
        _, params = min(((r[3][key], r[2]) for r in results if key in r[3]), key=lambda r: r[0])
        out[key] = {k: v for k, v in params.items() if isinstance(v, (int, float)) and k.isupper()}
    return out


_KEEP = []   # NOTE: plans stay alive to the process's end (tearing one down mid-run crashed NVIDIA's driver in GC)


def _misfit(rt, fam: str, params: dict) -> str:
    """Why a GPU tile variant cannot launch on this device ("" if it can): gemm.tile_misfit."""
    if fam != "gpu":
        return ""
    from ..backends.opencl.gemm import GPU_DEFAULT, GPU_KEYS, tile_misfit
    from ..backends.opencl.runtime import LaunchBuilder

    t = {k: int(params.get(k, GPU_DEFAULT[k])) for k in GPU_KEYS}
    return next((w for w in (tile_misfit(LaunchBuilder(rt), form, t) for form in ("nn", "nt", "tn")) if w), "")


def _conv_plan(rt, g, batch: int, params: dict):
    """(a full-training Plan built with convolution tuning `params`, the kernels its step launches)"""
    from ..backends.opencl.plan import OptimConfig, Plan

    rt.tuning.override = {"conv2d": params}
    try:
        plan = Plan(g, batch=batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
    finally:
        rt.tuning.override = {}
    return plan, tuple(ln.kernel.function_name for ln in plan.fw_launches + plan.bw_launches)


def _time_steps(rt, plan, g, batch: int, steps: int) -> tuple[float, float]:
    """(median ms of `steps` full steps after a warm-up, the warm-up step's loss); releases the Plan"""
    from .bench import _inputs

    try:
        x, y = _inputs(g, batch)
        loss, _ = plan.train_step(x, y, lr=1e-4)
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            plan.train_step(x, y, lr=1e-4)
            rt.queue.finish()
            ts.append((time.perf_counter() - t0) * 1e3)
    finally:
        plan.release()
    return float(np.median(ts)), float(loss)


def _failed(i: int, params: dict, e: Exception, op: str = "gemm") -> TuneVariantEvent:
    return TuneVariantEvent(i, params, None, 0, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", op)


def tune_conv(rt, g, job: dict, emit) -> TuneEvent | None:
    """Time the convolution paths (CONV_VARIANTS) on full steps; save and return the winner (None when the
    model's launches do not depend on the path: nothing is timed then). Each Plan is built once: the first
    path with its own launches waits, untimed, until a second one shows there is a choice."""
    timed, sigs, first = [], set(), None

    def measure(i, v, plan):
        try:
            timed.append((i, v) + _time_steps(rt, plan, g, job["batch"], job["steps"]))
        except (ThomasError, RuntimeError) as e:
            emit(_failed(i, v, e, "conv2d"))

    for i, v in enumerate(CONV_VARIANTS["gpu" if rt.kind == "gpu" else "cpu"]):
        try:
            plan, sig = _conv_plan(rt, g, job["batch"], v)
        except (ThomasError, RuntimeError) as e:
            emit(_failed(i, v, e, "conv2d"))
            continue
        if sig in sigs:             # the same launches as an earlier variant: no node this one changes
            plan.release()
            continue
        sigs.add(sig)
        if len(sigs) == 1:
            first = (i, v, plan)
            continue
        if first is not None:
            measure(*first)
            first = None
        measure(i, v, plan)
    if first is not None:           # one launch list only: nothing to choose
        first[2].release()
        return None
    results, ref = [], None
    for i, v, ms, loss in timed:
        ref = loss if ref is None else ref
        if not _agrees(loss, ref):
            emit(TuneVariantEvent(i, v, None, 0, f"wrong results: loss {loss:.6g} where the first path gives "
                                                 f"{ref:.6g}; variant skipped", "conv2d"))
            continue
        results.append((ms, i, v))
        emit(TuneVariantEvent(i, v, ms, job["steps"], None, "conv2d"))
    if not results:
        return None
    ms, i, params = min(results, key=lambda r: (r[0], r[1]))
    default_ms = next((m for m, j, _ in results if j == 0), None)
    path = _save(rt, "conv2d", {"params": dict(params), "ms": round(ms, 3), "default_ms": default_ms,
                                "model": job["model"], "batch": job["batch"], "variant": i,
                                "tuned": time.strftime("%Y-%m-%d %H:%M:%S")})
    from ..backends.opencl.runtime import device_key

    return TuneEvent(device_key(rt.device), "conv2d", i, params, ms, default_ms, str(path))


def _save(rt, op: str, entry: dict):
    """Write this device's `op` entry into the tuning file (atomically; a corrupt file is replaced) and
    into the running Tuning, so later timings in this process use it."""
    from ..backends.opencl.runtime import device_key, tuning_file

    path = tuning_file()
    try:
        doc = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        doc = {}                                   # a corrupt file is replaced by a good one
    doc.setdefault(device_key(rt.device), {})[op] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    rt.tuning.tuned[op] = entry
    return path


def main(args: list[str], emit) -> int:
    from ..model.graph import load_package

    job = load_job(args[0])
    try:
        from ..backends.opencl.runtime import Runtime, device_key
    except ImportError as e:
        raise BackendError(f"tune needs pyopencl and an OpenCL device: pyopencl is not installed ({e})") from None
    g = load_package(job["model"])
    rt = Runtime()
    base = rt.tuning.get("gemm")
    fam = base.get("variant") or rt.kind
    results, ref = [], None
    for i, v in enumerate(VARIANTS["gpu" if fam == "gpu" else "cpu"]):
        params = {k: x for k, x in dict(base, **v).items() if k not in ("shapes", "sizes")}
        shown = {k: params[k] for k in sorted(params) if not isinstance(params[k], dict)}
        why = _misfit(rt, fam, params)
        if why:   # timing it would time the smaller tile gemm.fit_tiles falls back to
            emit(TuneVariantEvent(i, shown, None, 0, f"does not fit this device's limits: {why}; variant skipped"))
            continue
        try:
            ms, n, per, loss = _time_gemms(rt, g, job["batch"], job["steps"], params)
        except (ThomasError, RuntimeError) as e:   # cl.Error is a RuntimeError: a tile this device cannot build
            emit(_failed(i, v, e))
            continue
        if i == 0:
            ref = loss
        if not _agrees(loss, ref):
            emit(TuneVariantEvent(i, shown, None, n, f"wrong results: loss {loss:.6g} where the shipped tiles give "
                                                 f"{ref:.6g}; variant skipped"))
            continue
        results.append((ms, i, params, per))
        emit(TuneVariantEvent(i, shown, ms, n, None))
    if not results:
        raise ThomasError("no GEMM variant built on this device; the default tuning stays")
    ms, i, params, per = min(results, key=lambda r: (r[0], r[1]))
    default_ms = next((m for m, j, _, _ in results if j == 0), None)
    shapes, tuned_ms = pick_shapes(results, i), ms
    shapes.update(pin_sized(results, base.get("sizes"), shapes))
    if shapes:
        # what the Plan will run, measured: the winner with its per-shape tiles; kept only if faster whole
        tuned_ms, _, _, loss = _time_gemms(rt, g, job["batch"], job["steps"], params, shapes)
        if tuned_ms >= ms or not _agrees(loss, ref):
            shapes, tuned_ms = {}, ms
    path = _save(rt, "gemm", {"params": dict(params, shapes=shapes), "ms": round(ms, 3),
                              "default_ms": default_ms, "tuned_ms": round(tuned_ms, 3), "model": job["model"],
                              "batch": job["batch"], "variant": i, "tuned": time.strftime("%Y-%m-%d %H:%M:%S")})
    gemm = TuneEvent(device_key(rt.device), "gemm", i, params, ms, default_ms, str(path), shapes, round(tuned_ms, 3))
    conv = tune_conv(rt, g, job, emit) if job["conv"] else None   # timed with the GEMM tiles just saved
    if conv is not None:
        emit(conv)
    emit(gemm)                  # last: the command's result
    return 0
