"""Build kernels/*.cl with -D tunables, cache binaries on disk, raise the build log verbatim.

    prg = load_program(ctx, device, "gemm.cl", {"TM": 8, "TN": 8})

Cache key: (device name, platform, driver version, OpenCL version, source hash incl. common.cl,
sorted defines). Cache dir: $THOMAS_CL_CACHE, else $XDG_CACHE_HOME/thomas/cl, else ~/.cache/thomas/cl.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyopencl as cl

from ...errors import ThomasError
from ...resources import kernels_dir

COMMON = "common.cl"
_memory: dict[str, cl.Program] = {}


class KernelBuildError(ThomasError):
    """An OpenCL program failed to build; the message carries the compiler's log verbatim."""


def cache_dir() -> Path:
    if os.environ.get("THOMAS_CL_CACHE"):
        return Path(os.environ["THOMAS_CL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "thomas" / "cl"


def source_of(name: str) -> str:
    root = kernels_dir()
    path = root / name
    if not path.is_file():
        raise KernelBuildError(f"kernel file {name} not found in {root}")
    common = (root / COMMON).read_text() if name != COMMON else ""
    return common + f"\n#line 1 \"{name}\"\n" + path.read_text()


def options_of(defines: dict | None) -> list[str]:
    opts = []
    for k, v in sorted((defines or {}).items()):
        opts.append(f"-D{k}" if v is None else f"-D{k}={v}")
    return opts


def _has_kernels(prg: cl.Program) -> bool:
    try:
        return prg.get_info(cl.program_info.NUM_KERNELS) > 0
    except cl.Error:
        return False


def forget_programs(ctx: cl.Context) -> None:
    """Drop the programs built for `ctx` (its Runtime is closing: they must go before the context,
    and a later context reusing the same id() must not find them)."""
    prefix = f"{id(ctx)}:"
    for k in [k for k in _memory if k.startswith(prefix)]:
        del _memory[k]


def load_program(ctx: cl.Context, device: cl.Device, name: str, defines: dict | None = None) -> cl.Program:
    src = source_of(name)
    opts = options_of(defines)
    if device.type & cl.device_type.CPU:
        # NOTE: CPU devices load a float8 from any float address; GPUs fault on a misaligned vector
        # access (NVIDIA: the context is lost), so the kernels' unaligned-vector-pointer trick is CPU-only
        opts.append("-DCPU_DEVICE=1")
    ident = "\0".join([device.name, device.platform.name, device.driver_version, device.version,
                       hashlib.sha256(src.encode()).hexdigest(), " ".join(opts)])
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    mem_key = f"{id(ctx)}:{key}"
    if mem_key in _memory:
        return _memory[mem_key]
    path = cache_dir() / f"{key}.bin"
    prg = None
    if path.is_file():
        try:
            prg = cl.Program(ctx, [device], [path.read_bytes()]).build(options=opts)
            if not _has_kernels(prg):
                prg = None
        except (cl.Error, OSError):
            prg = None  # stale, foreign or truncated binary: rebuild from source
    if prg is None:
        try:
            prg = cl.Program(ctx, src).build(options=opts, devices=[device], cache_dir=False)
        except cl.RuntimeError as e:
            raise KernelBuildError(f"{name} failed to build for {device.name.strip()} with "
                                   f"{' '.join(opts) or 'no defines'}:\n{e}") from None
        if not _has_kernels(prg):
            # NOTE: seen with a corrupted PoCL kernel cache: the build "succeeds" with no kernels.
            raise KernelBuildError(f"{name} built without kernels on {device.name.strip()} "
                                   f"(corrupt driver cache? clear POCL_CACHE_DIR / ~/.cache/pocl)")
        if "portable computing language" in device.platform.name.lower():
            # NOTE: on PoCL, fetching BINARIES compiles every kernel of the program for every
            # local size (116 s for the GPU-shaped GEMM file); PoCL keeps its own kernel cache.
            _memory[mem_key] = prg
            return prg
        try:
            (binary,) = prg.get_info(cl.program_info.BINARIES)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(binary)
            os.replace(tmp, path)
        except (cl.Error, OSError, ValueError):
            pass  # caching is an optimisation; a read-only home must not stop training
    _memory[mem_key] = prg
    return prg
