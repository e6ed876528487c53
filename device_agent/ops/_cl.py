"""Small helpers the ops' OpenCL launchers share (work-group sizes, local memory, int4, copies).

Pure Python at import time: pyopencl is imported only inside the helpers, so an op module (and
the numpy reference) imports on a phone without OpenCL.
"""
from __future__ import annotations

import numpy as np

from .base import ShapeError

# Work-group size of the reduction kernels (a power of two): 256 fits every GPU work-group limit
# the agent targets (Mali's is 256 or more) and gives an 8-level tree; tuning data may lower it.
REDUCE_WG = 256
# Short reductions (<= this many values per group) get groups of this size instead. Only these
# two sizes are used: drivers such as PoCL compile a kernel once per work-group size.
SMALL_WG = 64

# Work-group size of the one-work-item-per-element kernels. Set explicitly (LaunchBuilder rounds
# the global size up; the kernels bound-check): a driver left to choose may pick 1 for odd sizes,
# and PoCL compiles a kernel once per work-group size it meets.
ELT_WG = 64

# The activation fused into a launch's epilogue, as kernels take it (gemm.cl's bias_mode bits 2-3,
# conv2d.cl's and batchnorm.cl's act argument).
ACTS = {None: 0, 0: 0, "relu": 1, "relu6": 2}


def act_defines(b, t) -> dict | None:
    """Build defines for a kernel reading activation `t` through common.cl's LOAD_ACT: -DACT_HALF when
    the Plan hands it over as halves (dtype "mixed": a saved tensor kept as float16). `b` (the launch
    builder) is where a device-specific way of reading them would be chosen."""
    return {"ACT_HALF": None} if getattr(t, "dtype", None) is not None and t.dtype.itemsize == 2 else None


class FlexLocal(tuple):
    """A local size the launch may shrink (or round to the wave) to fit the kernel's limits on the
    device (LaunchBuilder.launch -> limits.fit_local): for kernels that bound-check every work-item,
    whatever the group. Slicing and `+` keep it flexible."""

    flexible = True

    def __getitem__(self, i):
        v = tuple.__getitem__(self, i)
        return FlexLocal(v) if isinstance(i, slice) else v

    def __add__(self, other):
        return FlexLocal(tuple(self) + tuple(other))


def elt(b) -> tuple:
    """lsize for elementwise launches: tuning "pointwise" -> "wg", default ELT_WG; fitted to each
    kernel's limits at launch (FlexLocal)."""
    return FlexLocal((int(b.tuning("pointwise").get("wg", ELT_WG)),))


def row_local_size(b) -> tuple:
    """A fixed local size for element-indexed helper kernels (reductions, im2col, ...): a 64-wide row
    on GPUs; 8 on CPUs, where PoCL builds one work-group function per local size and its own pick
    varies with the global size (every new shape would cost a compile). Fitted at launch (FlexLocal)."""
    return FlexLocal((8, 1, 1) if b.kind == "cpu" else (64, 1, 1))


def pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def reduce_wg(b, file: str, kernel: str, length: int, defines: dict | None = None, arrays: int = 1) -> int:
    """Work-group size (a power of two) for a kernel that tree-reduces `length` values per group:
    tuning "reduce" -> "wg" (default REDUCE_WG), or SMALL_WG for short reductions, capped by the
    kernel's own limits on this device (work-group size, max work-item size, and local memory for
    `arrays` __local 4-byte arrays of one entry per work-item): b.pick_wg."""
    want = int(b.tuning("reduce").get("wg", REDUCE_WG))
    if length <= SMALL_WG:
        want = min(want, SMALL_WG)
    return b.pick_wg(file, kernel, want, pow2=True, local_per_item=4 * arrays, defines=defines)


def local_floats(n: int):
    """A __local REAL[n] kernel argument."""
    import pyopencl as cl
    return cl.LocalMemory(4 * max(int(n), 1))


def int4(v) -> np.ndarray:
    """(a, b, c, d) -> an OpenCL int4 argument."""
    import pyopencl.cltypes as ct
    return ct.make_int4(*(int(e) for e in v))


def int8(v) -> np.ndarray:
    """up to 8 ints -> an OpenCL int8 argument (missing trailing entries 0)."""
    import pyopencl.cltypes as ct
    v = [int(e) for e in v]
    return ct.make_int8(*(v + [0] * (8 - len(v))))


def constant_ints(b, values):
    """A read-only device buffer holding `values` as int32 (index tables computed on the host once,
    at build time). The launch that takes it as an argument keeps it alive."""
    import pyopencl as cl
    arr = np.ascontiguousarray(values, dtype=np.int32)
    if arr.size == 0:
        arr = np.zeros(1, np.int32)
    return cl.Buffer(b.rt.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=arr)


def pad4(shape, op: str, slot: str) -> tuple:
    """shape (rank <= 4) -> the same shape with leading 1s to rank 4."""
    shape = tuple(int(d) for d in shape)
    if len(shape) > 4:
        raise ShapeError(slot, f"the OpenCL {op} handles rank <= 4, input '{slot}' has shape {shape}")
    return (1,) * (4 - len(shape)) + shape


def strides4(shape4: tuple, broadcast_to: tuple | None = None) -> tuple:
    """Element strides of a contiguous rank-4 shape; 0 along axes of size 1 stretched to
    `broadcast_to` (numpy broadcasting)."""
    st, acc = [0] * 4, 1
    for i in (3, 2, 1, 0):
        st[i] = acc
        acc *= shape4[i]
    if broadcast_to is not None:
        st = [0 if d == 1 and t != 1 else s for d, t, s in zip(shape4, broadcast_to, st)]
    return tuple(st)


def same_buffer(a, b) -> bool:
    return a.buf == b.buf


def copy(b, src, dst) -> None:
    """dst <- src (flat, same size); nothing when both are the same buffer (an aliased tensor)."""
    if same_buffer(src, dst) or src.size == 0:
        return
    b.launch("plan.cl", "copy", (src.size,), elt(b), src, dst, src.size)


def alias_forward(b, io) -> None:
    """Flatten/Reshape/Identity: y is x reinterpreted. The Plan hands both the same buffer (no
    launch); given separate buffers, copy."""
    copy(b, io.x[0], io.y[0])


def alias_backward(b, io) -> None:
    """undoes: y = x reinterpreted; gx is gy (no launch), or a copy of it."""
    if io.gx[0] is not None:
        copy(b, io.gy[0], io.gx[0])
