"""dtype "mixed" (issue 18 item 1): the tensors a backward reads are kept as 16-bit halves between
the forward and that backward; arithmetic, weights, gradients and optimizer state stay float32.

    plan = Plan(graph, 32, trainable=None, dtype="mixed")
    plan.memory()["by_dtype"]     # {"float32": ..., "float16": ..., "int32": ...}

How (Plan._recompute_lifetimes, then record.py): a saved tensor t no longer lives in float32 from
its producer to its last backward reader. Instead
  t          float32, pooled, lives over the forward only (producer .. last forward reader)
  t@half     float16, written by mixed.cl `pack_half` right after t's producer, kept until the last
             backward that reads t (the only long-lived copy: half the bytes)
  t@f32      float32, pooled, written by `unpack_half` right before the first backward reading t
             that needs float32, alive until the last one; those backwards read it in place of t
BatchNorm (HALF_READERS) reads t@half itself (batchnorm.cl through common.cl's LOAD_ACT, built with
-DACT_HALF), in its backward and when recompute rewrites its output; every other op runs its float32
kernels unchanged. The cost: a pass over each saved tensor in the forward (read 4 B, write 2 B per
element) and one per expanded tensor in the backward (read 2 B, write 4 B). docs/BACKENDS.md
"Half-precision storage" has the measurements behind these choices, the packed arena that makes the
halves pay (arena.pack), and the error budget.
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import BackendError

DTYPES = ("float32", "mixed")

# Saved inputs that must stay exact: class indices read as floats (a half holds integers exactly
# only up to 2048).
EXACT_SAVES = {("SoftmaxCrossEntropy", "x1")}


def check_dtype(dtype) -> str:
    """'float32' (default) or 'mixed'; a numpy float32 dtype is 'float32'."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        pass
    if dtype == np.float32:
        return "float32"
    raise BackendError(f"the OpenCL backend computes in float32, not {dtype} (use backend 'numpy' "
                       f"for float64, or dtype 'mixed' for halves kept for the backward)")


# Ops whose kernels read a saved input as halves themselves (common.cl LOAD_ACT, built with -DACT_HALF
# when the TensorRef is float16: ops/_cl.act_defines): their backward (and BN's recompute) gets t@half
# and no float32 expansion is written for them.
HALF_READERS = {"BatchNorm"}


def add_reader(plan, t: str, reader: str, op_name: str) -> None:
    """`reader`'s backward reads saved tensor t (through an op of type op_name: the reader's own, or
    the BN whose output recompute rewrites for it)."""
    readers = plan.halved.setdefault(t, [])
    if reader not in readers:
        readers.append(reader)
    if op_name in HALF_READERS:
        plan.direct.add((t, reader))


def default_packed(dtype: str, device) -> bool:
    """Whether a Plan built with packed=None packs its arena: THOMAS_CL_PACKED=1 / 0 when set (to
    measure either on any device), else for mixed except on NVIDIA's driver (its host blocks on
    sub-buffers overlapping one in use: plan.py)."""
    env = os.environ.get("THOMAS_CL_PACKED", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return dtype == "mixed" and "nvidia" not in device.platform.name.lower()


def keeps_half(op_name: str, save: str) -> bool:
    """Whether a saved tensor ("x0", "y0", ...) of an op may be kept as halves."""
    return (op_name, save) not in EXACT_SAVES


def halve_lifetimes(plan, life) -> None:
    """t@half from t's producer to its last backward reader, t@f32 from its first to its last reader
    that needs float32 (none when every reader reads halves: HALF_READERS)."""
    producers = plan.graph.producers()
    for t, readers in plan.halved.items():
        times = [plan.t_bw[r] for r in readers]
        start = plan.t_fw[producers[t].name]
        life.new(f"{t}@half", plan.shapes[t], start, max(times), np.float16)
        f32 = [plan.t_bw[r] for r in readers if (t, r) not in plan.direct]
        if f32:
            life.new(f"{t}@f32", plan.shapes[t], min(f32), max(f32))


def quarter(n: int) -> int:
    """Work-items of pack_half / unpack_half: four values each, the tail in the last."""
    return max(1, -(-int(n) // 4))


def pack_launches(plan, b, node) -> None:
    """After `node`'s forward: each of its outputs that a backward reads, stored as halves."""
    from ...ops._cl import elt

    for t in node.outputs:
        if t in plan.halved:
            src, dst = plan.refs[t], plan.refs[f"{t}@half"]
            b.launch("mixed.cl", "pack_half", (quarter(src.size),), elt(b), src, dst, src.size)


def expanded(plan, b, reader: str, t: str, done: set):
    """What `reader`'s backward reads for tensor t: the halves themselves for a HALF_READERS op, its
    float32 expansion when t is kept as halves for any other (the first such reader's launches write
    it: unpack_half), else t itself (or a parameter)."""
    if reader not in plan.halved.get(t, ()):
        return plan._ref(t)
    if (t, reader) in plan.direct:
        return plan.refs[f"{t}@half"]
    f32 = plan.refs[f"{t}@f32"]
    if t not in done:
        from ...ops._cl import elt

        done.add(t)
        half = plan.refs[f"{t}@half"]
        b.launch("mixed.cl", "unpack_half", (quarter(f32.size),), elt(b), half, f32, f32.size)
    return f32


def expand_saved(plan, b, node, io, done: set) -> None:
    """Before `node`'s backward: its saved tensors kept as halves are read from their float32
    expansion (and a BN output rewritten for it by recompute reads its input's: record.py)."""
    op, a = plan.specs[node.name]
    for s in op.cl.saved(a):
        kind, idx = s[0], int(s[1:])
        t = (node.inputs if kind == "x" else node.outputs)[idx]
        if node.name in plan.halved.get(t, ()):
            (io.x if kind == "x" else io.y)[idx] = expanded(plan, b, node.name, t, done)


def bytes_by_dtype(plan) -> dict[str, int]:
    """Device bytes of one Plan with its store (the same total as memory()["peak"]), by element
    type. The store (weights, gradients, optimizer state) and the workspace are float32, labels
    int32; the arena counts the tensors live at its fullest step (the one that sizes it) by their
    type, and what pooling leaves unused beyond them as "slack"."""
    out: dict[str, int] = {}

    def add(key, n):
        out[key] = out.get(key, 0) + int(n)

    add("float32", plan.store.nbytes() + plan.workspace_bytes)
    for r in plan._own:
        add(r.dtype.name, r.nbytes)
    T = plan.END + 1
    live = np.zeros(T, np.int64)
    kinds: dict[str, np.ndarray] = {}
    seen = set()
    for sl in plan.life.slots.values():
        st = sl.storage
        if id(st) in seen:
            continue
        seen.add(id(st))
        a, b = max(st.start, 0), min(st.end, T - 1) + 1
        live[a:b] += st.nbytes
        kinds.setdefault(sl.dtype.name, np.zeros(T, np.int64))[a:b] += st.nbytes
    t = int(live.argmax()) if T else 0
    for k, v in kinds.items():
        add(k, v[t])
    add("slack", plan.arena_bytes - (int(live[t]) if T else 0))
    return out
