"""One conversation with a device: pick the transport, deploy the agent payload, handshake, run.

    t = open_transport()                          # from the global options (-s, --device, ...)
    s = Session(t)
    s.ensure_agent()                              # pushes the payload only when its hash differs
    events = s.call(["doctor"])                   # [hello, device, ...]: JSONL events as dicts
    done = s.run_job(job, run_id, on_event=ui.update, timeout=300)

The payload is one zip: device_agent/ (the .py files), kernels/, configs/, and PAYLOAD (its hash,
agent version and protocol). It lands as <root>/agent; the agent runs with that folder first on
sys.path, so what runs on the phone is exactly what this host shipped.

Handshake: the first line of every agent call is {"ev":"hello","protocol":N,"agent":"x.y",...}.
A protocol other than ours means the payload on the device is not the one we think: it is pushed
again once; if the agent still disagrees, ProtocolMismatch (exit 3) says what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import device_agent
from device_agent.errors import ThomasError
from device_agent.protocol import PROTOCOL_VERSION, event_of
from device_agent.resources import configs_dir, kernels_dir

from . import store
from .transport.base import (DeviceError, DeviceLost, ProtocolMismatch, Transport, WatchdogTimeout,
                             check_rel, confined)

PAYLOAD = "PAYLOAD"
DEFAULT_TIMEOUT = 300.0


class RunFailed(ThomasError):
    """The agent reported an `error` event; `code` is the agent's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ============================================================================ choosing the device
@dataclass
class Target:
    """The global options: which device, where on it, which Python runs the agent."""
    serial: str | None = None     # -s / THOMAS_SERIAL
    device: str = "auto"          # --device auto|local|adb
    root: str | None = None       # --device-root
    python: str | None = None     # --python / THOMAS_DEVICE_PYTHON
    su: bool = False              # --su: run the agent through `su -c` (rooted phones)
    mode: str = "auto"            # --mode auto|shell|daemon: how a phone runs the agent (docs/ANDROID.md)


TARGET = Target()


def local_root() -> Path:
    return store.home() / "device"


def pick_serial(target: Target | None = None, note: Callable[[str], None] | None = None) -> str | None:
    """The phone the global options name (None: the local device); with none named, the one attached."""
    from .transport import adb

    t = target or TARGET
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


def open_transport(target: Target | None = None, note: Callable[[str], None] | None = None) -> Transport:
    """The device the global options name; with none named: the one attached phone, else local.
    A phone paired with its Termux daemon is reached through it (--mode shell|daemon overrides)."""
    from .transport import adb, daemon
    from .transport.local import LocalTransport

    t = target or TARGET
    serial = pick_serial(t, note)
    if serial is None:
        return LocalTransport(Path(t.root) if t.root else local_root(), t.python)
    if t.mode not in ("auto", "shell", "daemon"):
        raise ThomasError(f"--mode must be auto, shell or daemon, got '{t.mode}'")
    if t.mode == "daemon" or (t.mode == "auto" and daemon.load_pairing(serial) is not None):
        # NOTE: a paired phone means the user set up Termux: its daemon is the way in (--mode shell overrides)
        return daemon.DaemonTransport(serial, note=note)
    return adb.AdbTransport(serial, t.root or adb.DEFAULT_ROOT, t.python or adb.DEFAULT_PYTHON, su=t.su)


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


# ============================================================================ events
parse_line = event_of   # an event dict when the line is one, else None (a log line)


@dataclass
class CallResult:
    hello: dict
    events: list[dict]
    logs: list[str]
    returncode: int | None


class Session:
    def __init__(self, transport: Transport, note: Callable[[str], None] | None = None):
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
    def call(self, args: list[str], on_event: Callable[[dict], None] | None = None,
             on_log: Callable[[str], None] | None = None, timeout: float | None = DEFAULT_TIMEOUT,
             on_start: Callable[[object], None] | None = None) -> CallResult:
        """Run the agent with `args`, streaming events to on_event (hello included) until it exits.

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
            return self._stream(proc, on_event, on_log, timeout, hello={"ev": "hello", "attached": True})
        except WatchdogTimeout:
            proc.cancel()
            raise
        except BaseException:
            proc.ended = True        # NOTE: Ctrl-C or a drop detaches; the job goes on on the daemon
            raise

    def _stream(self, proc, on_event, on_log, timeout, hello: dict | None = None) -> CallResult:
        events, logs = [], []
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
            ev = parse_line(line)
            if ev is None:
                logs.append(line)
                if on_log:
                    on_log(line)
                continue
            last_event = time.monotonic()
            if hello is None:
                if ev["ev"] != "hello":
                    raise DeviceError(f"the agent on {self.t.serial} did not start with a hello "
                                      f"(got '{ev['ev']}'); its payload is broken: `thomas doctor --repush`")
                hello = ev
                if ev.get("protocol") != PROTOCOL_VERSION:
                    raise _Mismatch(ev)
            events.append(ev)
            if on_event:
                on_event(ev)
        if hello is None:
            if proc.lost:
                raise DeviceLost(f"lost device {self.t.serial} before the agent started ({proc.outcome()})")
            tail = " | ".join(logs[-3:]) or "no output"
            raise DeviceError(f"the agent did not start on {self.t.serial} with python '{self.t.python}' "
                              f"({proc.outcome()}: {tail}); run `thomas doctor`, or pass --python")
        if proc.returncode is None:
            raise DeviceLost(f"lost device {self.t.serial} mid-run after {len(events)} events ({proc.outcome()})")
        if proc.returncode < 0:
            raise DeviceLost(f"lost the agent on {self.t.serial}: killed by {proc.outcome()} after {len(events)} events")
        return CallResult(hello, events, logs, proc.returncode)

    def handshake(self) -> dict:
        """Deploy if needed and check that the agent starts and speaks our protocol (its hello)."""
        return self.call(["hello"], timeout=120).hello

    def agent_json(self, args: list[str], ev: str, timeout: float | None = 120) -> dict:
        """The one `ev` record an agent command answers with (e.g. doctor -> "device")."""
        r = self.call(args, timeout=timeout)
        for e in r.events:
            if e["ev"] == "error":
                raise RunFailed(e.get("code", "error"), f"agent: {e.get('message')}")
        for e in r.events:
            if e["ev"] == ev:
                return e
        raise DeviceError(f"the agent answered no '{ev}' record ({r.returncode=}; {' | '.join(r.logs[-3:])})")

    # ------------------------------------------------------------------ publishing trees
    def publish_tree(self, local: Path, rel: str, on_file=None) -> int:
        """Push a directory to `rel` whole: into a temp name first (`.push-NAME-PID`), then one rename.
        A failed push removes its temp folder; stale ones of dead pushes (pid not alive) are swept first."""
        rel = check_rel(rel)
        parent, _, name = rel.rpartition("/")
        prefix = parent + "/" if parent else ""
        tmp = f"{prefix}.push-{name}-{os.getpid()}"
        with contextlib.suppress(OSError, ThomasError):          # best effort: never blocks a push
            for e in self.t.listdir(parent) if parent else []:
                m = re.fullmatch(r"\.push-.+-(\d+)", e.name)
                if m and e.is_dir and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                    self.t.remove(prefix + e.name)
        self.t.remove(tmp)
        try:
            n = self.t.push_tree(local, tmp, on_file)
            self.t.move(tmp, rel)
        except BaseException:
            with contextlib.suppress(OSError, ThomasError):
                self.t.remove(tmp)
            raise
        return n


class _Mismatch(Exception):
    def __init__(self, hello: dict):
        self.hello = hello


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this computer exists (the pid in a `.push-NAME-PID` temp name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def console_note(msg: str) -> None:
    from .app import note

    note(msg)


def python_hint(transport: Transport) -> str:
    if transport.kind == "local":
        return f"pass --python PATH to a Python with numpy (this one is {sys.executable})"
    return ("the adb shell user needs a Python with numpy: on a rooted phone pass --su and --python, or push "
            "a runtime under /data/local/tmp (docs/ANDROID.md); unrooted phones use the Termux daemon")


# ============================================================================ runs
RUN_FILES = ("job.json", "metrics.jsonl", "confusion.json")


def run_job(s: Session, rec: dict, on_event: Callable[[dict], None] | None = None,
            timeout: float | None = DEFAULT_TIMEOUT) -> dict:
    """Run rec["job"] (a TrainJob dict whose out is runs/<id>) on the device; mirror every event to
    $THOMAS_HOME/runs/<id>/events.jsonl as it arrives; pull the final and best models and metrics.
    Returns the `done` event; every failure updates run.json and keeps the events received."""
    run_id = rec["id"]
    host = store.run_dir(run_id)
    host.mkdir(parents=True, exist_ok=True)
    store.write_json(host / "job.json", rec["job"])
    job_rel = f"jobs/{run_id}.json"
    s.t.write_bytes(job_rel, (json.dumps(rec["job"], indent=1) + "\n").encode())
    rec.update(status="running", error=None)
    rec.pop("daemon_job", None)
    store.save_run(rec)

    def started(proc) -> None:
        if proc.job is not None:
            rec["daemon_job"] = proc.job     # `thomas runs attach` follows it after a drop
            store.save_run(rec)

    return _mirror(s, rec, lambda ev, log: s.call(["run", job_rel], on_event=ev, on_log=log, timeout=timeout,
                                                  on_start=started), on_event)


def attach_run(s: Session, rec: dict, on_event: Callable[[dict], None] | None = None,
               timeout: float | None = DEFAULT_TIMEOUT) -> dict:
    """Follow a run still going on a daemon (after the host dropped or was closed): the events the
    host's mirror lacks are replayed (each exactly once), then the run is followed to its end."""
    job = rec.get("daemon_job")
    if not job or not hasattr(s.t, "attach_agent"):
        raise ThomasError(f"run {rec['id']} was not started through a THOMAS daemon: nothing to attach to "
                          f"(shell and local runs end with their connection; `thomas finetune --resume {rec['id']}`)")
    mirror = store.run_dir(rec["id"]) / "events.jsonl"
    if mirror.is_file():
        # NOTE: a host killed mid-write leaves half a line; drop it, the daemon replays that event whole
        data = mirror.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(mirror, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    seen = len(store.read_events(rec["id"]))
    rec.update(status="running", error=None)
    store.save_run(rec)
    try:
        proc = s.t.attach_agent(job, events=seen)
    except ThomasError as e:
        if getattr(e, "code", "") == "no_job":
            raise ThomasError(f"the daemon on {s.t.serial} no longer knows job {job} of run {rec['id']} (it was "
                              f"restarted or the job is too old); `thomas finetune --resume {rec['id']}`") from None
        raise
    return _mirror(s, rec, lambda ev, log: s.follow(proc, on_event=ev, on_log=log, timeout=timeout), on_event)


def _mirror(s: Session, rec: dict, stream: Callable, on_event: Callable[[dict], None] | None) -> dict:
    """Run `stream(event, log)` appending events/logs to the host's run folder; settle the record."""
    run_id = rec["id"]
    host = store.run_dir(run_id)
    count = 0
    with open(host / "events.jsonl", "a") as evf, open(host / "agent.log", "a") as logf:
        def event(ev: dict) -> None:
            nonlocal count
            count += 1
            evf.write(json.dumps(ev) + "\n")
            evf.flush()
            if on_event:
                on_event(ev)

        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        try:
            res = stream(event, log)
        except (DeviceLost, WatchdogTimeout) as e:
            kept = f"{count} events so far are kept in {host / 'events.jsonl'}"
            rec.update(status="lost" if isinstance(e, DeviceLost) else "timeout", error=str(e))
            store.save_run(rec)
            if rec.get("daemon_job") and isinstance(e, DeviceLost):
                raise DeviceLost(f"{e}; {kept}; the run may still be going on the daemon: `thomas runs attach "
                                 f"{run_id}` follows it; if the daemon was stopped, restart it and "
                                 f"`thomas finetune --resume {run_id}`") from None
            raise type(e)(f"{e}; {kept}; `thomas finetune --resume {run_id}` continues from the last "
                          f"checkpoint") from None
        except KeyboardInterrupt:
            rec.update(status="interrupted", error="interrupted on the host")
            store.save_run(rec)
            raise
        except ThomasError as e:
            rec.update(status="error", error=str(e))
            store.save_run(rec)
            raise
    last = res.events[-1] if res.events else {}
    rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if last.get("ev") == "error":
        rec.update(status="error", error=f"{last.get('code')}: {last.get('message')}")
        store.save_run(rec)
        raise RunFailed(last.get("code", "error"), f"run {run_id} failed on {s.t.serial}: {last.get('message')}")
    if last.get("ev") != "done":
        tail = " | ".join(res.logs[-3:]) or "no output"
        rec.update(status="error", error=f"agent ended ({res.returncode}) without done/error")
        store.save_run(rec)
        raise DeviceError(f"the agent on {s.t.serial} ended ({proc_outcome(res.returncode)}) without a "
                          f"done or error event: {tail}; {count} events so far are kept in {host / 'events.jsonl'}")
    pull_run(s.t, run_id, ["final", "best", *RUN_FILES])      # best/: the best epoch's model, when it has one
    rec.update(status="done", summary={k: last.get(k) for k in ("epochs", "steps", "train_loss", "train_acc",
                                                                 "val_loss", "val_acc", "ms", "best_epoch",
                                                                 "select", "best_metric", "stopped_early")})
    store.save_run(rec)
    return last


def proc_outcome(rc: int | None) -> str:
    return "no exit status" if rc is None else (f"exit status {rc}" if rc >= 0 else f"signal {-rc}")


def pull_run(t: Transport, run_id: str, paths: list[str] | None = None) -> list[Path]:
    """Pull runs/<id>/<path> for each path (all of it when None) into the host's run folder.
    Paths may not leave the run folder; the host's events.jsonl (the mirror) is never replaced."""
    host = store.run_dir(run_id)
    remote = f"runs/{run_id}"
    if not t.exists(remote):
        raise DeviceError(f"run {run_id} is not on {t.serial} (under {t.root}/runs)")
    if paths is None:
        paths = [e.name for e in t.listdir(remote) if e.name != "events.jsonl"]
    written: list[Path] = []
    for p in paths:
        # NOTE: the device's own events.jsonl lands beside the host's mirror, never over it
        dest = confined(host, "events.device.jsonl" if p == "events.jsonl" else p, "run path")
        if t.exists(f"{remote}/{check_rel(p, 'run path')}"):
            written += t.pull_tree(f"{remote}/{p}", dest)
    return written
