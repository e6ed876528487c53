"""What the divergence guard's order costs an OpenCL training step (diagnostic).

Plan.train_step reads the loss back BEFORE it enqueues the optimizer launches, so a step whose loss
is not finite is never applied; before, the update was enqueued with the rest and the loss read after
it. This times both orders on the same Plan, interleaved (rounds x steps), and prints JSON.

    python benchmarks/step_sync.py [--models mobilenet_v2] [--stages last,full] [--batch 32] [--size 224]
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


def old_order(plan, x, labels, lr, seed=0):
    """The step as it was: forward, backward and update enqueued, then the one read-back."""
    import pyopencl as cl

    from device_agent.backends.opencl.runtime import replay

    labels = np.ascontiguousarray(labels, np.int32)
    plan._upload(x)
    cl.enqueue_copy(plan.rt.queue, plan.labels.buf, labels, is_blocking=False)
    plan.step_count += 1
    vals = plan._values(seed, lr)
    replay(plan.rt.queue, plan.fw_launches, vals)
    replay(plan.rt.queue, plan.bw_launches, vals)
    replay(plan.rt.queue, plan.opt_launches, vals)
    loss, correct = plan._scalars()
    plan._keep = None
    return loss, int(round(correct))


def per_step_ms(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2")
    ap.add_argument("--stages", default="last,full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.training.stages import trainable_params
    from thomas_cli import zoo

    rows = []
    for name in a.models.split(","):
        g = zoo.build(name, num_classes=1000, size=a.size)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch)
        for stage in a.stages.split(","):
            tr = trainable_params(g, "last") if stage == "last" else None
            plan = Plan(g, a.batch, trainable=tr, optimizer=OptimConfig("sgd", momentum=0.9))
            for _ in range(3):                                   # warm-up: programs built, clocks up
                plan.train_step(x, y, 1e-3)
                old_order(plan, x, y, 1e-3)
            new, old = [], []
            for _ in range(a.rounds):
                new.append(per_step_ms(lambda: plan.train_step(x, y, 1e-3), a.steps))
                old.append(per_step_ms(lambda: old_order(plan, x, y, 1e-3), a.steps))
            r = {"model": name, "stage": stage, "batch": a.batch, "size": a.size,
                 "opt_launches": len(plan.opt_launches), "new_ms": float(np.median(new)),
                 "old_ms": float(np.median(old)), "new_all": new, "old_all": old}
            r["delta_ms"] = r["new_ms"] - r["old_ms"]
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.endswith("_all")}), flush=True)
    import pyopencl as cl
    dev = cl.get_platforms()[0].get_devices()[0]
    print(json.dumps({"device": dev.name, "driver": dev.driver_version, "python": platform.python_version(),
                      "numpy": np.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
