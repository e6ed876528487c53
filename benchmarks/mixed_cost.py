"""What dtype "mixed" (tensors saved for the backward kept as halves) saves and costs per training step.

    python benchmarks/mixed_cost.py [--models mobilenet_v2] [--size 224] [--batch 32] [--rounds 3]
                                    [--stages full,last] [--bytes-only]

For each model and stage, three Plans over the same graph: float32, mixed with the packed arena
(the default off NVIDIA) and mixed on whole buffers (NVIDIA's default). Reported: each Plan's
memory() (peak, activations, by dtype) and, unless --bytes-only, the medians of wall time and
process CPU time (all PoCL threads) over `rounds` steps taken in turn (ABCABC..., the first round
a warm-up), as benchmarks/recompute_cost.py does, so drift and neighbours' load hit all alike.
Stages: full (all layers, BN batch statistics, SGD momentum, recompute as the job default),
last (classifier only). Writes benchmarks/results/mixed_cost.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

VARIANTS = {"float32": dict(dtype="float32"), "mixed": dict(dtype="mixed", packed=True),
            "mixed_whole": dict(dtype="mixed", packed=False)}


def _plans(g, stage, batch, recompute):
    from device_agent.backends.opencl.plan import OptimConfig, Plan

    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    return {name: Plan(g, batch=batch, trainable=last if stage == "last" else None,
                       optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=stage == "full",
                       recompute=recompute, **kw) for name, kw in VARIANTS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2")
    ap.add_argument("--stages", default="full,last")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-recompute", action="store_true", help="keep BN outputs (the job's recompute: false)")
    ap.add_argument("--bytes-only", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "mixed_cost.json"))
    a = ap.parse_args()
    import pyopencl as cl
    from plan_models import alternate_steps

    from thomas_cli import zoo

    rows = []
    dev = None
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=1000, size=a.size, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch)
        for stage in a.stages.split(","):
            plans = _plans(g, stage, a.batch, not a.no_recompute)
            if a.bytes_only:
                wall = cpu = {k: [] for k in plans}
            else:
                wall, cpu = alternate_steps(plans, x, y, a.rounds)
            for name, plan in plans.items():
                m = plan.memory()
                dev = plan.rt.device
                rows.append({"model": model, "stage": stage, "variant": name, "peak": m["peak"],
                             "activations": m["activations"], "by_dtype": m["by_dtype"],
                             "halved": len(plan.halved), "packed": plan.packed,
                             "wall_ms": float(np.median(wall[name])) if wall[name] else None,
                             "cpu_ms": float(np.median(cpu[name])) if cpu[name] else None})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            for plan in plans.values():
                plan.release()
                plan.store.release()
    meta = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "device": dev.name.strip() if dev else None,
            "platform": f"{dev.platform.name} {dev.platform.version}" if dev else None,
            "driver": dev.driver_version if dev else None, "size": a.size, "batch": a.batch, "rounds": a.rounds,
            "recompute": not a.no_recompute, "pyopencl": cl.VERSION_TEXT}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"| model | stage | variant | peak MB | x float32 | activations MB | float16 MB | float32 MB | slack MB |"
          f" wall ms | cpu ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {(r["model"], r["stage"]): r for r in rows if r["variant"] == "float32"}
    mb = lambda v: f"{v / 2**20:.1f}"  # noqa: E731
    for r in rows:
        b = base[r["model"], r["stage"]]
        d = r["by_dtype"]
        ms = lambda v: "" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"| {r['model']} | {r['stage']} | {r['variant']} | {mb(r['peak'])} | {r['peak'] / b['peak']:.3f} | "
              f"{mb(r['activations'])} | {mb(d.get('float16', 0))} | {mb(d.get('float32', 0))} | "
              f"{mb(d.get('slack', 0))} | {ms(r['wall_ms'])} | {ms(r['cpu_ms'])} |")


if __name__ == "__main__":
    main()
