"""What `recompute` (BN outputs rewritten in the backward instead of kept) costs per full training step.

    python benchmarks/recompute_cost.py [--models mobilenet_v2,alexnet] [--size 128] [--batch 8] [--rounds 5]

Both Plans live in one process and their steps alternate (ABAB...), so drift and neighbours' load hit
both alike; reported are medians of wall time and of process CPU time (all PoCL threads), the latter
barely moved by other processes on a shared CPU. The job default (`recompute: auto`) follows this
measurement: on where the cost stays under 5 %. Writes benchmarks/results/recompute_cost.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "recompute_cost.json"))
    a = ap.parse_args()
    from plan_models import alternate_steps

    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    rows = []
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=10, size=a.size, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 10, a.batch)
        plans = {rc: Plan(g, batch=a.batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9),
                          bn_batch_stats=True, recompute=rc) for rc in (False, True)}
        wall, cpu = alternate_steps(plans, x, y, a.rounds)
        med = lambda v: float(np.median(v))  # noqa: E731
        row = {"model": model, "device": plans[False].rt.info["device"],
               "wall_ms": [med(wall[False]), med(wall[True])], "cpu_ms": [med(cpu[False]), med(cpu[True])],
               "bytes": [plans[False].memory()["peak"], plans[True].memory()["peak"]]}
        row["cost_wall"] = row["wall_ms"][1] / row["wall_ms"][0] - 1
        row["cost_cpu"] = row["cpu_ms"][1] / row["cpu_ms"][0] - 1
        row["bytes_ratio"] = row["bytes"][1] / row["bytes"][0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "size": a.size, "batch": a.batch,
                                       "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
