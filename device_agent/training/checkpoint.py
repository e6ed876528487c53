"""Atomic, self-verifying training checkpoints.

    path = save(run / "ckpt", step=120, params=p, optimizer=o, meta={"epoch": 2, ...}, keep=3)
    ck = load_latest(run / "ckpt")        # newest checkpoint that verifies, or None

One checkpoint = one `ckpt-<step:08d>.npz` (np.savez, read back with allow_pickle=False) holding
    "param/<name>"   every parameter and buffer (BN running statistics) of the trained part
    "opt/<name>"     the optimizer state (optim.py names: "step", "<param>.exp_avg", ...)
    "meta"           uint8 JSON: {"format", "step", "sha256", ...caller's meta (epoch, position in
                     the data order, RNG counters, partial epoch sums)}
sha256 covers every array (name, dtype, shape, bytes) but "meta". Writing goes to a temp file in the
same directory, fsync, rename, fsync of the directory; then all but the newest `keep` are removed.
Every member's npy header is checked against its real size and the memory budget before anything
is allocated (limits.load_npz). A checkpoint that is truncated, unreadable or fails its sha256 is never loaded: load_latest falls
back to the previous one (and, with quarantine, renames the bad file to `*.bad`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..fsutil import atomic_write, fsync_dir
from ..limits import load_npz, parse_json

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.npz$")


@dataclass
class Loaded:
    path: Path
    step: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    meta: dict
    skipped: list            # [(path, reason)] newer checkpoints that did not verify


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.asarray(arrays[k], order="C")
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def checkpoints(directory) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, oldest first (verified or not)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def save(directory, step: int, *, params: dict, optimizer: dict, meta: dict, keep: int = 3) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": np.asarray(v, order="C") for k, v in params.items()}
    arrays.update({f"opt/{k}": np.asarray(v, order="C") for k, v in optimizer.items()})
    doc = dict(meta, format=FORMAT_VERSION, step=int(step), sha256=_digest(arrays))
    arrays["meta"] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    dest = d / f"ckpt-{int(step):08d}.npz"
    atomic_write(dest, lambda f: np.savez(f, **arrays), prefix=".ckpt-", suffix=".tmp")
    fsync_dir(d)
    for _, p in checkpoints(d)[:-keep]:
        p.unlink(missing_ok=True)
    for p in d.glob(".ckpt-*.tmp"):          # temp files of a writer that was killed
        p.unlink(missing_ok=True)
    return dest


def load(path) -> Loaded:
    """Read and verify one checkpoint; CheckpointError (one line) if it is not intact."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: unreadable checkpoint (not a file)")
    arrays = load_npz(path, CheckpointError)    # headers against real sizes and memory: never a MemoryError
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: no 'meta' record")
    meta = parse_json(arrays.pop("meta").tobytes(), f"{path}: 'meta' record", CheckpointError)
    _check_meta(path, meta)
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(f"{path}: sha256 mismatch (partially written or corrupt)")
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    opt = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    return Loaded(path, int(meta["step"]), params, opt, meta, [])


def _check_meta(path: Path, meta) -> None:
    """The meta record's types (a forged sha256 is easy: it sits in meta itself): format, step and the
    training position (epoch, batch, sums) when present. CheckpointError (one line) otherwise."""
    fmt = meta.get("format", 0) if isinstance(meta, dict) else None
    if not _is_int(fmt) or fmt > FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {fmt if isinstance(meta, dict) else meta!r}"[:200])
    for k in ("step", "epoch", "batch"):
        if (k == "step" or k in meta) and not (_is_int(meta.get(k)) and meta[k] >= 0):
            raise CheckpointError(f"{path}: meta field '{k}' is {meta.get(k)!r}, not a count"[:200])
    sums = meta.get("sums", [0, 0, 0])
    if not (isinstance(sums, list) and len(sums) == 3 and all(isinstance(x, (int, float)) and
                                                               not isinstance(x, bool) for x in sums)):
        raise CheckpointError(f"{path}: meta field 'sums' is {sums!r}, not 3 numbers"[:200])


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_latest(directory, quarantine: bool = False) -> Loaded | None:
    """The newest checkpoint that verifies; None if there is none. Bad newer ones are listed in
    .skipped (and renamed to *.bad when quarantine)."""
    skipped = []
    for _, p in reversed(checkpoints(directory)):
        try:
            ck = load(p)
        except CheckpointError as e:
            skipped.append((p, str(e)))
            if quarantine:
                os.replace(p, p.with_name(p.name + ".bad"))
            continue
        ck.skipped = skipped
        return ck
    return None
