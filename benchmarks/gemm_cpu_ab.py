"""A/B of CPU-family GEMM tile choices on a model's real GEMM calls (kernel time, OpenCL profiling).

    python benchmarks/gemm_cpu_ab.py --model alexnet --batch 8 --reps 5 \
        --variants '{"base": {}, "t4x24": {"TM": 4, "TN": 24}}' [--filter fc]

Builds the model's full training Plan once, recording every launcher call to gemm() (arguments as
the ops pass them: shapes, offsets, leading dimensions, batch, reduce_batch, bias, activation). Each
variant re-records every call with `params=` = that variant's overrides (gemm_config's precedence:
params beat tuning data), then rounds alternate over the variants (variant order rotated each round),
so machine noise hits them alike; per call and variant the median over rounds of the summed event
times of its launches is reported, with totals. The Plan's buffers are reused (one real step runs
first, so operands hold real values, not denormal garbage).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]


def record_calls(model: str, batch: int, size: int):
    """(plan, [(label, args, kwargs)]) of every gemm() call the full training Plan makes."""
    from device_agent.backends.opencl import gemm as gm
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    calls, orig = [], gm.gemm

    def rec(b, *args, **kwargs):
        calls.append((b.label, args, dict(kwargs)))
        return orig(b, *args, **kwargs)

    gm.gemm = rec
    try:
        g = zoo.build(model, num_classes=1000, size=size, seed=0)
        plan = Plan(g, batch=batch, optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=True)
    finally:
        gm.gemm = orig
    return plan, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default='{"base": {}}')
    ap.add_argument("--filter", default="", help="only calls whose label contains this")
    ap.add_argument("--only-changed", action="store_true", help="only calls some variant launches differently")
    a = ap.parse_args()
    import pyopencl as cl

    from device_agent.backends.opencl import gemm as gm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    variants = json.loads(a.variants)
    plan, calls = record_calls(a.model, a.batch, a.size)
    rt = plan.rt
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    y = rng.integers(0, 1000, a.batch)
    plan.train_step(x, y, lr=1e-4)
    calls = [c for c in calls if a.filter in c[0]]
    built: dict = {}
    for name, params in variants.items():
        rows = []
        for label, args, kwargs in calls:
            b = LaunchBuilder(rt)
            b.label = label
            kw = dict(kwargs)
            pv = dict(params)
            if args[2] > pv.pop("_max_m", 1 << 30):   # "_max_m": the variant's tiles only for M <= this
                pv = {}
            kw["params"] = dict(kw.get("params") or {}, **pv)
            lns = gm.gemm(b, *args, **kw)
            rows.append(lns)
        built[name] = rows
    if a.only_changed:   # drop the calls every variant launches alike (same kernels, sizes, defines)
        sig = lambda lns: [(ln.kernel.function_name, ln.gsize, ln.lsize, ln.kernel.program.int_ptr)  # noqa: E731
                           for ln in lns]
        keep = [ci for ci in range(len(calls)) if len({repr(sig(built[n][ci])) for n in variants}) > 1]
        calls = [calls[ci] for ci in keep]
        built = {n: [rows[ci] for ci in keep] for n, rows in built.items()}
    q = cl.CommandQueue(rt.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
    names = list(variants)
    samples = defaultdict(list)     # (variant, call index) -> ms per round
    for rnd in range(a.reps + 1):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            for ci, lns in enumerate(built[name]):
                evs = [cl.enqueue_nd_range_kernel(q, ln.kernel, ln.gsize, ln.lsize) for ln in lns]
                q.finish()
                if rnd:
                    samples[name, ci].append(sum((e.profile.end - e.profile.start) * 1e-6 for e in evs))
    print(f"| call | shape | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    tot = defaultdict(float)
    for ci, (label, args, kwargs) in enumerate(calls):
        med = {n: float(np.median(samples[n, ci])) for n in names}
        for n in names:
            tot[n] += med[n]
        key = built[names[0]][ci][0].tag if built[names[0]][ci] else "?"
        print(f"| {label} | {key} | " + " | ".join(f"{med[n]:.2f}" for n in names) + " |")
    print("| total | | " + " | ".join(f"{tot[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
