"""Where a Plan's step time goes: every launch of one step timed by OpenCL profiling events.

    python benchmarks/plan_profile.py [--models mobilenet_v2,alexnet] [--stages last,full]
                                      [--size 224] [--batch 32] [--reps 3] [--top 25]

The Plan's own launch list is replayed on a second, profiling-enabled queue of the same context
(same kernels, same bound arguments); each launch's time is its event's END - START on the device,
the median over `--reps` replays after one warm-up. Launch gaps are not included, so the sum is a
little below the step time of benchmarks/plan_models.py. Totals are reported per phase
(forward / backward / optimizer), per kernel and per (op, phase, kernel). Writes
benchmarks/results/plan_profile.json and prints Markdown tables.
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
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]


def profile_plan(plan, x, y, reps: int, lr: float = 1e-4) -> list[dict]:
    """One record per launch: phase, node, op, kernel, ms (median over reps), flops."""
    import pyopencl as cl

    rt = plan.rt
    q = cl.CommandQueue(rt.ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
    if plan.inference:
        phases = [("fw", plan.fw_launches)]
    else:
        phases = [("fw", plan.fw_launches), ("bw", plan.bw_launches), ("opt", plan.opt_launches)]
    cl.enqueue_copy(q, plan.refs[plan.input_name].buf, np.ascontiguousarray(x, np.float32))
    cl.enqueue_copy(q, plan.labels.buf, np.ascontiguousarray(y, np.int32))
    vals = plan._values(0, lr)
    ops = {n.name: n.op for n in plan.graph.nodes}
    samples: list[list[float]] = []
    for rep in range(reps + 1):
        evs = []
        for _, launches in phases:
            for ln in launches:
                for idx, key in ln.dyn.items():
                    ln.kernel.set_arg(idx, vals[key])
                evs.append(cl.enqueue_nd_range_kernel(q, ln.kernel, ln.gsize, ln.lsize))
        q.finish()
        if rep:
            samples.append([(e.profile.end - e.profile.start) * 1e-6 for e in evs])
    med = np.median(np.array(samples), axis=0)
    out, i = [], 0
    for phase, launches in phases:
        for ln in launches:
            node = ln.label.split("/")[0].split(":")[0]
            out.append({"phase": phase, "node": node, "op": ops.get(node, node),
                        "kernel": ln.kernel.function_name, "label": ln.label, "ms": float(med[i]),
                        "flops": int(ln.flops), "gsize": list(ln.gsize)})
            i += 1
    return out


def table(rows: list[dict], key, top: int) -> list[str]:
    tot = sum(r["ms"] for r in rows)
    agg: dict = defaultdict(lambda: [0.0, 0, 0])
    for r in rows:
        a = agg[key(r)]
        a[0] += r["ms"]
        a[1] += 1
        a[2] += r["flops"]
    lines = []
    for k, (ms, n, fl) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:top]:
        gf = f"{fl / ms / 1e6:.0f}" if fl and ms else ""
        lines.append(f"| {k} | {n} | {ms:.2f} | {100 * ms / tot:.1f} % | {gf} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="last,full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=str(HERE / "results" / "plan_profile.json"))
    a = ap.parse_args()
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    rng = np.random.default_rng(0)
    result = {"meta": {"date": time.strftime("%Y-%m-%d"), "size": a.size, "batch": a.batch, "reps": a.reps},
              "runs": []}
    keep = []   # NOTE: plans stay alive to the end (NVIDIA's driver crashed tearing one down mid-run)
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=1000, size=a.size, seed=0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch)
        last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
        for stage in a.stages.split(","):
            if stage == "infer":
                plan = Plan(g, batch=a.batch, trainable=set())
            else:
                plan = Plan(g, batch=a.batch, trainable=last if stage == "last" else None,
                            optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=stage == "full")
            keep.append(plan)
            rows = profile_plan(plan, x, y, a.reps)
            result["meta"]["device"] = plan.rt.info.get("device")
            result["runs"].append({"model": model, "stage": stage, "launches": rows})
            tot = sum(r["ms"] for r in rows)
            print(f"\n### {model} {stage}: {len(rows)} launches, {tot:.2f} ms of kernel time "
                  f"({plan.rt.info.get('device')})")
            for title, key in (("phase", lambda r: r["phase"]), ("kernel", lambda r: r["kernel"]),
                               ("op/phase/kernel", lambda r: f"{r['op']} {r['phase']} {r['kernel']}"),
                               ("launch", lambda r: f"{r['label']} {r['kernel']} {r['gsize']}")):
                print(f"\n| {title} | launches | ms | share | GFLOP/s |\n|---|---|---|---|---|")
                print("\n".join(table(rows, key, a.top if title != "phase" else 5)))
            sys.stdout.flush()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
