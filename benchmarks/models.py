"""Whole-model step times of the numpy_ref backend (the serial single-core CPU baseline) beside
PyTorch CPU running the same graph and weights, each in a fresh process with pinned threads.

    python benchmarks/models.py [--models mobilenet_v2,alexnet] [--size 224] [--batch 8] [--reps 3]

Prints a Markdown table and writes benchmarks/results/models.json. Medians of `--reps` steps after
one warm-up step. Stages: infer (eval forward), last (classifier only), full (all layers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def measure(engine: str, model: str, size: int, batch: int, reps: int) -> dict:
    """Runs inside the child process (threads already pinned by the environment)."""
    import numpy as np

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from thomas_cli import zoo

    g = zoo.build(model, num_classes=1000, size=size, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    res = {}
    if engine == "numpy":
        from device_agent.backends.numpy import NumpyRef

        def step(stage):
            be = engines[stage]
            if stage == "infer":
                be.forward(x)
            else:
                be.forward(x, training=True, bn_batch_stats=stage == "full", grad=True)
                be.loss(y)
                be.backward()

        engines = {"infer": NumpyRef(g), "last": NumpyRef(g, trainable=last), "full": NumpyRef(g)}
    else:
        import torch
        from torch_twin import TorchTwin

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        twins = {"infer": TorchTwin(g), "last": TorchTwin(g, trainable=last), "full": TorchTwin(g)}
        inp = g.inputs[0].name

        def step(stage):
            tw = twins[stage]
            if stage == "infer":
                with torch.no_grad():
                    tw.forward({inp: xt}, training=False)
            else:
                out = tw.forward({inp: xt}, training=False, bn_batch_stats=stage == "full")["logits"]
                tw.grads(tw.loss(out, yt))

    for stage in ("infer", "last", "full"):
        step(stage)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step(stage)
            ts.append((time.perf_counter() - t0) * 1e3)
        res[stage] = float(np.median(ts))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "MODEL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child[0], a.child[1], a.size, a.batch, a.reps)))
        return
    rows = []
    for model in a.models.split(","):
        for engine, threads in (("numpy", 1), ("torch", 1), ("torch", 2)):
            env = dict(os.environ, THOMAS_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                       OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--child", engine, model, "--size", str(a.size),
                   "--batch", str(a.batch), "--reps", str(a.reps)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append({"model": model, "engine": engine, "threads": threads, **json.loads(r.stdout.splitlines()[-1])})
            print(rows[-1], file=sys.stderr)
    import numpy
    import torch

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__, "size": a.size, "batch": a.batch, "reps": a.reps}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"| model | engine | threads | infer ms | last-layer step ms | full step ms |  ({a.size}/{a.batch})")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['engine']} | {r['threads']} | {r['infer']:.0f} | {r['last']:.0f} | {r['full']:.0f} |")


if __name__ == "__main__":
    main()
