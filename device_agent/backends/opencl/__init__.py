"""The OpenCL backend: device selection, kernel loader with a binary cache, tuning data, and the
launch builder the Plan (device_agent/plan.py) records op launches with.

pyopencl is optional on a phone: `available()` says whether this backend can run here.
"""
from __future__ import annotations


def available() -> bool:
    """True when pyopencl imports and at least one OpenCL device exists."""
    try:
        from .device import all_devices
    except ImportError:
        return False
    return bool(all_devices())


def __getattr__(name):
    # NOTE: lazy, so `import device_agent.backends.opencl` works without pyopencl (available() says no)
    if name in ("OpenCLEngine", "OpenCLInfer"):
        from . import engine
        return getattr(engine, name)
    raise AttributeError(name)
