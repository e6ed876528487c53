"""Support for the guard tests (confinement, input limits, disk errors, the run lock): a small device
root, the agent run the way every transport runs it (`python -m device_agent ...` with cwd = the
device root), and real small or read-only filesystems (tmpfs mounts; skipped where mounting is not
permitted).

    root = small_root(tmp_path)                       # data/digits (96 images 8x8), models/m, jobs/
    rc, evs, err = agent(root, "run", write_job(root, job(out="runs/a")))
    with tmpfs(root / "runs", "256k") as m: ...       # a real filesystem of 256 KiB; m.remount("ro")
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import make_root

BASE = {"model": "models/m", "data": "data/digits", "epochs": 1, "batch": 16, "backend": "numpy"}


def small_root(tmp: Path, images: int = 96) -> Path:
    """A device root: data/digits (`images` digit scans 8x8, 10 classes), models/m (tiny CNN), jobs/."""
    root = tmp / "root"
    make_root(root, limit=images)
    (root / "jobs").mkdir()
    return root


def job(**kw) -> dict:
    return {**BASE, "out": "runs/r", **kw}


def write_job(root: Path, doc, name: str = "job.json") -> str:
    """jobs/<name> under root (doc: a dict, or text written as is); returns the relative path."""
    p = root / "jobs" / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return f"jobs/{name}"


def agent(root: Path, *args: str, timeout: float = 120, env: dict | None = None):
    """`python -m device_agent ARGS` with cwd = root: (exit code, events, stderr)."""
    r = subprocess.run([sys.executable, "-m", "device_agent", *args], cwd=root, capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, THOMAS_THREADS="1", **(env or {})))
    evs = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    return r.returncode, evs, r.stderr


def last_error(evs: list[dict]) -> dict:
    assert evs and evs[-1]["ev"] == "error", evs[-3:]
    msg = evs[-1]["message"]
    assert "\n" not in msg and "Traceback" not in msg, msg
    return evs[-1]


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """Mount a tmpfs of `size` at path (created) for the block; skip the test where mounting is not
    permitted (not root, no CAP_SYS_ADMIN, a container without mount rights)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()[:120]}")
    try:
        yield _Mount(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class _Mount:
    def __init__(self, path: Path):
        self.path = path

    def remount(self, opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(self.path)], check=True, capture_output=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize
