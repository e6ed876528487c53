"""The OpenCL backend, all in this folder:

  device.py    device selection (THOMAS_CL_DEVICE)
  loader.py    kernels/*.cl built with -D tunables, binaries cached per device + driver
  limits.py    the device's and each kernel's launch limits (capped by a phone profile), the
               work-group chooser every launch uses, LaunchLimitError
  runtime.py   Runtime (context, queue, tuning data), TensorRef, NodeIO, the LaunchBuilder op
               launchers record with (b.launch, b.gemm, b.colsum), replay
  gemm.py      the GEMM launcher; optim.py the optimizer / clipping launchers and OptimConfig
  passes.py    graph rewrites before allocation (BN folding, fused activations)
  arena.py     activation lifetimes and liveness pooling; record.py launch recording
  plan.py      Plan: one graph + stage + batch size as a fixed launch list
  store.py     Store: one engine's weights, BN statistics, gradients and optimizer state on the
               device, shared by all its Plans (and their shared arena)
  engine.py    OpenCLEngine / OpenCLInfer: device_agent/engine.py's interface on Plans over a Store

pyopencl is optional on a phone: `available()` says whether this backend can run here; importing
this package never imports pyopencl (the names below load on first use).
"""
from __future__ import annotations


def available() -> bool:
    """True when pyopencl imports and at least one OpenCL device exists."""
    try:
        from .device import all_devices
    except ImportError:
        return False
    return bool(all_devices())


def default_dtype() -> str:
    """A job's dtype "auto" here: "mixed" on a GPU (tensors kept for the backward as halves: on the H100
    MobileNetV2's batch-32 step held 0.31x PyTorch's memory at float32's step time, docs/BENCHMARKS.md
    2026-12-07), "float32" on a CPU device (PoCL converts halves slowly, and memory is the host's)."""
    from .runtime import shared_runtime
    return "mixed" if shared_runtime().kind == "gpu" else "float32"     # (a phone profile stands for a GPU)


def engine_classes():
    """(OpenCLEngine, OpenCLInfer); ImportError without pyopencl."""
    from .engine import OpenCLEngine, OpenCLInfer
    return OpenCLEngine, OpenCLInfer


def __getattr__(name):
    # NOTE: lazy, so `import device_agent.backends.opencl` works without pyopencl (available() says no)
    if name in ("OpenCLEngine", "OpenCLInfer"):
        from . import engine
        return getattr(engine, name)
    if name in ("Plan", "OptimConfig"):
        from . import plan
        return getattr(plan, name)
    raise AttributeError(name)
