"""Uploading the next batch while the current step runs (a Plan's prefetch).

    plan.train_step(x0, y0, lr, then=lambda: plan.stage(x1, y1))   # x1, y1 go up during step 0
    plan.train_step(x1, y1, lr)                                      # finds them staged: no upload

A Plan's step uploads its batch on the kernels' queue, so the device waits for the copy (19 MB at
batch 32, 224x224: ~1.2 ms of an H100 step, and on a phone a driver memcpy on the CPU). With
staging, the copy of the next batch goes on the Runtime's second queue into device buffers of its
own while the current step's kernels run; the next step copies it device to device (microseconds)
after the upload's event, and its own copy into staging waits for that copy (the buffers are reused).

Which batch is staged is decided by identity: `take(arrays)` uses the staged data only when every
array is the very object that was staged (the caller's arrays, before any dtype conversion), and
drops it otherwise, so a stale batch can never be trained on. The caller must not change a staged
array in place before its step (the copy reads it asynchronously; the Plan keeps it alive until
the step's sync).
"""
from __future__ import annotations

import numpy as np
import pyopencl as cl

from ...errors import BackendError


class Staging:
    """Device buffers for one Plan's next inputs (and labels), filled on the Runtime's copy queue."""

    def __init__(self, rt, targets: dict):
        """targets: {name: TensorRef} the staged arrays are copied into (the Plan's inputs, labels)."""
        self.rt, self.targets = rt, targets
        self.bufs: dict = {}
        self.held = None        # (caller's arrays by name, converted copies, write events)
        self.free = []          # events after which the staging buffers may be overwritten

    def put(self, arrays: dict, converted: dict) -> None:
        """Enqueue the upload of `converted` ({name: array of the target's shape and dtype}) on the
        copy queue; `arrays` are the caller's originals (what `take` matches)."""
        if sorted(converted) != sorted(self.targets):
            raise BackendError(f"staging takes {sorted(self.targets)}, got {sorted(converted)}")
        q = self.rt.copy_queue()
        evs = []
        for name, a in converted.items():
            ref = self.targets[name]
            if a.nbytes != ref.nbytes:
                raise BackendError(f"staged '{name}' has {a.nbytes} bytes, the plan was built for {ref.nbytes}")
            buf = self.bufs.get(name)
            if buf is None:
                buf = self.bufs[name] = self.rt.alloc(ref.nbytes)
            self.rt.moved["to_device"] += a.nbytes
            evs.append(cl.enqueue_copy(q, buf, a, is_blocking=False, wait_for=self.free or None))
        q.flush()
        self.held = (dict(arrays), converted, evs)

    def take(self, arrays: dict, queue: cl.CommandQueue) -> list | None:
        """If `arrays` are exactly the staged ones (same objects, same names), enqueue their copies
        from staging into the targets on `queue` after the upload, and return the host copies to
        keep alive until the step's sync; else drop the staged batch and return None."""
        held, self.held = self.held, None
        if held is None:
            return None
        if sorted(held[0]) != sorted(arrays) or any(held[0][k] is not v for k, v in arrays.items()):
            cl.wait_for_events(held[2])     # a dropped upload still reads its host copies: let it finish
            return None
        _, converted, evs = held
        self.free = [cl.enqueue_copy(queue, self.targets[n].buf, self.bufs[n], byte_count=self.targets[n].nbytes,
                                     wait_for=evs) for n in converted]
        return list(converted.values())

    def nbytes(self) -> int:
        return sum(self.targets[n].nbytes for n in self.bufs)

    def release(self) -> None:
        """Wait for the uploads in flight, then release the staging buffers."""
        held, self.held = self.held, None
        for ev in (held[2] if held else []) + self.free:
            try:
                ev.wait()
            except cl.Error:
                pass
        self.free = []
        for buf in self.bufs.values():
            buf.release()
        self.bufs = {}


def as_feeds(first: str, names: list[str], shapes: dict, x) -> dict:
    """{input name: array} of a batch given as one array (for input `first`) or a dict, checked
    against the Plan's inputs (`shapes`: {name: shape}); the caller's arrays, unconverted."""
    feeds = x if isinstance(x, dict) else {first: x}
    if sorted(feeds) != sorted(names):
        raise BackendError(f"the plan takes inputs {names}, got {sorted(feeds)}")
    for name in names:
        if tuple(np.shape(feeds[name])) != shapes[name]:
            raise BackendError(f"input '{name}' has shape {tuple(np.shape(feeds[name]))}, "
                               f"the plan was built for {shapes[name]}")
    return feeds
