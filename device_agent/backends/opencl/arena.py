"""Activation memory of a Plan: tensor lifetimes, and buffers pooled by liveness.

    life = Lifetimes()
    life.new("conv1.out", (8, 16, 32, 32), start=0, end=0)   # produced by node 0
    life.touch("conv1.out", 3)                                 # ... read by node 3: alive over [0, 3]
    sizes = pool(life.storages(), reuse=True)                  # byte sizes of the arena's buffers

Two tensors share a buffer when their lifetimes [produced, last read] do not overlap. An alias
(Flatten, Reshape) shares its input's storage, so it stretches that storage's lifetime.

Across Plans: the Plans of one store (an engine's batch sizes, eval) share their pooled buffers
and workspace through a SharedArena: buffer i of every Plan is one device buffer, as large as the
largest Plan's buffer i. A Plan runs alone on the in-order queue and keeps nothing in its arena
from one step to the next (a step reads back what it returns before the next Plan runs), so the
engine needs the activation memory of its largest Plan, not the sum.
"""
from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field

import numpy as np

from .gemm import split_floats


@dataclass
class Storage:
    """The bytes of aliased tensors; `pool` is the index of the arena buffer holding them."""

    nbytes: int
    start: int
    end: int
    pool: int = -1
    offset: int = 0       # bytes into its pool buffer (non-zero only in a packed arena)


@dataclass
class Slot:
    name: str
    shape: tuple
    storage: Storage
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))


class Lifetimes:
    """Every activation-like tensor of a Plan (outputs, activation gradients, per-node state,
    recomputed copies, gradient temporaries) with the step range it must survive."""

    def __init__(self):
        self.slots: dict[str, Slot] = {}
        self.storage_of: dict[str, Storage] = {}

    def new(self, name: str, shape, start: int, end: int, dtype=np.float32) -> Slot:
        st = Storage(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, start, end)
        self.slots[name] = Slot(name, tuple(shape), st, np.dtype(dtype))
        self.storage_of[name] = st
        return self.slots[name]

    def alias(self, name: str, shape, of: str) -> Slot:
        """`name` is `of` reinterpreted: same storage."""
        st = self.storage_of[of]
        self.slots[name] = Slot(name, tuple(shape), st)
        self.storage_of[name] = st
        return self.slots[name]

    def merge(self, name: str, into: str) -> None:
        """`name` from now on lives in `into`'s storage, which spans both lifetimes."""
        so, si = self.storage_of[into], self.storage_of[name]
        so.start, so.end = min(so.start, si.start), max(so.end, si.end)
        self.storage_of[name] = so
        self.slots[name].storage = so

    def touch(self, name: str, t: int) -> None:
        st = self.storage_of[name]
        st.start, st.end = min(st.start, t), max(st.end, t)

    def __contains__(self, name: str) -> bool:
        return name in self.storage_of

    def storages(self) -> list[Storage]:
        """Each storage once, in the order first seen."""
        return list({id(s): s for s in self.storage_of.values()}.values())

    def shared(self, a: str, b: str) -> bool:
        sa, sb = self.storage_of.get(a), self.storage_of.get(b)
        return sa is not None and sa is sb


def pool(storages: list[Storage], reuse: bool = True) -> list[int]:
    """Greedy best fit, largest first: each storage joins the smallest buffer that is big enough
    and holds no storage whose lifetime intersects its own, else opens a new buffer (sized by
    its first, largest storage). Sets each storage's `pool`; returns the buffers' byte sizes."""
    sizes: list[int] = []
    spans: list[list[tuple[int, int]]] = []
    for s in sorted(storages, key=lambda s: (-s.nbytes, s.start)):
        best = -1
        if reuse:
            for i, n in enumerate(sizes):
                if (best < 0 or n < sizes[best]) and all(e < s.start or s.end < b for b, e in spans[i]):
                    best = i
        if best < 0:
            best = len(sizes)
            sizes.append(max(s.nbytes, 4))
            spans.append([])
        spans[best].append((s.start, s.end))
        s.pool = best
    return sizes


def pack(storages: list[Storage], align: int) -> int:
    """Offsets inside ONE buffer instead of whole buffers (dtype mixed off NVIDIA, see Plan): each
    storage, largest first, takes the lowest offset (a multiple of `align`) where it overlaps no
    placed storage whose lifetime intersects its own. Sets each storage's `offset` (and `pool` 0);
    returns the buffer's byte size. Whole buffers cannot give a half kept from the forward to the
    backward the room a large float32 temporary had early in the forward: offsets can."""
    placed: list[Storage] = []
    end = 0
    for s in sorted(storages, key=lambda s: (-s.nbytes, s.start)):
        size = -(-max(s.nbytes, 4) // align) * align
        busy = sorted((p.offset, p.offset + -(-max(p.nbytes, 4) // align) * align) for p in placed
                      if not (p.end < s.start or s.end < p.start))
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        s.offset, s.pool = off, 0
        placed.append(s)
        end = max(end, off + size)
    return end


class SharedArena:
    """Pooled activation buffers and one workspace shared by the Plans that `attach`; a Plan that
    needs a larger buffer i than the others gets a new one, and every attached Plan rebinds to it
    (Plan._rebind: its TensorRefs and the kernel arguments bound to the old buffer)."""

    def __init__(self, rt):
        self.rt = rt
        self.bufs: list = []
        self.sizes: list[int] = []
        self.ws = None
        self.ws_bytes = 0
        self._plans = weakref.WeakSet()

    def buffers(self, sizes: list[int]) -> list:
        """Buffers for a Plan's pool sizes (largest first, as `pool` returns them)."""
        for i, n in enumerate(sizes):
            if i == len(self.bufs):
                self.bufs.append(self.rt.alloc(n))
                self.sizes.append(n)
            elif n > self.sizes[i]:
                old, self.bufs[i], self.sizes[i] = self.bufs[i], self.rt.alloc(n), n
                self._replace(old, self.bufs[i])
        return self.bufs[:len(sizes)]

    def workspace(self, nbytes: int):
        """The one workspace buffer, at least `nbytes` (None for 0 while none exists)."""
        if nbytes > self.ws_bytes:
            old, self.ws, self.ws_bytes = self.ws, self.rt.alloc(nbytes), nbytes
            if old is not None:
                self._replace(old, self.ws)
        return self.ws

    def attach(self, plan) -> None:
        """From now on `plan` follows every buffer this arena replaces."""
        self._plans.add(plan)

    def _replace(self, old, new) -> None:
        for plan in list(self._plans):
            plan._rebind(old, new)

    def nbytes(self) -> dict:
        return {"activations": sum(self.sizes), "workspace": self.ws_bytes}

    def release(self) -> None:
        for buf in [*self.bufs, self.ws]:
            if buf is not None:
                buf.release()
        self.bufs, self.sizes, self.ws, self.ws_bytes = [], [], None, 0


def workspace_bytes(spec, attrs: dict, in_shapes: list, out_shapes: list, dev=None) -> int:
    """Scratch bytes one node's launches need: the op's own `workspace`, then room for the partial
    products of the GEMMs it declares (ClSpec.gemms), which it finds after its own bytes. A hook with
    a `dev` parameter also gets the Runtime `dev` (its path may depend on the device: Conv2d)."""
    own = int(_hook(spec.workspace, attrs, in_shapes, out_shapes, dev)) if spec.workspace is not None else 0
    gemms = _hook(spec.gemms, attrs, in_shapes, out_shapes, dev) if spec.gemms is not None else []
    return own + 4 * max((split_floats(*g) for g in gemms), default=0)


def _hook(fn, attrs, in_shapes, out_shapes, dev):
    if dev is not None and "dev" in inspect.signature(fn).parameters:
        return fn(attrs, in_shapes, out_shapes, dev=dev)
    return fn(attrs, in_shapes, out_shapes)
