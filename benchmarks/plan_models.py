"""Whole-model step times of the OpenCL Plan beside PyTorch running the same graph and weights in
the same process (CPU threads here; CUDA with TF32 off on the accelerator machine).

    python benchmarks/plan_models.py [--models mobilenet_v2,alexnet] [--size 224] [--batch 8]
                                     [--steps 5] [--torch cpu|cuda|none]

Stages: infer (inference plan, BN folded), last (classifier only, SGD momentum), full (all layers,
BN batch statistics, SGD momentum), full_rc (full with Plan(recompute=True): BN outputs rewritten in
the backward instead of kept; the same torch step as full), full_mixed / full_rc_mixed (dtype "mixed":
tensors saved for the backward kept as halves). The Plan's step is timed twice: uploading its batch
from the host, and "staged" as the training loop runs it on a GPU (each step uploads the next batch
on the copy queue while its kernels run, Plan.stage; the step then starts from a device-to-device
copy). On CUDA torch is timed twice too: with the batch already on the GPU, and with the same
host-to-device copy in its step. Medians after two warm-up steps; each step ends with the
Plan's single sync (the loss read-back), torch steps with torch.cuda.synchronize() on CUDA.
Writes benchmarks/results/plan_models.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def median_ms(fn, steps: int) -> float:
    fn()
    fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def alternate_steps(plans: dict, x, y, rounds: int, lr: float = 1e-4, infer: bool = False) -> tuple[dict, dict]:
    """Steps of several Plans taken in turn (ABCABC..., the first round a warm-up), so drift and a shared
    CPU's load hit all alike: {name: [wall ms]}, {name: [process CPU ms (all PoCL threads)]}. `infer`:
    each Plan's inference on x instead of a training step."""
    wall, cpu = {k: [] for k in plans}, {k: [] for k in plans}
    for i in range(rounds + 1):
        for name, plan in plans.items():
            t0, c0 = time.perf_counter(), time.process_time()
            if infer:
                plan.infer(x)
            else:
                plan.train_step(x, y, lr=lr)
            if i:
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    return wall, cpu


_KEEP = []   # NOTE: plans stay alive to the end: tearing one down mid-run crashed NVIDIA's driver in GC


def bench_plan(g, stage, x, y, steps):
    """(median ms of a step that uploads its batch, median ms of a step that found its batch staged by
    the step before (the training loop on a GPU: Plan.stage during the kernels), peak bytes, device)"""
    from device_agent.backends.opencl.plan import OptimConfig, Plan

    if stage == "infer":
        plan = Plan(g, batch=len(x), trainable=set())
        fn = lambda then=None: plan.infer(x, then=then)  # noqa: E731
        stage_next = lambda: plan.stage(x)  # noqa: E731
    else:
        last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
        plan = Plan(g, batch=len(x), trainable=last if stage == "last" else None,
                    optimizer=OptimConfig("sgd", momentum=0.9), bn_batch_stats=stage.startswith("full"),
                    recompute="_rc" in stage, dtype="mixed" if stage.endswith("_mixed") else "float32")
        fn = lambda then=None: plan.train_step(x, y, lr=1e-4, then=then)  # noqa: E731
        stage_next = lambda: plan.stage(x, y)  # noqa: E731
    ms = median_ms(fn, steps)
    staged = median_ms(lambda: fn(then=stage_next), steps)
    _KEEP.append(plan)
    return ms, staged, plan.memory()["peak"], plan.rt.info["device"]


def torch_step(g, stage, x, y, device, upload=False):
    """PyTorch running the same graph and weights (TorchTwin), TF32 off: a function doing one step of
    `stage` (SGD momentum on the stage's trainable tensors); upload: each step also copies the batch
    from the host (as the Plan's step does)."""
    import torch
    from torch_twin import TorchTwin

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    tw = TorchTwin(g, trainable=last if stage == "last" else None)
    for k, p in tw.params.items():
        tw.params[k] = p.detach().to(device).requires_grad_(k in tw.trainable)
    xt = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y).to(device)
    inp = g.inputs[0].name
    opt = torch.optim.SGD([tw.params[k] for k in tw.trainable], lr=1e-4, momentum=0.9)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        xs, ys = (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) if upload else (xt, yt)
        if stage == "infer":
            with torch.no_grad():
                tw.forward({inp: xs}, training=False)
        else:
            opt.zero_grad(set_to_none=True)
            out = tw.forward({inp: xs}, training=True, bn_batch_stats=stage.startswith("full"))["logits"]
            torch.nn.functional.cross_entropy(out, ys).backward()
            opt.step()
        sync()

    return step


def bench_torch(g, stage, x, y, steps, device, upload=False):
    import torch

    step = torch_step(g, stage, x, y, device, upload)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, steps)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return ms, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="infer,last,full")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch", default="cpu", choices=["cpu", "cuda", "none"])
    ap.add_argument("--out", default=str(HERE / "results" / "plan_models.json"))
    a = ap.parse_args()
    if a.torch != "none":
        import torch  # noqa: F401  (loaded before any OpenCL context exists)
    from thomas_cli import zoo

    rng = np.random.default_rng(0)
    rows = []
    for model in a.models.split(","):
        g = zoo.build(model, num_classes=1000, size=a.size, seed=0)
        x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        y = rng.integers(0, 1000, a.batch)
        for stage in a.stages.split(","):
            ms, staged, peak, dev = bench_plan(g, stage, x, y, a.steps)
            row = {"model": model, "stage": stage, "thomas_ms": ms, "thomas_staged_ms": staged, "thomas_peak": peak,
                   "device": dev}
            if a.torch != "none":
                tms, tpeak = bench_torch(g, stage, x, y, a.steps, a.torch)
                row.update(torch_ms=tms, torch_peak=tpeak, ratio=ms / tms, ratio_staged=staged / tms)
                if a.torch == "cuda":   # the Plan's step uploads its batch; this torch step does too
                    ums, _ = bench_torch(g, stage, x, y, a.steps, a.torch, upload=True)
                    row.update(torch_upload_ms=ums, ratio_upload=ms / ums)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "python": platform.python_version(),
            "numpy": np.__version__, "size": a.size, "batch": a.batch, "steps": a.steps, "torch": a.torch,
            "threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch
        meta["torch_version"] = torch.__version__
        if a.torch == "cuda":
            meta["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"| model | stage | THOMAS OpenCL ms | staged ms | torch {a.torch} ms | ratio | staged ratio | "
          f"torch + upload ms | ratio | THOMAS peak MB | torch peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        tp = r.get("torch_peak")
        print(f"| {r['model']} | {r['stage']} | {r['thomas_ms']:.1f} | {r['thomas_staged_ms']:.1f} | "
              f"{r.get('torch_ms', nan):.1f} | {r.get('ratio', nan):.2f} | {r.get('ratio_staged', nan):.2f} | "
              f"{r.get('torch_upload_ms', nan):.1f} | {r.get('ratio_upload', nan):.2f} | "
              f"{r['thomas_peak'] / 2**20:.0f} | {'' if tp is None else f'{tp / 2**20:.0f}'} |")
    # NOTE: no os._exit: the agent's exit hook (runtime.close_all) releases every Plan, store,
    # program, queue and context in order before interpreter teardown (NVIDIA segfaulted there)


if __name__ == "__main__":
    main()
