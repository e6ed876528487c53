"""Pick the OpenCL device: THOMAS_CL_DEVICE / --cl-device, else the first GPU, else the first CPU.

Spec forms: "P:D" (platform and device index), or a case-insensitive substring of the device or
platform name ("nvidia", "pthread", "adreno").
"""
from __future__ import annotations

import os

import pyopencl as cl

from ...errors import ThomasError


class NoDeviceError(ThomasError):
    """No OpenCL device, or none matching the request."""


def all_devices() -> list[tuple[int, int, cl.Device]]:
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return []
    out = []
    for pi, p in enumerate(platforms):
        try:
            devs = p.get_devices()
        except cl.Error:
            continue
        out.extend((pi, di, d) for di, d in enumerate(devs))
    return out


def select_device(spec: str | None = None) -> cl.Device:
    spec = spec if spec is not None else os.environ.get("THOMAS_CL_DEVICE") or None
    devs = all_devices()
    if not devs:
        raise NoDeviceError("no OpenCL device found (install a driver, or pocl-binary-distribution "
                            "for a CPU device)")
    listing = ", ".join(f"{p}:{d} {dev.name.strip()}" for p, d, dev in devs)
    if spec:
        if ":" in spec and all(part.isdigit() for part in spec.split(":", 1)):
            p, d = (int(v) for v in spec.split(":", 1))
            for pi, di, dev in devs:
                if (pi, di) == (p, d):
                    return dev
            raise NoDeviceError(f"no OpenCL device {spec} (have: {listing})")
        s = spec.lower()
        for _, _, dev in devs:
            if s in dev.name.lower() or s in dev.platform.name.lower():
                return dev
        raise NoDeviceError(f"no OpenCL device matches '{spec}' (have: {listing})")
    for _, _, dev in devs:
        if dev.type & cl.device_type.GPU:
            return dev
    return devs[0][2]


def kind_of(dev: cl.Device) -> str:
    """'gpu' or 'cpu': which kernel variants and default tiles suit the device."""
    return "cpu" if dev.type & cl.device_type.CPU else "gpu"


def describe(dev: cl.Device) -> dict:
    exts = dev.extensions.split()
    return {"platform": dev.platform.name.strip(), "device": dev.name.strip(), "vendor": dev.vendor.strip(),
            "driver": dev.driver_version, "version": dev.version, "kind": kind_of(dev),
            "compute_units": dev.max_compute_units, "global_mem": dev.global_mem_size,
            "local_mem": dev.local_mem_size, "max_alloc": dev.max_mem_alloc_size,
            "max_work_group": dev.max_work_group_size, "max_work_items": list(dev.max_work_item_sizes),
            "fp16": "cl_khr_fp16" in exts, "fp64": "cl_khr_fp64" in exts}
