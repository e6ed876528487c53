"""Activation memory of a Plan: tensor lifetimes, and buffers pooled by liveness.

    life = Lifetimes()
    life.new("conv1.out", (8, 16, 32, 32), start=0, end=0)   # produced by node 0
    life.touch("conv1.out", 3)                                 # ... read by node 3: alive over [0, 3]
    sizes = pool(life.storages(), reuse=True)                  # byte sizes of the arena's buffers

Two tensors share a buffer when their lifetimes [produced, last read] do not overlap. An alias
(Flatten, Reshape) shares its input's storage, so it stretches that storage's lifetime.
"""
from __future__ import annotations

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


def workspace_bytes(spec, attrs: dict, in_shapes: list, out_shapes: list) -> int:
    """Scratch bytes one node's launches need: the op's own `workspace`, then room for the partial
    products of the GEMMs it declares (ClSpec.gemms), which it finds after its own bytes."""
    own = int(spec.workspace(attrs, in_shapes, out_shapes)) if spec.workspace is not None else 0
    gemms = spec.gemms(attrs, in_shapes, out_shapes) if spec.gemms is not None else []
    return own + 4 * max((split_floats(*g) for g in gemms), default=0)
