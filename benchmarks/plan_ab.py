"""A/B of tuning variants on one model step: Plans built with different tuning overrides, profiled and
stepped in turn (ABAB..., so a shared CPU's load hits all alike), optionally beside PyTorch's step.

    python benchmarks/plan_ab.py --model mobilenet_v2 --stage full --batch 8 \
        --variant 'old={"conv2d": {"dw_filter_rows": false}}' --variant 'new={}' [--rounds 5] [--torch [cuda]]
    THOMAS_CL_DEVICE=nvidia python3 benchmarks/plan_ab.py --model alexnet --stage infer --batch 32 --torch cuda \
        --variant 'cur={}' --variant 'ig128x64={"conv2d": {"igemm_tile": {"MWG": 128, "NWG": 64, ...}}}'

Prints, per variant, the kernel ms (OpenCL profiling events, benchmarks/plan_profile.py) summed per
kernel, the median step wall time, and with --torch the median wall time of the same step in PyTorch
(CPU, or CUDA with TF32 off and the batch already on the GPU, taken in the same rotation) and each variant's ratio to it (medians, and minimums: the least
disturbed step of each on a shared machine). Stage "infer" times Plan.infer (BN folded). Also the median process CPU time of a step (all threads): steadier than the
wall time on a CPU shared with other work.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]


def build(g, stage: str, batch: int, override: dict):
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.backends.opencl.runtime import Runtime

    rt = Runtime()
    rt.tuning.override.update(override)
    if stage == "infer":
        return Plan(g, batch=batch, trainable=set(), runtime=rt)
    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    return Plan(g, batch=batch, trainable=last if stage == "last" else None, runtime=rt,
                optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=stage.startswith("full"),
                recompute="_rc" in stage, dtype="mixed" if stage.endswith("_mixed") else "float32")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--stage", default="full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2, help="profiled replays per round")
    ap.add_argument("--variant", action="append", required=True, help="name=JSON tuning override")
    ap.add_argument("--torch", nargs="?", const="cpu", default=None, choices=("cpu", "cuda"),
                    help="PyTorch's step beside the variants (cpu, or cuda: TF32 off, batch on the GPU)")
    ap.add_argument("--top", type=int, default=14)
    a = ap.parse_args()
    if a.torch:
        import torch  # noqa: F401  (loaded before any OpenCL context exists)
    from plan_profile import profile_plan
    from thomas_cli import zoo

    g = zoo.build(a.model, num_classes=1000, size=a.size, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    y = rng.integers(0, 1000, a.batch)
    variants = dict(v.split("=", 1) for v in a.variant)
    plans = {name: build(g, a.stage, a.batch, json.loads(ov)) for name, ov in variants.items()}
    steps = {name: ((lambda p=p: p.infer(x)) if a.stage == "infer" else (lambda p=p: p.train_step(x, y, lr=1e-4)))
             for name, p in plans.items()}
    if a.torch:
        from plan_models import torch_step
        steps["torch"] = torch_step(g, a.stage.split("_")[0], x, y, a.torch)
    kern = {n: defaultdict(list) for n in plans}
    wall, cpu = {n: [] for n in steps}, {n: [] for n in steps}
    for rnd in range(a.rounds + 1):
        for name, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if rnd:
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
        for name, plan in plans.items():
            if rnd:
                per = defaultdict(float)
                for r in profile_plan(plan, x, y, a.reps):
                    per[f"{r['phase']} {r['kernel']}"] += r["ms"]
                for k, v in per.items():
                    kern[name][k].append(v)
    med = {n: {k: float(np.median(v)) for k, v in kern[n].items()} for n in plans}
    keys = sorted({k for m in med.values() for k in m}, key=lambda k: -max(m.get(k, 0) for m in med.values()))
    names = list(plans)
    print(f"{a.model} {a.stage} batch {a.batch}, {a.rounds} rounds ({plans[names[0]].rt.info.get('device')})")
    print("| kernel | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for k in keys[:a.top]:
        print(f"| {k} | " + " | ".join(f"{med[n].get(k, 0):.1f}" for n in names) + " |")
    print("| kernel total | " + " | ".join(f"{sum(med[n].values()):.1f}" for n in names) + " |")
    print("| step wall (median) | " + " | ".join(f"{np.median(wall[n]):.1f}" for n in names) + " |")
    print("| step process CPU ms (median, all threads) | " + " | ".join(f"{np.median(cpu[n]):.1f}" for n in names) + " |")
    print("| step wall (min) | " + " | ".join(f"{np.min(wall[n]):.1f}" for n in names) + " |")
    if a.torch:
        t, tmin = float(np.median(wall["torch"])), float(np.min(wall["torch"]))
        print(f"| ratio to torch (median {t:.1f} ms) | " + " | ".join(f"{np.median(wall[n]) / t:.2f}" for n in names)
              + " |")
        print(f"| ratio to torch (min {tmin:.1f} ms) | " + " | ".join(f"{np.min(wall[n]) / tmin:.2f}" for n in names)
              + " |")


if __name__ == "__main__":
    main()
