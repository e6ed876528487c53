"""Crash-safe file writes and file hashes shared by packages, checkpoints, datasets and the daemon.

    atomic_write(path, lambda f: np.savez(f, **arrays))    # temp file + fsync + rename; mode 0600
    fsync_dir(path.parent)                                  # make the rename itself durable
    sha256_file(path)                                       # hex digest, read in 1 MiB blocks

A reader sees the old file or the new one, never half of one; a writer killed mid-way leaves only
a hidden temp file (`.NAME.*` or the given prefix/suffix) that the next writer may sweep.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(dest: Path, write: Callable[[BinaryIO], object], prefix: str | None = None,
                 suffix: str = "") -> Path:
    """Write `dest` through `write(f)` on a temp file in the same folder, fsync, then rename over it.
    The file is created readable by its owner only (mkstemp's 0600) — what secrets such as the
    daemon's hosts.json need."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{dest.name}.", suffix=suffix, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def fsync_dir(path: Path) -> None:
    """fsync a directory (after a rename in it); a filesystem that cannot is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
