"""The Transport interface: how the host reaches one device's THOMAS root and runs the agent there.

    t = AdbTransport(serial, root="/data/local/tmp/thomas", python="python3")   # or LocalTransport(...)
    t.push_file(Path("job.json"), "jobs/r1.json")       # remote paths are RELATIVE to the device root
    proc = t.start_agent(["run", "jobs/r1.json"])       # `python -m device_agent run jobs/r1.json`
    while (line := proc.next_line(timeout=30)) is not None: ...
    proc.outcome()                                      # "exit 0" | lost the device | signal

Every implementation offers the same three groups, so a command never knows which one it drives:
  * files under the root (stat, listdir, read_bytes, push_file, pull_file, remove, move),
  * the agent (install_payload, start_agent -> AgentProcess streaming its stdout lines),
  * facts for `thomas doctor` (probe).
Shell mode (`adb.py`), the embedded default (`local.py`) and the Termux daemon (issue 6: files and
runs over a forwarded socket) are three implementations; `device.py` (the Session) and the commands hold no
transport-specific code.

Remote paths are validated here once (`check_rel`): relative, '/'-separated, no '..', no empty or
control-character parts. Pulled trees are confined to their local destination (`confined`).
"""
from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from device_agent.errors import ThomasError
from device_agent.protocol import path_problem


# ============================================================================ errors
class DeviceError(ThomasError):
    """The device cannot be reached or refused an operation."""

    code = "device"


class DeviceLost(DeviceError):
    """The device vanished mid-operation (unplugged, rebooted, adb restarted, process killed)."""

    code = "device_lost"


class WatchdogTimeout(DeviceError):
    """Nothing came from the device for longer than the watchdog allows."""

    code = "timeout"


class ProtocolMismatch(ThomasError):
    """The agent on the device speaks another protocol version than this host."""

    exit_code = 3
    code = "protocol"


class RemotePathError(ThomasError, ValueError):
    """A remote or pulled path would leave the device root or the run folder."""

    code = "bad_path"


def check_rel(rel: str, what: str = "remote path") -> str:
    """`rel` as a clean path relative to the device root (protocol.path_problem's rules), or
    RemotePathError naming it.

    >>> check_rel("runs/r1/final")
    'runs/r1/final'
    """
    problem = path_problem(rel, what)
    if problem:
        raise RemotePathError(problem)
    return rel


def confined(base: Path, rel: str, what: str = "path") -> Path:
    """base/rel for a relative '/'-path that stays inside `base` (RemotePathError otherwise)."""
    rel = check_rel(rel, what)
    dest = (base / rel).resolve()
    root = base.resolve()
    if dest != root and root not in dest.parents:
        raise RemotePathError(f"{what} '{rel}' leaves {base}")
    return dest


# ============================================================================ records
@dataclass
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float


@dataclass
class DeviceRow:
    """One line of `thomas devices`."""
    serial: str
    state: str                 # "device" | "offline" | "unauthorized" | ...
    transport: str             # "adb" | "local" | "daemon"
    model: str = ""
    detail: str = ""

    def to_json(self) -> dict:
        return {"serial": self.serial, "state": self.state, "transport": self.transport,
                "model": self.model, "detail": self.detail}


# ============================================================================ agent processes
class AgentProcess(ABC):
    """`python -m device_agent ARGS` running on the device: its output, one line at a time.

    A reader thread moves lines into a queue, so `next_line(timeout)` can give up (the watchdog)
    while the device is silent, and a vanished device shows up as the end of the stream."""

    _EOF = object()

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self.ended = False
        self.returncode: int | None = None   # set when the agent's exit status is known
        self.lost: str | None = None         # why the stream ended without an exit status
        self.job: str | None = None          # the daemon's job id: the agent outlives this stream

    def _start_reader(self, read: Callable[[], bytes]) -> None:
        """`read()` returns the next chunk of output, b"" at the end; it may raise OSError."""

        def pump() -> None:
            buf = b""
            try:
                while True:
                    chunk = read()
                    if not chunk:
                        break
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for ln in lines:
                        self._feed(ln.decode("utf-8", "replace").rstrip("\r"))
                if buf:
                    self._feed(buf.decode("utf-8", "replace").rstrip("\r"))
            except OSError as e:
                self._q.put(("lost", f"{type(e).__name__}: {e}"))
            self._q.put(self._EOF)

        threading.Thread(target=pump, daemon=True, name="thomas-agent-reader").start()

    def _feed(self, line: str) -> None:
        """Hook for transports with in-band markers (adb's exit marker); default: pass through."""
        self._q.put(line)

    def next_line(self, timeout: float | None = None) -> str | None:
        """The next output line; None at the end; WatchdogTimeout after `timeout` s of silence."""
        if self.ended:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._q.get(timeout=left)
            except queue.Empty:
                raise WatchdogTimeout(f"nothing from the device for {timeout:.0f} s") from None
            if item is self._EOF:
                self.ended = True
                self._finish()
                return None
            if isinstance(item, tuple):
                self.lost = item[1]
                continue
            return item

    @abstractmethod
    def _finish(self) -> None:
        """Called once at the end of the output: settle returncode / lost."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop the agent (best effort, never blocks for long) and release the stream."""

    def outcome(self) -> str:
        """How the process ended, for error messages."""
        if self.returncode is not None:
            return f"exit status {self.returncode}" if self.returncode >= 0 else f"signal {-self.returncode}"
        return self.lost or "the connection closed"


# ============================================================================ the interface
class Transport(ABC):
    kind: ClassVar[str] = ""

    def __init__(self, serial: str, root: str, python: str):
        self.serial = serial        # what `-s` names; "local" for the embedded device
        self.root = root            # absolute device path of the THOMAS root
        self.python = python        # the interpreter that runs the agent on the device

    def describe(self) -> dict:
        return {"transport": self.kind, "serial": self.serial, "root": self.root, "python": self.python}

    # ------------------------------------------------------------------ files (paths relative to root)
    @abstractmethod
    def stat(self, rel: str) -> Entry | None:
        """The entry at rel (name = its last part), or None when nothing is there."""

    def exists(self, rel: str) -> bool:
        return self.stat(rel) is not None

    @abstractmethod
    def listdir(self, rel: str) -> list[Entry]:
        """Entries of a directory (no '.'/'..'), sorted by name; [] when it does not exist."""

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """A file's content; DeviceError naming it when it does not exist."""

    @abstractmethod
    def push_file(self, local: Path, rel: str) -> int:
        """Copy one file to the device (parents created); returns the bytes sent."""

    @abstractmethod
    def pull_file(self, rel: str, local: Path) -> int: ...

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Remove a file or a whole tree; no error when it is missing."""

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Rename src to dst on the device, replacing dst (used to publish a pushed tree whole)."""

    @abstractmethod
    def free_bytes(self) -> int | None:
        """Free space at the root, when the transport can tell without the agent."""

    def write_bytes(self, rel: str, data: bytes) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="thomas-") as d:
            p = Path(d) / "blob"
            p.write_bytes(data)
            self.push_file(p, rel)

    def push_tree(self, local: Path, rel: str, on_file: Callable[[int], None] | None = None) -> int:
        """Push every file under `local` to `rel` (a fresh name: callers push to a temp name and move)."""
        total = 0
        for p in sorted(local.rglob("*")):
            if p.is_file():
                n = self.push_file(p, f"{rel}/{p.relative_to(local).as_posix()}")
                total += n
                if on_file:
                    on_file(n)
        return total

    def pull_tree(self, rel: str, local: Path) -> list[Path]:
        """Pull the file or tree `rel` into `local`. Every name the device reports is checked:
        nothing lands outside `local`. Returns the files written."""
        rel = check_rel(rel)
        st = self.stat(rel)
        if st is None:
            raise DeviceError(f"{rel} does not exist on {self.serial} (under {self.root})")
        if not st.is_dir:
            local.parent.mkdir(parents=True, exist_ok=True)
            self.pull_file(rel, local)
            return [local]
        written: list[Path] = []
        local.mkdir(parents=True, exist_ok=True)
        for e in self.listdir(rel):
            if "/" in e.name:
                raise RemotePathError(f"pulled name '{e.name}' is not a plain file name")
            dest = confined(local, e.name, "pulled name")
            if e.is_dir:
                written += self.pull_tree(f"{rel}/{e.name}", dest)
            else:
                self.pull_file(f"{rel}/{e.name}", dest)
                written.append(dest)
        return written

    # ------------------------------------------------------------------ the agent
    @abstractmethod
    def install_payload(self, archive: Path) -> None:
        """Unpack the agent archive (device.build_payload) as <root>/agent, replacing it whole."""

    @abstractmethod
    def start_agent(self, args: list[str]) -> AgentProcess:
        """Start `python -u -m device_agent *args` with cwd = root and the pushed agent first on
        sys.path. Output is stdout and stderr merged, one line at a time."""

    @abstractmethod
    def probe(self) -> dict:
        """Facts for doctor that need no agent: {"python": path|None, "python_version": str|None,
        "root_writable": bool, "opencl_libs": [...], "su": bool|None, ...}."""

    def close(self) -> None:
        pass
