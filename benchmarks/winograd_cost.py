"""Winograd F(2x2,3x3) against the GEMM path for 3x3 stride-1 convolutions, per full step and inference.

    python benchmarks/winograd_cost.py [--models alexnet] [--size 224] [--batch 8] [--rounds 5]
                                       [--stages full,infer]

Two Plans of one model in one process, built with THOMAS_CL_WINOGRAD=0 and =1 (the switch is read when a
Plan records its launches), their steps alternated (ABAB..., the first round a warm-up) so that drift and
a shared CPU's load hit both alike; medians of wall and process CPU time. The per-kind default of
ops/conv_winograd.py follows this measurement. Writes benchmarks/results/winograd_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def _plans(g, stage: str, batch: int) -> dict:
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.ops.conv_winograd import ENV

    plans = {}
    for on in ("0", "1"):
        os.environ[ENV] = on
        if stage == "infer":
            plans[on] = Plan(g, batch=batch, trainable=set())
        else:
            plans[on] = Plan(g, batch=batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9),
                             bn_batch_stats=True)
    os.environ.pop(ENV)
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet")
    ap.add_argument("--stages", default="full,infer")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "winograd_cost.json"))
    a = ap.parse_args()
    from plan_models import alternate_steps

    from thomas_cli import zoo

    rows = []
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=10, size=a.size, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 10, a.batch)
        for stage in a.stages.split(","):
            plans = _plans(g, stage, a.batch)
            wall, cpu = alternate_steps(plans, x, y, a.rounds, infer=stage == "infer")
            med = lambda v: float(np.median(v))  # noqa: E731
            row = {"model": model, "stage": stage, "device": plans["0"].rt.info["device"],
                   "wall_ms": [med(wall["0"]), med(wall["1"])], "cpu_ms": [med(cpu["0"]), med(cpu["1"])],
                   "bytes": [plans["0"].memory()["peak"], plans["1"].memory()["peak"]]}
            row["speedup_wall"] = row["wall_ms"][0] / row["wall_ms"][1]
            row["speedup_cpu"] = row["cpu_ms"][0] / row["cpu_ms"][1]
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "size": a.size, "batch": a.batch,
                                       "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
