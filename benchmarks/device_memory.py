"""Device memory of a training step as the DRIVER sees it, beside the Plan's own count and PyTorch.

    python benchmarks/device_memory.py [--models mobilenet_v2,alexnet] [--stages full,full_rc]
                                       [--size 224] [--batch 32] [--torch cuda|none]

Each measurement runs in its own child process, the only GPU user while it runs: the child builds
the Plan (or the PyTorch twin), runs three steps, then holds everything while the parent reads the
GPU's used memory from nvidia-smi. A baseline child that only opens the same runtime (an OpenCL
context and queue with one small buffer; a CUDA context with one small tensor) is measured the same
way, so the reported figure is what the step itself holds on the device: its buffers, the driver's
allocation granularity, kernels' binaries, cuDNN workspaces, allocator caches. Stages as in
plan_models.py: full (all layers, BN batch statistics, SGD momentum), full_rc (full with
recompute), and full_mixed / full_rc_mixed (the same with dtype "mixed": saved activations in halves).
Without an NVIDIA GPU only the Plan's own count is printed. Writes benchmarks/results/device_memory.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]


def gpu_used_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


def _plan_kwargs(stage: str) -> dict:
    kw = {"recompute": "_rc" in stage}
    if stage.endswith("_mixed"):
        kw["dtype"] = "mixed"
    return kw


def child_opencl(model: str, stage: str, size: int, batch: int) -> dict:
    import pyopencl as cl

    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.backends.opencl.runtime import shared_runtime
    from thomas_cli import zoo

    rt = shared_runtime()
    keep = cl.Buffer(rt.ctx, cl.mem_flags.READ_WRITE, 4096)
    if stage == "base":
        return {"device": rt.info["device"], "keep": keep}
    g = zoo.build(model, num_classes=1000, size=size, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    plan = Plan(g, batch=batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9),
                bn_batch_stats=True, **_plan_kwargs(stage))
    for _ in range(3):
        plan.train_step(x, y, lr=1e-4)
    return {"device": rt.info["device"], "plan": plan.memory(), "keep": (keep, plan)}


def child_torch(model: str, stage: str, size: int, batch: int) -> dict:
    import torch

    from plan_models import torch_step
    from thomas_cli import zoo

    keep = torch.zeros(1024, device="cuda")
    if stage == "base":
        return {"device": torch.cuda.get_device_name(), "keep": keep}
    g = zoo.build(model, num_classes=1000, size=size, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    step = torch_step(g, "full", x, y, "cuda")
    for _ in range(3):
        step()
    return {"device": torch.cuda.get_device_name(), "allocated_peak": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.memory_reserved(), "keep": (keep, step)}


def child_main(argv: list[str]) -> None:
    which, model, stage, size, batch = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    res = (child_torch if which == "torch" else child_opencl)(model, stage, size, batch)
    keep = res.pop("keep")         # a name, not a dropped value: popping alone let the Plan be collected
    print(json.dumps(res), flush=True)
    sys.stdin.readline()           # hold every buffer until the parent has read the GPU's memory
    del keep


def measure(which: str, model: str, stage: str, size: int, batch: int) -> dict:
    p = subprocess.Popen([sys.executable, __file__, "--child", which, model, stage, str(size), str(batch)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise SystemExit(f"the {which} child for {model}/{stage} failed (exit {p.returncode})")
    res = json.loads(line)
    time.sleep(0.5)
    res["gpu_used_mib"] = gpu_used_mib()
    p.communicate("\n", timeout=120)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="full,full_rc")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--torch", default="cuda", choices=["cuda", "none"])
    ap.add_argument("--out", default=str(HERE / "results" / "device_memory.json"))
    a = ap.parse_args()
    base_cl = measure("opencl", "-", "base", a.size, a.batch)
    base_t = measure("torch", "-", "base", a.size, a.batch) if a.torch == "cuda" else None
    rows = []
    for model in a.models.split(","):
        t = measure("torch", model, "full", a.size, a.batch) if base_t else None
        for stage in a.stages.split(","):
            r = measure("opencl", model, stage, a.size, a.batch)
            row = {"model": model, "stage": stage, "device": r["device"], "plan_bytes": r["plan"]["peak"],
                   "plan_by_dtype": r["plan"].get("by_dtype")}
            if r["gpu_used_mib"] is not None and base_cl["gpu_used_mib"] is not None:
                row["driver_mib"] = r["gpu_used_mib"] - base_cl["gpu_used_mib"]
            if t is not None and t["gpu_used_mib"] is not None:
                row.update(torch_driver_mib=t["gpu_used_mib"] - base_t["gpu_used_mib"],
                           torch_allocated_peak=t["allocated_peak"], torch_reserved=t["reserved"])
                if "driver_mib" in row:
                    row["ratio"] = row["driver_mib"] / row["torch_driver_mib"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "numpy": np.__version__,
            "size": a.size, "batch": a.batch, "baseline_opencl_mib": base_cl["gpu_used_mib"],
            "baseline_torch_mib": base_t and base_t["gpu_used_mib"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("| model | stage | Plan count MiB | driver MiB | PyTorch driver MiB | PyTorch allocated peak MiB | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda k, s=1: "" if r.get(k) is None else f"{r[k] / s:.0f}"  # noqa: E731
        print(f"| {r['model']} | {r['stage']} | {f('plan_bytes', 2**20)} | {f('driver_mib')} | "
              f"{f('torch_driver_mib')} | {f('torch_allocated_peak', 2**20)} | "
              f"{'' if r.get('ratio') is None else format(r['ratio'], '.2f')} |")


if __name__ == "__main__":
    main()
