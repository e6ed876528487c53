"""OpenCL teardown on this machine's driver (diagnostic): builds, runs and drops Plans, stores and
whole Runtimes mid-run, keeps others alive to the end in a module global, then simply returns.

    python benchmarks/teardown_check.py [--model mobilenet_v2] [--size 64] [--batch 8]

Exit 0 and "teardown ok" = every phase ran and the interpreter's exit (the agent's atexit hook,
runtime.close_all, then module teardown) released everything in order. NVIDIA's OpenCL driver
segfaulted in that teardown before Runtime.close existed (exit -11 / 139): the benchmarks ended
with os._exit(0). Each phase prints before it starts, so a crash names its phase.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

KEEP = []   # alive until interpreter exit, as benchmark scripts keep their Plans


def phase(name: str) -> None:
    print(f"phase: {name}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    from device_agent.backends.opencl.engine import OpenCLEngine, OpenCLInfer
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.backends.opencl.runtime import Runtime, shared_runtime
    from device_agent.training.optim import make_optimizer
    from thomas_cli import zoo

    g = zoo.build(a.model, num_classes=10, size=a.size, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    y = rng.integers(0, 10, a.batch)
    rt = shared_runtime()
    print("device:", rt.info["device"], rt.info["driver"], flush=True)

    phase("a Plan collected mid-run (its store's other Plan keeps training)")
    p = Plan(g, a.batch, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
    q = Plan(g, a.batch - 1, store=p.store)
    q.train_step(x[:-1], y[:-1], 0.01)
    del q
    gc.collect()
    print("  loss", p.train_step(x, y, 0.01)[0], flush=True)

    phase("a whole Plan + store collected mid-run, queue busy")
    p.train_step(x, y, 0.01)            # enqueued work still running when the Plan goes
    del p
    gc.collect()

    phase("engines closed and collected (training with a partial batch and eval, inference)")
    tr = {k for k in g.params if g.params[k].trainable}
    eng = OpenCLEngine(g, tr, make_optimizer("adam", {k: g.params[k].shape for k in sorted(tr)}),
                       bn_batch_stats=True, runtime=rt)
    eng.train_step(x, y, 1e-3)
    eng.train_step(x[:3], y[:3], 1e-3)
    print("  eval loss", eng.eval_batch(x, y)[0], flush=True)
    eng.close()
    inf = OpenCLInfer(g, runtime=rt)
    inf.forward(x)
    del eng, inf
    gc.collect()

    phase("a private Runtime (its own context) collected mid-run")
    own = Runtime()
    Plan(g, a.batch, trainable=set(), runtime=own).infer(x)
    del own
    gc.collect()

    phase("Plans kept to the end (the atexit hook releases them)")
    for b in (a.batch, 2):
        keep = Plan(g, b, optimizer=OptimConfig("sgd", momentum=0.9), runtime=rt)
        keep.train_step(x[:b], y[:b], 0.01)
        KEEP.append(keep)
    KEEP.append(Plan(g, a.batch, trainable=set(), runtime=Runtime()))   # with a Runtime nobody else holds
    print("teardown ok (now exiting normally)", flush=True)


if __name__ == "__main__":
    main()
