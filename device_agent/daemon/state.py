"""Daemon: what every connection shares (root and its path rule, pairing, jobs, partial uploads)."""
from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

from ..protocol import DAEMON_DIR, path_problem
from .base import Refused
from .jobs import Jobs
from .pairing import Pairing


class Daemon(Pairing):
    """What every connection shares: root, hosts, pairing, jobs, the payload hash of the code running."""

    def __init__(self, root: Path, payload: str | None):
        super().__init__(root)
        self.root, self.payload = root, payload
        self.partial = self.dir / "partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.put_lock = threading.Lock()     # partial/ (one chunk at a time, whoever sends it)
        self.jobs = Jobs(root)
        for p in self.partial.iterdir():     # uploads abandoned a week ago
            if p.is_file() and p.stat().st_mtime < time.time() - 7 * 86400:
                p.unlink(missing_ok=True)

    # ---------------------------------------------------------------- paths
    def path(self, rel) -> Path:
        """root/rel for a wire path: relative, clean (protocol.path_problem), not DAEMON_DIR, and still under
        root once symlinks are followed. Refused("bad_path") otherwise."""
        problem = path_problem(rel, "path")
        if problem:
            raise Refused("bad_path", problem)
        p = self.root / rel
        if rel.split("/")[0] == DAEMON_DIR or not self.inside(p):
            raise Refused("bad_path", f"path {rel!r} leaves the daemon root (or reaches its own {DAEMON_DIR})")
        return p

    def inside(self, p: Path) -> bool:
        try:
            inner = p.resolve().relative_to(self.root).parts
        except (ValueError, OSError, RuntimeError):      # out of root, or a symlink loop
            return False
        return inner[:1] != (DAEMON_DIR,)

    def entry(self, p: Path) -> dict | None:
        try:
            st = p.stat() if self.inside(p) else p.lstat()   # never describe what a symlink out points at
        except OSError:
            return None
        return {"name": p.name, "is_dir": stat.S_ISDIR(st.st_mode), "size": st.st_size, "mtime": st.st_mtime}
