"""The device's and each kernel's real launch limits, and the work-group chooser every launch uses.

    lim = Limits.of(device)                          # CL_DEVICE_* limits of the actual device
    lim = Limits.of(device, PROFILES["adreno-6xx"])  # ... capped by a phone's (the capped-limits test device)
    kl = rt.kernel_limits("softmax.cl", "softmax_fwd")   # + CL_KERNEL_WORK_GROUP_SIZE / _PREFERRED_..._MULTIPLE
    fit_local((256,), kl)  -> (128,)  when the kernel allows only 128 work-items

A phone's driver refuses a launch whose work-group exceeds the kernel's own limit (register pressure
puts it far below the device maximum on Adreno), whose dimensions exceed the max work-item sizes, or
whose local memory exceeds CL_DEVICE_LOCAL_MEM_SIZE (4 KB on some PowerVR). Launchers pick sizes
from these limits (`fit_local`, `pick_wg`); `check_launch` refuses, before the driver does, a rigid
size that does not fit (a reduction sized for its local buffer, a GEMM tile), naming kernel and limit.

A profile (configs/tuning/mobile.json -> "profiles") names a phone GPU's limits and its vendor/device
strings; `Runtime(profile=...)` (or THOMAS_CL_PROFILE) runs the phone's tuning on the local device
(PoCL) with every limit capped to the phone's, so a GPU-shaped variant that would not launch on the
phone fails in the tests here.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import pyopencl as cl

from ...errors import ThomasError
from ...resources import configs_dir


class LaunchLimitError(ThomasError):
    """A launch's work-group or local memory exceeds what the device or kernel allows."""

    code = "launch_limits"


@dataclass(frozen=True)
class Limits:
    """Device-level launch limits (the actual device's, capped by a profile's when one is active)."""

    max_wg: int                       # CL_DEVICE_MAX_WORK_GROUP_SIZE
    item_sizes: tuple                 # CL_DEVICE_MAX_WORK_ITEM_SIZES (3 dims)
    local_mem: int                    # CL_DEVICE_LOCAL_MEM_SIZE, bytes
    kernel_wg: int = 0                # profile: per-kernel cap (register pressure); 0 = the driver's answer
    multiple: int = 0                 # profile: wave/warp width replacing the driver's preferred multiple
    kernels: dict = field(default_factory=dict)   # profile: kernel name -> its own work-group cap
    profile: str = ""

    @classmethod
    def of(cls, device: cl.Device, profile: dict | None = None) -> "Limits":
        items = tuple(int(v) for v in device.max_work_item_sizes)[:3]
        items = items + (1,) * (3 - len(items))
        lim = cls(int(device.max_work_group_size), items, int(device.local_mem_size))
        if not profile:
            return lim
        p = profile.get("limits", {})
        pitems = tuple(p.get("item_sizes", items))
        return cls(min(lim.max_wg, int(p.get("max_wg", lim.max_wg))),
                   tuple(min(a, int(b)) for a, b in zip(items, pitems)),
                   min(lim.local_mem, int(p.get("local_mem", lim.local_mem))),
                   int(p.get("kernel_wg", 0)), int(p.get("multiple", 0)),
                   {str(k): int(v) for k, v in p.get("kernels", {}).items()}, str(profile.get("name", "")))

    def wg_cap(self) -> int:
        """The most work-items any kernel may get before its own limit is known."""
        return min(self.max_wg, self.kernel_wg or self.max_wg, self.item_sizes[0])


@dataclass(frozen=True)
class KernelLimits:
    """One kernel's limits on this device: wg = min(CL_KERNEL_WORK_GROUP_SIZE, device and profile caps)."""

    wg: int
    multiple: int                    # CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE (or the profile's wave)
    item_sizes: tuple
    local_mem: int                   # bytes the device offers
    static_local: int = 0            # bytes the kernel declares itself (__local arrays)


def kernel_limits(kernel: cl.Kernel, device: cl.Device, lim: Limits, name: str = "") -> KernelLimits:
    info = cl.kernel_work_group_info
    wg = int(kernel.get_work_group_info(info.WORK_GROUP_SIZE, device))
    mult = int(kernel.get_work_group_info(info.PREFERRED_WORK_GROUP_SIZE_MULTIPLE, device))
    static = int(kernel.get_work_group_info(info.LOCAL_MEM_SIZE, device))
    caps = [wg, lim.max_wg] + [c for c in (lim.kernel_wg, lim.kernels.get(name, 0)) if c]
    return KernelLimits(min(caps), lim.multiple or max(1, mult), lim.item_sizes, lim.local_mem, static)


def pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def pick_wg(want: int, kl: KernelLimits, *, pow2: bool = False, local_per_item: int = 0) -> int:
    """A 1-D work-group size: at most `want`, the kernel's limit, max work-item size [0] and what the
    local memory holds (local_per_item bytes per work-item beside the kernel's own __local arrays);
    a power of two when `pow2` (tree reductions), else a multiple of the preferred multiple where
    one fits (a wave: idle lanes otherwise).

        pick_wg(256, KernelLimits(128, 32, (1024,)*3, 32768))          -> 128
        pick_wg(64, KernelLimits(1024, 128, (1024,)*3, 32768))         -> 128 (one wave)
        pick_wg(256, ..., pow2=True, local_per_item=8) with 1 KB local  -> 128
    """
    cap = min(int(kl.wg), int(kl.item_sizes[0]))
    if local_per_item:
        cap = min(cap, max(1, (kl.local_mem - kl.static_local) // local_per_item))
    if pow2:
        return pow2_floor(min(int(want), cap))
    m = max(1, int(kl.multiple))
    want = max(int(want), m) if m <= cap else int(want)     # less than a wave leaves lanes idle
    n = min(want, cap)
    return n // m * m if n >= m else n


def fit_local(lsize: tuple, kl: KernelLimits) -> tuple:
    """Shrink a local size (kernels that bound-check any size) to fit the kernel: each dimension to
    its max work-item size, then the first dimensions down while the product exceeds the kernel's
    limit (keeping dim 0 a multiple of the preferred multiple where possible).

        fit_local((64, 1, 1), KernelLimits(32, 32, (1024, 1024, 64), 32768)) -> (32, 1, 1)
        fit_local((16, 16), KernelLimits(128, 32, (1024, 1024, 64), 32768))   -> (16, 8)
    """
    ls = [max(1, min(int(v), int(kl.item_sizes[i]))) for i, v in enumerate(lsize)]
    while _prod(ls) > kl.wg:
        j = max((i for i in range(1, len(ls)) if ls[i] > 1), default=0)
        if j:
            ls[j] //= 2
            continue
        m = max(1, int(kl.multiple))
        ls[0] = kl.wg // m * m if kl.wg >= m else kl.wg
    return tuple(ls)


def _prod(v) -> int:
    out = 1
    for e in v:
        out *= int(e)
    return out


def local_bytes(args) -> int:
    """Bytes of the __local buffers passed as arguments (cl.LocalMemory)."""
    return sum(int(a.size) for a in args if isinstance(a, cl.LocalMemory))


def check_launch(kl: KernelLimits, label: str, lsize: tuple | None, args=()) -> None:
    """Refuse a rigid launch the device (or the active profile) would refuse, naming the limit."""
    where = f"{label}: work-group {'x'.join(str(v) for v in lsize or ())}"
    if lsize is not None:
        if _prod(lsize) > kl.wg:
            raise LaunchLimitError(f"{where} exceeds the kernel's limit of {kl.wg} work-items on this device")
        for i, v in enumerate(lsize):
            if v > kl.item_sizes[i]:
                raise LaunchLimitError(f"{where} exceeds the max work-item size {kl.item_sizes[i]} of dim {i}")
    need = kl.static_local + local_bytes(args)
    if need > kl.local_mem:
        raise LaunchLimitError(f"{label}: needs {need} bytes of local memory, the device has {kl.local_mem}")


def load_profiles() -> dict:
    """name -> profile ({"vendor", "device", "limits", ...}) from configs/tuning/*.json "profiles"."""
    out: dict = {}
    for path in sorted((configs_dir() / "tuning").glob("*.json")):
        for name, prof in json.loads(path.read_text()).get("profiles", {}).items():
            out[name] = dict(prof, name=name)
    return out


def profile_named(name: str) -> dict:
    profiles = load_profiles()
    if name not in profiles:
        raise LaunchLimitError(f"unknown device profile '{name}' (have: {', '.join(sorted(profiles))})")
    return profiles[name]


_WARNED: set = set()


def warn_skipped(what: str, why: str) -> None:
    """One stderr line per skipped tuning entry and reason (not an error: a fallback runs)."""
    key = (what, why)
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(f"thomas: warning: tuning {what} skipped ({why}); using a smaller one", file=sys.stderr, flush=True)
