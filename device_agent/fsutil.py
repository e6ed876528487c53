"""Crash-safe file writes and file hashes shared by packages, checkpoints, datasets and the daemon.

    atomic_write(path, lambda f: np.savez(f, **arrays))    # temp file + fsync + rename; mode 0600
    fsync_dir(path.parent)                                  # make the rename itself durable
    sha256_file(path)                                       # hex digest, read in 1 MiB blocks
    m = npy_map(path, np.float32, (n, k))                   # writable .npy map, blocks reserved first
    raise disk_error(oserror, fallback=run_dir)             # OSError -> DiskError: one line, path + fix

A reader sees the old file or the new one, never half of one; a writer killed mid-way (or stopped by a
full disk) leaves only a hidden temp file (`.NAME.*` or the given prefix/suffix) that the next writer
may sweep, and the file it was replacing is untouched.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import DiskError


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(dest)) from e     # a failed write names its file
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


def npy_map(path: Path, dtype, shape: tuple):
    """A new .npy file of `shape` opened as a writable memory map, its blocks reserved first (preallocate):
    a full disk is an OSError naming the file, never a SIGBUS later in the map."""
    import numpy as np

    try:
        m = np.lib.format.open_memmap(path, "w+", dtype, shape)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    preallocate(path)
    return m


def preallocate(path: Path) -> None:
    """Reserve every block of a file (its current size) before it is written through a memory map: a full
    disk is then an OSError (ENOSPC) here, not a SIGBUS on the first store into the map. A filesystem
    that cannot preallocate is left alone."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_FIXES = {
    errno.ENOSPC: ("disk_full", "no space left on the device", "free space on the device"),
    errno.EDQUOT: ("disk_full", "disk quota exceeded", "free space on the device"),
    errno.EROFS: ("io", "read-only file system", "the folder is read-only: remount it read-write or use "
                                                 "another device root (--device-root)"),
    errno.EACCES: ("io", "permission denied", "the folder is not writable by the agent's user: fix its "
                                              "owner or mode, or use another device root (--device-root)"),
    errno.EPERM: ("io", "operation not permitted", "the folder is not writable by the agent's user: fix its "
                                                   "owner or mode, or use another device root (--device-root)"),
    errno.EIO: ("io", "input/output error", "the device's storage failed: check it (dmesg, free space) "
                                            "and retry"),
}


def disk_error(e: OSError, fallback=None, then: str = "") -> DiskError:
    """An OSError of the device's storage as one line naming the path and the fix: code "disk_full"
    (ENOSPC, EDQUOT) or "io". `fallback` names the place when the error carries no file name; `then`
    is what to do after the fix ("then resume the run; its checkpoints are kept").

        disk_error(OSError(errno.ENOSPC, "No space left on device", "runs/r/ckpt/.ckpt-1.tmp"))
        # no space left on the device writing runs/r/ckpt/.ckpt-1.tmp: free space on the device"""
    where = e.filename if e.filename is not None else fallback
    code, what, fix = _FIXES.get(e.errno, ("io", (e.strerror or str(e) or type(e).__name__).lower(),
                                           "check the device's storage"))
    msg = f"{what}{f' at {where}' if where is not None else ''}: {fix}"
    return DiskError(msg + (f"; {then}" if then else ""), code)
