"""Which kernels make a GPU driver reserve memory: each kernel a training Plan launches, with the
private (per-work-item) and static local memory its build reports, and the device memory the driver
still holds once the Plan's buffers are gone.

    python benchmarks/kernel_memory.py [--models mobilenet_v2,alexnet] [--size 224] [--batch 32]
                                       [--stages full,full_rc_mixed] [--top 15]

CUDA (NVIDIA's OpenCL) backs private memory that spills out of registers with a context-wide
reservation of (largest per-thread private bytes) x (resident threads of the whole GPU): one kernel
with 2 KB of private memory costs ~0.5 GiB on an H100 however small the model. The table lists the
largest private sizes first; on NVIDIA the driver column (nvidia-smi's used memory after the Plan is
collected, minus a runtime-only baseline) shows what the reservation came to.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from device_memory import _plan_kwargs, gpu_used_mib  # noqa: E402


def kernel_rows(plan, device) -> list[dict]:
    import pyopencl as cl

    info = cl.kernel_work_group_info
    rows = {}
    for ln in plan.fw_launches + plan.bw_launches + plan.opt_launches:
        k = ln.kernel
        name = k.function_name
        if name in rows:
            continue
        rows[name] = {"kernel": name, "private": int(k.get_work_group_info(info.PRIVATE_MEM_SIZE, device)),
                      "local": int(k.get_work_group_info(info.LOCAL_MEM_SIZE, device)),
                      "wg": int(k.get_work_group_info(info.WORK_GROUP_SIZE, device))}
    return sorted(rows.values(), key=lambda r: -r["private"])


def main() -> None:
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.backends.opencl.runtime import shared_runtime
    from thomas_cli import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,alexnet")
    ap.add_argument("--stages", default="full,full_rc_mixed")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=str(HERE / "results" / "kernel_memory.json"))
    a = ap.parse_args()
    rt = shared_runtime()
    base = gpu_used_mib()
    out = {"device": rt.info["device"], "driver": rt.info["driver"], "baseline_mib": base, "runs": []}
    rng = np.random.default_rng(0)
    for model in a.models.split(","):
        for stage in a.stages.split(","):
            g = zoo.build(model, num_classes=1000, size=a.size, seed=0)
            x = rng.standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
            y = rng.integers(0, 1000, a.batch)
            plan = Plan(g, batch=a.batch, trainable=None, optimizer=OptimConfig("sgd", momentum=0.9),
                        bn_batch_stats=True, runtime=rt, **_plan_kwargs(stage))
            plan.train_step(x, y, lr=1e-4)
            held = gpu_used_mib()
            rows = kernel_rows(plan, rt.device)
            plan.release()
            del plan
            gc.collect()
            after = gpu_used_mib()
            run = {"model": model, "stage": stage, "plan_held_mib": held and held - base,
                   "after_collect_mib": after and after - base, "kernels": rows}
            out["runs"].append(run)
            print(f"{model}/{stage}: driver {run['plan_held_mib']} MiB with the Plan, "
                  f"{run['after_collect_mib']} MiB after it is collected (baseline {base} MiB)")
            for r in rows[:a.top]:
                print(f"  {r['kernel']:<32} private {r['private']:>6} B  local {r['local']:>6} B  wg {r['wg']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
