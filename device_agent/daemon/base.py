"""What every part of the daemon shares: its log, the refusal an op raises, the JSON state files,
the event test and the agent's PYTHONPATH."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write
from ..protocol import event_of


def log(msg: str) -> None:
    try:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):        # stderr gone (the Termux session closed): keep serving
        pass


class Refused(Exception):
    """Answered {"ok": false, "code", "message", **extra}; the connection goes on."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code, self.extra = code, extra



def write_json(path: Path, obj) -> None:
    """Atomically and 0600 from the start (fsutil.atomic_write)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode()))


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_event(line: str) -> bool:
    """A line the host counts as an event (the same test: protocol.event_of)."""
    return event_of(line) is not None


def agent_pythonpath(root: Path) -> str:
    """PYTHONPATH with <root>/agent first (once)."""
    agent, rest = str(root / "agent"), os.environ.get("PYTHONPATH", "")
    parts = [p for p in rest.split(os.pathsep) if p and p != agent]
    return os.pathsep.join([agent, *parts])


def our_process(pid, *words: bytes) -> bool:
    """pid is alive and its command line holds every word (Linux /proc; False where unreadable)."""
    try:
        cmd = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError, TypeError):
        return False
    return bool(cmd) and all(w in cmd for w in words)

