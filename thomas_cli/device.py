"""The device service: which device (Target: the global options as one explicit object), how to reach it
(the transport), and one conversation with its agent (Session: deploy the payload, handshake, run, stream
typed events, watchdog).

    target = Target(device="local")               # commands get theirs from the root Click context
    s = Session(open_transport(target, note), note)
    s.ensure_agent()                              # pushes the payload only when its hash differs
    r = s.call(["doctor"])                        # r.hello: HelloEvent; r.events: [HelloEvent, DeviceEvent]
    dev = s.agent_event(["doctor"], DeviceEvent)  # the one record a command answers with

The payload is one zip: device_agent/ (the .py files), kernels/, configs/, and PAYLOAD (its hash,
agent version and protocol). It lands as <root>/agent; the agent runs with that folder first on
sys.path, so what runs on the phone is exactly what this host shipped.

Handshake: the first line of every agent call is {"ev":"hello","protocol":N,"agent":"x.y",...}.
A protocol other than ours means the payload on the device is not the one we think: it is pushed
again once; if the agent still disagrees, ProtocolMismatch (exit 3) says what to do. Every later line
that is an event is read into its dataclass (protocol.parse_event); the host reads attributes only.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import device_agent
from device_agent.errors import ThomasError
from device_agent.protocol import PROTOCOL_VERSION, ErrorEvent, Event, HelloEvent, event_of, parse_event
from device_agent.resources import configs_dir, kernels_dir

from . import store
from .transport.base import DeviceError, DeviceLost, ProtocolMismatch, Transport, WatchdogTimeout

PAYLOAD = "PAYLOAD"
DEFAULT_TIMEOUT = 300.0
E = TypeVar("E", bound=Event)
Note = Callable[[str], None]


class RunFailed(ThomasError):
    """The agent reported an `error` event; `code` is the agent's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ============================================================================ choosing the device
@dataclass(frozen=True)
class Target:
    """The global options: which device, where on it, which Python runs the agent. The root command
    builds one (commands/devices.py) and keeps it on its Click context; nothing else holds it."""
    serial: str | None = None     # -s / THOMAS_SERIAL
    device: str = "auto"          # --device auto|local|adb
    root: str | None = None       # --device-root
    python: str | None = None     # --python / THOMAS_DEVICE_PYTHON
    su: bool = False              # --su: run the agent through `su -c` (rooted phones)
    mode: str = "auto"            # --mode auto|shell|daemon: how a phone runs the agent (docs/ANDROID.md)


def local_root() -> Path:
    return store.home() / "device"


def pick_serial(target: Target | None = None, note: Note | None = None) -> str | None:
    """The phone the target names (None: the local device); with none named, the one attached."""
    from .transport import adb

    t = target or Target()
    if t.device not in ("auto", "local", "adb"):
        raise ThomasError(f"--device must be auto, local or adb, got '{t.device}'")
    if t.device == "local":
        return None
    if t.serial:
        return t.serial
    rows = [r for r in adb.list_devices() if r.state == "device"]
    if len(rows) > 1:
        raise DeviceError("more than one device attached (" + ", ".join(r.serial for r in rows) +
                          "); pick one with -s SERIAL or THOMAS_SERIAL")
    if rows:
        return rows[0].serial
    if t.device == "adb":
        raise DeviceError("no phone attached (see `thomas devices`; enable USB debugging)")
    if note:
        note(f"no phone attached: using the local device ({t.root or local_root()})")
    return None


def open_transport(target: Target | None = None, note: Note | None = None) -> Transport:
    """The device the target names (None: the defaults); with none named: the one attached phone, else
    local. A phone paired with its Termux daemon is reached through it (--mode shell|daemon overrides)."""
    from .transport import adb, daemon
    from .transport.local import LocalTransport

    t = target or Target()
    serial = pick_serial(t, note)
    if serial is None:
        return LocalTransport(Path(t.root) if t.root else local_root(), t.python)
    if t.mode not in ("auto", "shell", "daemon"):
        raise ThomasError(f"--mode must be auto, shell or daemon, got '{t.mode}'")
    if t.mode == "daemon" or (t.mode == "auto" and daemon.load_pairing(serial) is not None):
        # NOTE: a paired phone means the user set up Termux: its daemon is the way in (--mode shell overrides)
        return daemon.DaemonTransport(serial, note=note)
    return adb.AdbTransport(serial, t.root or adb.DEFAULT_ROOT, t.python or adb.DEFAULT_PYTHON, su=t.su)


def python_hint(transport: Transport) -> str:
    if transport.kind == "local":
        return f"pass --python PATH to a Python with numpy (this one is {sys.executable})"
    return ("the adb shell user needs a Python with numpy: on a rooted phone pass --su and --python, or push "
            "a runtime under /data/local/tmp (docs/ANDROID.md); unrooted phones use the Termux daemon")


def proc_outcome(rc: int | None) -> str:
    return "no exit status" if rc is None else (f"exit status {rc}" if rc >= 0 else f"signal {-rc}")


# ============================================================================ the payload
def payload_files() -> list[tuple[str, Path]]:
    """(archive name, source file) for everything the agent needs, sorted."""
    pkg = Path(device_agent.__file__).resolve().parent
    files = [(f"device_agent/{p.relative_to(pkg).as_posix()}", p) for p in pkg.rglob("*.py")
             if "__pycache__" not in p.parts]
    for name, d in (("kernels", kernels_dir()), ("configs", configs_dir())):
        files += [(f"{name}/{p.relative_to(d).as_posix()}", p) for p in d.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    return sorted(files)


def build_payload(dest: Path) -> tuple[Path, str]:
    """Write the agent zip into `dest`; returns (path, hash). Same sources -> same bytes and hash."""
    files = payload_files()
    h = hashlib.sha256()
    blobs = []
    for name, p in files:
        data = p.read_bytes()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        blobs.append((name, data))
    digest = h.hexdigest()
    meta = {"hash": digest, "agent": device_agent.__version__, "protocol": PROTOCOL_VERSION, "files": len(files)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in blobs + [(PAYLOAD, (json.dumps(meta) + "\n").encode())]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"thomas-agent-{digest[:12]}.zip"
    path.write_bytes(buf.getvalue())
    return path, digest


# ============================================================================ one call of the agent
@dataclass
class CallResult:
    hello: HelloEvent | None          # None: a run re-attached mid-way (its hello was seen before)
    events: list[Event]               # typed, hello first
    logs: list[str] = field(default_factory=list)
    returncode: int | None = None

    @property
    def last(self) -> Event | None:
        return self.events[-1] if self.events else None

    def tail(self, n: int = 3) -> str:
        """The last log lines, for messages."""
        return " | ".join(self.logs[-n:]) or "no output"

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


class Session:
    def __init__(self, transport: Transport, note: Note | None = None):
        self.t = transport
        self.note = note or (lambda msg: None)
        self._installed = False       # pushed during this session (then never again)
        self._state: dict | None = None

    # ------------------------------------------------------------------ deploy
    def device_payload(self) -> dict | None:
        """The PAYLOAD record of the agent on the device (None when there is none or it is unreadable)."""
        if not self.t.exists(f"agent/{PAYLOAD}"):
            return None
        try:
            return json.loads(self.t.read_bytes(f"agent/{PAYLOAD}"))
        except ValueError:
            return None

    def ensure_agent(self, force: bool = False) -> dict:
        """Push the payload when the device's hash differs (or `force`); checked once per session.
        Returns {"hash", "agent", "pushed": bool, "bytes"}."""
        import tempfile

        if self._state is not None and not force:
            return self._state
        with tempfile.TemporaryDirectory(prefix="thomas-payload-") as d:
            path, digest = build_payload(Path(d))
            size = path.stat().st_size
            have = None if force else self.device_payload()
            pushed = not (have and have.get("hash") == digest)
            if pushed:
                self.note(f"pushing the agent {device_agent.__version__} ({digest[:12]}, {size / 1024:.0f} KiB) "
                          f"to {self.t.serial}:{self.t.root}/agent")
                self.t.install_payload(path)
                self._installed = True
        self._state = {"hash": digest, "agent": device_agent.__version__, "pushed": pushed, "bytes": size}
        return self._state

    # ------------------------------------------------------------------ calls
    def call(self, args: list[str], on_event: Callable[[Event], None] | None = None,
             on_log: Note | None = None, timeout: float | None = DEFAULT_TIMEOUT,
             on_start: Callable[[object], None] | None = None) -> CallResult:
        """Run the agent with `args`, streaming typed events to on_event (hello included) until it exits.

        `timeout` is the watchdog: seconds allowed without an event (None: wait forever).
        `on_start(proc)` sees the AgentProcess first (the daemon's job id is `proc.job`).
        Raises DeviceLost / WatchdogTimeout / ProtocolMismatch / DeviceError."""
        self.ensure_agent()
        for attempt in (0, 1):
            proc = self.t.start_agent(args)
            if on_start:
                on_start(proc)
            try:
                return self._stream(proc, on_event, on_log, timeout)
            except _Mismatch as m:
                proc.cancel()
                if attempt == 0 and not self._installed:
                    self.note(f"the agent on {self.t.serial} speaks protocol {m.hello.get('protocol')}; "
                              f"pushing it again")
                    self.ensure_agent(force=True)
                    continue
                raise ProtocolMismatch(
                    f"the agent on {self.t.serial} speaks protocol {m.hello.get('protocol')} "
                    f"(agent {m.hello.get('agent')}), this thomas speaks protocol {PROTOCOL_VERSION} "
                    f"(agent {device_agent.__version__}), even after pushing it again; check that "
                    f"{self.t.root}/agent is writable and that --python runs it, or update thomas") from None
            except DeviceLost:
                if proc.job is None:   # a daemon job outlives the connection: leave it running
                    proc.cancel()
                raise
            except BaseException:
                proc.cancel()
                raise
        raise AssertionError("unreachable")

    def follow(self, proc, on_event=None, on_log=None, timeout: float | None = DEFAULT_TIMEOUT) -> CallResult:
        """Stream an agent process re-attached mid-run (its hello was seen before), until it ends."""
        try:
            return self._stream(proc, on_event, on_log, timeout, attached=True)
        except WatchdogTimeout:
            proc.cancel()
            raise
        except BaseException:
            proc.ended = True        # NOTE: Ctrl-C or a drop detaches; the job goes on on the daemon
            raise

    def _stream(self, proc, on_event, on_log, timeout, attached: bool = False) -> CallResult:
        res = CallResult(None, [])
        last_event = time.monotonic()
        while True:
            # the watchdog counts from the last event: log lines alone do not prove progress
            left = None if timeout is None else max(0.05, timeout - (time.monotonic() - last_event))
            try:
                line = proc.next_line(left)
            except WatchdogTimeout:
                raise WatchdogTimeout(f"no event from {self.t.serial} for {timeout:.0f} s (--timeout); "
                                      f"the agent was stopped") from None
            if line is None:
                break
            d = event_of(line)
            if d is None:
                res.logs.append(line)
                if on_log:
                    on_log(line)
                continue
            last_event = time.monotonic()
            if res.hello is None and not attached:
                self._check_hello(d)
            ev = self._typed(d)
            if res.hello is None and not attached:
                res.hello = ev
            res.events.append(ev)
            if on_event:
                on_event(ev)
        res.returncode = proc.returncode
        if res.hello is None and not attached:
            if proc.lost:
                raise DeviceLost(f"lost device {self.t.serial} before the agent started ({proc.outcome()})")
            raise DeviceError(f"the agent did not start on {self.t.serial} with python '{self.t.python}' "
                              f"({proc.outcome()}: {res.tail()}); run `thomas doctor`, or pass --python")
        if proc.returncode is None:
            raise DeviceLost(f"lost device {self.t.serial} mid-run after {len(res.events)} events ({proc.outcome()})")
        if proc.returncode < 0:
            raise DeviceLost(f"lost the agent on {self.t.serial}: killed by {proc.outcome()} "
                             f"after {len(res.events)} events")
        return res

    def _check_hello(self, d: dict) -> None:
        """The handshake: the first event must be a hello of our protocol. Read as its JSON object, the one
        place the host does: an agent of another protocol may send a hello this host's HelloEvent lacks."""
        if d["ev"] != "hello":
            raise DeviceError(f"the agent on {self.t.serial} did not start with a hello "
                              f"(got '{d['ev']}'); its payload is broken: `thomas doctor --repush`")
        if d.get("protocol") != PROTOCOL_VERSION:
            raise _Mismatch(d)

    def _typed(self, d: dict) -> Event:
        try:
            return parse_event(d)
        except ValueError as e:
            raise DeviceError(f"the agent on {self.t.serial} sent an event this thomas cannot read ({e}): its "
                              f"payload is not this host's: `thomas doctor --repush`") from None

    def handshake(self) -> HelloEvent:
        """Deploy if needed and check that the agent starts and speaks our protocol (its hello)."""
        return self.call(["hello"], timeout=120).hello

    def agent_event(self, args: list[str], kind: type[E], timeout: float | None = 120) -> E:
        """The one `kind` record an agent command answers with (e.g. doctor -> DeviceEvent)."""
        r = self.call(args, timeout=timeout)
        for e in r.of(ErrorEvent):
            raise RunFailed(e.code, f"agent: {e.message}")
        for e in r.of(kind):
            return e
        raise DeviceError(f"the agent answered no '{kind.ev}' record ({r.returncode=}; {' | '.join(r.logs[-3:])})")


class _Mismatch(Exception):
    def __init__(self, hello: dict):
        self.hello = hello
