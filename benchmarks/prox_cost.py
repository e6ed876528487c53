"""What FedProx's proximal term (job field prox_mu) costs an OpenCL training step (diagnostic).

Two Plans of the same model and stage, one with prox_mu = 0 (no anchor, no launch) and one with
prox_mu > 0 (the Store's anchor copy + one prox_grad launch before the update), timed interleaved
(rounds x steps); plus the prox_grad launch alone, replayed `--steps` times. Prints JSON.

    python benchmarks/prox_cost.py [--models mobilenet_v2] [--stages last,all] [--batch 32] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]


def per_step_ms(fn, steps: int, queue) -> float:
    queue.finish()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    queue.finish()
    return (time.perf_counter() - t0) * 1e3 / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2")
    ap.add_argument("--stages", default="last,all")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mu", type=float, default=0.01)
    a = ap.parse_args()
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.backends.opencl.runtime import replay, shared_runtime
    from device_agent.training.stages import trainable_params
    from thomas_cli import zoo

    rt = shared_runtime()
    rows = []
    for name in a.models.split(","):
        g = zoo.build(name, num_classes=1000, size=a.size)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch)
        for stage in a.stages.split(","):
            tr = trainable_params(g, "last" if stage == "last" else "all")
            plans = {mu: Plan(g, a.batch, trainable=tr, optimizer=OptimConfig("sgd", momentum=0.9, prox_mu=mu),
                              runtime=rt)
                     for mu in (0.0, a.mu)}
            q = rt.queue
            for p in plans.values():
                for _ in range(3):                               # warm-up: programs built, clocks up
                    p.train_step(x, y, 1e-3)
            times = {mu: [] for mu in plans}
            for _ in range(a.rounds):
                for mu, p in plans.items():
                    times[mu].append(per_step_ms(lambda: p.train_step(x, y, 1e-3), a.steps, q))
            on = plans[a.mu]
            prox = [ln for ln in on.opt_launches if ln.kernel.function_name == "prox_grad"]
            alone = [per_step_ms(lambda: replay(q, prox), a.steps, q) for _ in range(a.rounds)]
            r = {"model": name, "stage": stage, "batch": a.batch, "size": a.size,
                 "trainable": int(on.store.n_trainable), "anchor_bytes": int(on.store.n_trainable * 4),
                 "launches_off": len(plans[0.0].opt_launches), "launches_on": len(on.opt_launches),
                 "step_ms_off": float(np.median(times[0.0])), "step_ms_on": float(np.median(times[a.mu])),
                 "prox_launch_ms": float(np.median(alone)),
                 "optimizer_bytes_off": plans[0.0].store.memory()["optimizer"],
                 "optimizer_bytes_on": on.store.memory()["optimizer"]}
            r["delta_ms"] = r["step_ms_on"] - r["step_ms_off"]
            rows.append(r)
            print(json.dumps(r), flush=True)
    dev = rt.device
    print(json.dumps({"device": dev.name, "driver": dev.driver_version, "python": platform.python_version(),
                      "numpy": np.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
