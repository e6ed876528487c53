"""The pieces op launchers use: a Runtime (context, in-order queue, tuning), TensorRef, NodeIO,
and the LaunchBuilder that records pre-bound kernel launches for a Plan.

A launcher (ClSpec.forward/backward in an op module) looks like:

    def cl_forward(b, io):
        (x,), (y,) = io.x, io.y
        b.launch("activation.cl", "relu_fwd", (x.size,), None, x, y, np.int32(x.size))

Each `launch` creates its own cl.Kernel with its arguments bound once, so replaying a step is
just enqueueing; arguments that change per step (learning rate, dropout seed) are named in `dyn`
and set from the step's values right before the enqueue.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyopencl as cl

from ...resources import configs_dir
from . import gemm as _gemm
from .device import describe, kind_of, select_device
from .limits import Limits, check_launch, fit_local, kernel_limits, pick_wg, profile_named
from .loader import forget_programs, load_program


def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


class Tuning:
    """Kernel parameters per op family: configs/tuning/*.json, vendor -> device -> op -> params,
    falling back to vendor 'default', then the 'default' section for the device kind (gpu/cpu)."""

    def __init__(self, device: cl.Device, extra: dict | None = None, profile: dict | None = None):
        # a profile (limits.py) stands for a phone GPU: its vendor/device strings pick the tuning
        self.vendor = profile["vendor"] if profile else device.vendor.strip()
        self.device = profile["device"] if profile else device.name.strip()
        self.kind = profile.get("kind", "gpu") if profile else kind_of(device)
        self.key = device_key(device) + (f"|{profile['name']}" if profile else "")
        self.db: dict = {}
        root = configs_dir() / "tuning"
        for path in sorted(root.glob("*.json")):
            self._merge(json.loads(path.read_text()))
        if extra:
            self._merge(extra)
        self.tuned = read_device_tuning(self.key)   # `thomas tune` winners for this device + driver
        self.override: dict = {}                    # op -> params, set by `thomas tune` while it times

    def _merge(self, doc: dict) -> None:
        for k, v in doc.items():
            if k.startswith("_"):
                continue
            if isinstance(v, dict) and isinstance(self.db.get(k), dict):
                _deep_merge(self.db[k], v)
            else:
                self.db[k] = v

    def get(self, op: str) -> dict:
        out: dict = {}
        out.update(self.db.get("default", {}).get(self.kind, {}).get(op, {}))
        vendor = next((v for k, v in self.db.get("vendors", {}).items() if k.lower() in self.vendor.lower()), {})
        out.update(vendor.get("default", {}).get(op, {}))
        for dev_key, dev_params in vendor.items():
            if dev_key != "default" and dev_key.lower() in self.device.lower():
                out.update(dev_params.get(op, {}))
        out.update(self.tuned.get(op, {}).get("params", {}))
        out.update(self.override.get(op, {}))
        return out


def tuning_file() -> Path:
    """The device's own tuning file (THOMAS_TUNING_FILE, else tuning/devices.json under the agent's
    working directory, i.e. the device root): {"<device>|<driver>": {op: {"params": {...}, ...}}}."""
    return Path(os.environ.get("THOMAS_TUNING_FILE") or Path("tuning") / "devices.json")


def device_key(device: cl.Device) -> str:
    return f"{device.name.strip()}|{device.driver_version.strip()}"


def read_device_tuning(key: str) -> dict:
    """This device's winners; a corrupt file is a warning on stderr and the defaults, never an error."""
    path = tuning_file()
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        entry = doc.get(key, {}) if isinstance(doc, dict) else None
        if not isinstance(entry, dict) or not all(isinstance(v, dict) and isinstance(v.get("params", {}), dict)
                                                  for v in entry.values()):
            raise ValueError("not a {device|driver: {op: {params: {...}}}} object")
        return entry
    except (OSError, ValueError) as e:
        print(f"thomas: warning: ignoring the tuning file {path} ({e}); using the default tuning",
              file=sys.stderr, flush=True)
        return {}


def _deep_merge(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _deep_merge(a[k], v)
        else:
            a[k] = v


class Runtime:
    """One device, one context, one in-order queue.

    Host <-> device copies go through `write` / `read`, which count the bytes in `moved`
    ({"to_device": n, "to_host": n}): what a training epoch moves is measurable (tests,
    benchmarks) without a profiler.

    Teardown: `close()` (also at interpreter exit, and when the Runtime is collected) releases what
    lives on the device in the order drivers expect: wait for the queue; every Plan's kernels and
    buffers (Plan.release), every Store's sub-buffers before their parents (Store.release); the
    programs built for this context; the queue; the context last. NVIDIA's driver segfaults when
    buffers, kernels or the queue outlive the context, which Python's module teardown otherwise
    allows. Plans and Stores register with `own` (weakly) and release themselves in the same
    order when they are collected earlier."""

    def __init__(self, device: cl.Device | str | None = None, profile: str | dict | None = None):
        self.device = device if isinstance(device, cl.Device) else select_device(device)
        profile = profile if profile is not None else os.environ.get("THOMAS_CL_PROFILE") or None
        self.profile = profile_named(profile) if isinstance(profile, str) else profile
        self.limits = Limits.of(self.device, self.profile)
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx)
        self._copy_queue = None    # a second in-order queue for uploads beside the kernels (staging.py)
        self.kind = self.profile.get("kind", "gpu") if self.profile else kind_of(self.device)
        self.tuning = Tuning(self.device, profile=self.profile)
        self._klimits: dict = {}
        self.align = max(256, self.device.mem_base_addr_align // 8)
        self.info = describe(self.device)
        self.moved = {"to_device": 0, "to_host": 0}
        self.closed = False
        self._owners = weakref.WeakSet()
        _ALL.add(self)

    def own(self, owner) -> None:
        """Register a Plan or Store (anything with `release()` and RELEASE_ORDER) for close()."""
        self._owners.add(owner)

    def close(self) -> None:
        """Release every OpenCL object of this Runtime, children before parents (see the class
        docstring); the Runtime and everything built on it are unusable afterwards. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.queue.finish()
        except cl.Error:
            pass            # a failed device: release what we can all the same
        for q in (self._copy_queue,):
            try:
                q is None or q.finish()
            except cl.Error:
                pass
        for owner in sorted(self._owners, key=lambda o: o.RELEASE_ORDER):
            owner.release()
        forget_programs(self.ctx)
        self._copy_queue = self.queue = None   # clReleaseCommandQueue, then the context
        self.ctx = None

    def __del__(self):
        if not getattr(self, "closed", True):
            self.close()

    def write(self, buf: cl.Buffer, host: np.ndarray, offset: int = 0, blocking: bool = True) -> None:
        """host array -> buf at byte `offset`. Non-blocking: keep `host` alive until the queue ran."""
        self.moved["to_device"] += host.nbytes
        cl.enqueue_copy(self.queue, buf, host, dst_offset=int(offset), is_blocking=blocking)

    def copy_queue(self) -> cl.CommandQueue:
        """The upload queue (made on first use): copies enqueued there run beside the kernels of
        `queue`; order them against it with events (staging.py)."""
        if self._copy_queue is None:
            self._copy_queue = cl.CommandQueue(self.ctx)
        return self._copy_queue

    def read(self, host: np.ndarray, buf: cl.Buffer, offset: int = 0, blocking: bool = True) -> np.ndarray:
        """buf from byte `offset` -> host array (its size); returns `host`."""
        self.moved["to_host"] += host.nbytes
        cl.enqueue_copy(self.queue, host, buf, src_offset=int(offset), is_blocking=blocking)
        return host

    def zeros(self, nbytes: int) -> cl.Buffer:
        """A new buffer of zero bytes (filled on the device: nothing crosses from the host)."""
        buf = self.alloc(nbytes)
        cl.enqueue_fill_buffer(self.queue, buf, np.zeros(1, np.float32), 0, max(int(nbytes), 4) // 4 * 4)
        return buf

    def program(self, name: str, defines: dict | None = None) -> cl.Program:
        return load_program(self.ctx, self.device, name, defines)

    def kernel(self, name: str, kernel: str, defines: dict | None = None) -> cl.Kernel:
        return cl.Kernel(self.program(name, defines), kernel)

    def kernel_limits(self, name: str, kernel: str, defines: dict | None = None):
        """limits.KernelLimits of one kernel build on this device (capped by the active profile);
        queried on a fresh kernel object, so the static local memory excludes __local arguments."""
        key = (name, kernel, tuple(sorted((defines or {}).items())))
        if key not in self._klimits:
            self._klimits[key] = kernel_limits(self.kernel(name, kernel, defines), self.device, self.limits, kernel)
        return self._klimits[key]

    def alloc(self, nbytes: int) -> cl.Buffer:
        return cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 4))


_SHARED: dict = {}


_ALL: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


def shared_runtime(device: str | None = None) -> "Runtime":
    """One Runtime (context + queue) per device spec per process, shared by every engine."""
    key = device or ""
    if key not in _SHARED or _SHARED[key].closed:
        _SHARED[key] = Runtime(device)
    return _SHARED[key]


@atexit.register
def close_all() -> None:
    """Close every Runtime still alive. Registered when this module is imported, after pyopencl
    registered its own exit hook, so it runs first (hooks run last-in first-out), and before module
    teardown; then pyopencl's memoization caches let go of the contexts too."""
    for rt in list(_ALL):
        rt.close()
    _SHARED.clear()
    from pyopencl.tools import clear_first_arg_caches

    clear_first_arg_caches()


@dataclass
class TensorRef:
    """A tensor living in a device buffer (a sub-buffer of an arena, or a whole buffer)."""

    name: str
    shape: tuple
    buf: cl.Buffer
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass
class NodeIO:
    """What a launcher sees of one node. gx[i] is None where no gradient is wanted."""

    name: str
    op: str
    attrs: dict
    x: list[TensorRef]
    y: list[TensorRef]
    gx: list[TensorRef | None] = field(default_factory=list)
    gy: list[TensorRef] = field(default_factory=list)
    state: dict[str, TensorRef] = field(default_factory=dict)
    workspace: TensorRef | None = None
    training: bool = False          # dropout active
    bn_batch_stats: bool = False    # BatchNorm normalises with batch statistics (and updates running stats)
    act: str | None = None          # Conv2d/Gemm: an activation fused into the forward ("relu", "relu6")


@dataclass
class Launch:
    kernel: cl.Kernel
    gsize: tuple
    lsize: tuple | None
    label: str
    dyn: dict[int, str] = field(default_factory=dict)   # arg index -> name of a per-step value
    flops: int = 0
    # NOTE: clSetKernelArg does not retain buffers; holding the args here keeps a launcher's
    # temporary buffers alive as long as the launch list that uses them.
    args: tuple = ()
    tag: str = ""            # what `thomas tune` groups launches by (a GEMM's shape key)


def _arg(a):
    if isinstance(a, TensorRef):
        return a.buf
    if isinstance(a, (bool, np.bool_)):
        return np.int32(a)
    if isinstance(a, (int, np.integer)) and not isinstance(a, (np.int32, np.uint32, np.int64, np.uint64)):
        return np.int32(a)
    if isinstance(a, float) and not isinstance(a, np.floating):
        return np.float32(a)
    return a


class LaunchBuilder:
    """Records launches into `self.launches`; used by the Plan while it builds a launch list."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.kind = rt.kind
        self.launches: list[Launch] = []
        self.label = ""

    def tuning(self, op: str) -> dict:
        return self.rt.tuning.get(op)

    def launch(self, file: str, kernel: str, gsize, lsize, *args, defines: dict | None = None,
               dyn: dict[int, str] | None = None, flops: int = 0) -> Launch:
        """Bind args once; gsize is rounded up to a multiple of lsize (kernels bound-check).
        A FlexLocal lsize (ops/_cl.py: elt, row_local_size) shrinks to fit the kernel's limits; any
        other lsize must fit them (limits.check_launch: a LaunchLimitError names kernel and limit)."""
        k = self.rt.kernel(file, kernel, defines)
        for i, a in enumerate(args):
            k.set_arg(i, _arg(a))
        gsize = tuple(int(g) for g in gsize)
        kl = self.rt.kernel_limits(file, kernel, defines)
        if lsize is not None and getattr(lsize, "flexible", False):
            lsize = fit_local(lsize, kl)
        check_launch(kl, f"{file}:{kernel}", lsize, args)
        if lsize is not None:
            lsize = tuple(int(v) for v in lsize)
            gsize = tuple(round_up(g, v) for g, v in zip(gsize, lsize))
        rec = Launch(k, gsize, lsize, self.label or kernel, dict(dyn or {}), flops, tuple(args))
        self.launches.append(rec)
        return rec

    def pick_wg(self, file: str, kernel: str, want: int, *, pow2: bool = False, local_per_item: int = 0,
                defines: dict | None = None) -> int:
        """A 1-D work-group size for `kernel` that this device (and active profile) allows: limits.pick_wg."""
        return pick_wg(want, self.rt.kernel_limits(file, kernel, defines), pow2=pow2, local_per_item=local_per_item)

    # the GEMM launcher (gemm.py), offered to op launchers so that no op imports a backend
    def gemm(self, ta: bool, tb: bool, M: int, N: int, K: int, A, a_off: int, lda: int, B, b_off: int,
             ldb: int, C, c_off: int, ldc: int, *args, **kwargs) -> list:
        """Record C = alpha * op(A) @ op(B) + beta * C (+ bias, act): see gemm.gemm."""
        return _gemm.gemm(self, ta, tb, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, *args, **kwargs)

    def colsum(self, g, s, rows: int, cols: int, label: str | None = None) -> Launch:
        """g (rows, cols) -> s (cols,) = g.sum(axis=0), deterministic."""
        return _gemm.colsum(self, g, s, rows, cols, label)

    def gemm_family(self) -> str:
        """"gpu" (local-memory tiles) or "cpu" (register tiles): the GEMM kernels this device runs."""
        return _gemm.gemm_config(self)[0]

    @staticmethod
    def gemm_scratch_floats(M: int, N: int, K: int, batch: int = 1, reduce_batch: bool = False) -> int:
        """Floats of partial products a GEMM of this shape can use (ClSpec.gemms)."""
        return _gemm.split_floats(M, N, K, batch, reduce_batch)


def replay(queue: cl.CommandQueue, launches: list[Launch], values: dict | None = None) -> None:
    """Enqueue a launch list; no host synchronisation."""
    for ln in launches:
        if ln.dyn:
            for idx, key in ln.dyn.items():
                ln.kernel.set_arg(idx, values[key])
        cl.enqueue_nd_range_kernel(queue, ln.kernel, ln.gsize, ln.lsize)
