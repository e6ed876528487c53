"""Host-side costs of a Plan step (diagnostic): upload, enqueue, kernels, read-back, each timed alone.

    python benchmarks/plan_overhead.py [--models mobilenet_v2] [--stages infer,last,full] [--batch 32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]


def med(fn, n=7):
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="infer,last,full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    import pyopencl as cl

    from device_agent.backends.opencl.runtime import replay
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    keep = []
    rng = np.random.default_rng(0)
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=1000, size=a.size, seed=0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch).astype(np.int32)
        last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
        for stage in a.stages.split(","):
            if stage == "infer":
                p = Plan(g, batch=a.batch, trainable=set())
                step = lambda: p.infer(x)  # noqa: E731
            else:
                p = Plan(g, batch=a.batch, trainable=last if stage == "last" else None,
                         optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=stage == "full")
                step = lambda: p.train_step(x, y, 1e-4)  # noqa: E731
            keep.append(p)
            q = p.rt.queue
            vals = p._values(0, 1e-4)
            launches = p.fw_launches + p.bw_launches + p.opt_launches

            def upload():
                cl.enqueue_copy(q, p.refs[p.input_name].buf, x)
                q.finish()

            def kernels():
                replay(q, launches, vals)
                q.finish()

            enq = []

            def enqueue_only():
                t0 = time.perf_counter()
                replay(q, launches, vals)
                enq.append((time.perf_counter() - t0) * 1e3)
                q.finish()

            def part(ls):
                def f():
                    replay(q, ls, vals)
                    q.finish()
                return f

            r = {"step": med(step), "upload": med(upload), "kernels+finish": med(kernels),
                 "fw": med(part(p.fw_launches)), "bw": med(part(p.bw_launches)), "opt": med(part(p.opt_launches))}
            med(enqueue_only)
            r["enqueue(host)"] = float(np.median(enq))
            r["n_launches"] = len(launches)
            print(model, stage, {k: round(v, 2) for k, v in r.items()}, flush=True)


if __name__ == "__main__":
    main()
