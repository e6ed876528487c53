"""The run lock: one process trains a run folder at a time.

    lock = RunLock.acquire(Path("runs/r1"))   # RunLockedError (one line, the holder's pid) if held
    ...                                        # train; the lock lives as long as the process or until
    lock.release()

An fcntl.flock on `<run>/.lock`, taken without waiting and held for the job's life. The holder writes
its pid (and host name, start time) into the file for the refusal message. A holder that dies (kill -9,
a crash, a rebooted phone) drops its flock with its file descriptors, so the next start or resume takes
the lock over at once: no stale lock to clean by hand. Where fcntl does not exist the lock is a no-op.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunLockedError

try:
    import fcntl
except ImportError:                    # not on Linux/Android/macOS: no locking
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir) -> "RunLock":
        """Lock run_dir (created when missing); RunLockedError naming the holder's pid when another
        live process holds it."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        if fcntl is None:
            return cls(path, None)
        for _ in range(10):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(f"run {run_dir} is being trained by another process ({holder}); wait for "
                                     f"it to end or stop it, then resume") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:                        # else the file was replaced after our open: lock the new one
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
                return cls(path, fd)
            os.close(fd)
        raise RunLockedError(f"run {run_dir}: its lock file keeps being replaced; is another tool rewriting it?")

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race a process opening it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _holder_doc(fd: int) -> dict:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        doc = {}
    return doc if isinstance(doc, dict) else {}


def _read_holder(fd: int) -> str:
    doc = _holder_doc(fd)
    pid = doc.get("pid")
    if not isinstance(pid, int):
        return "pid unknown: it is just starting"
    where = f" on {doc['host']}" if isinstance(doc.get("host"), str) and doc["host"] != socket.gethostname() else ""
    since = f", since {doc['since']}" if isinstance(doc.get("since"), str) else ""
    return f"pid {pid}{where}{since}"
