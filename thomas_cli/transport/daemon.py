"""Daemon mode: an unrooted phone's THOMAS daemon (`python -m device_agent serve` inside Termux),
reached through `adb forward` and spoken to with the daemon wire of device_agent/protocol.py.

    pair(serial, code="123456")                  # once: the code Termux shows; stores the token (0600)
    t = DaemonTransport(serial)                  # forward + connect + authenticate
    t.push_file(Path("x.npz"), "data/x.npz")     # chunked, sha256-checked, resumes after a drop
    proc = t.start_agent(["run", "jobs/r1.json"])
    proc.job                                     # the daemon's job id: `thomas runs attach` follows it later

Why a daemon: on an unrooted phone `adb shell` runs as the shell user, which cannot execute Termux's
Python (it lives in Termux's private app folder). The daemon runs as Termux, listens on the phone's
loopback only, and answers only hosts that paired with it (an HMAC of a nonce under the pairing token;
the token itself never crosses the wire after pairing).

A job on the daemon keeps running when this host goes away. A stream that drops is re-attached at
the next line (no loss, no duplicate); when the daemon cannot be reached again the stream ends as lost,
and the job can still be followed later with `thomas runs attach`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

from device_agent.errors import ThomasError
from device_agent.fsutil import sha256_file
from device_agent.protocol import (CHUNK, DAEMON_PORT, PROTOCOL_VERSION, WireError, auth_mac, encode_frame,
                                   read_frame)

from .. import store
from .base import AgentProcess, DeviceError, DeviceLost, Entry, ProtocolMismatch, Transport, WatchdogTimeout

CONNECT_TIMEOUT = 10.0      # s: connecting through the forward and reading the welcome
REQUEST_TIMEOUT = 120.0     # s: one request's answer
RECONNECT_S = 15.0          # s: how long a dropped connection is retried before giving up
CHUNK_TRIES = 3             # a chunk whose sha256 is wrong is sent (or fetched) this many times at most


class DaemonRefused(DeviceError):
    """The daemon answered ok: false; `code` is the daemon's."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class NotPaired(DeviceError):
    code = "not_paired"


# ============================================================================ pairing records (host side)
def pairing_path(serial: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in serial)
    return store.home() / "pairing" / f"{safe}.json"


def load_pairing(serial: str) -> dict | None:
    rec = store.read_json(pairing_path(serial))
    if rec is not None and not (isinstance(rec, dict) and isinstance(rec.get("token"), str)
                                and isinstance(rec.get("host"), str)):
        raise NotPaired(f"{pairing_path(serial)} is not a pairing record; `thomas pair --forget` then pair again")
    return rec


def save_pairing(serial: str, rec: dict) -> Path:
    """Written 0600 from the start (store.write_json's temp file is mkstemp's): the token is a password
    for the phone's daemon; the folder is 0700."""
    path = pairing_path(serial)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    store.write_json(path, rec)
    return path


def forget_pairing(serial: str) -> bool:
    p = pairing_path(serial)
    if p.exists():
        p.unlink()
        return True
    return False


# ============================================================================ the forward
def forward(serial: str, port: int) -> int:
    """The host port that `adb forward` connects to the phone's 127.0.0.1:`port` (reused if it exists)."""
    from .adb import adb_errors, client

    with adb_errors(f"device {serial}"):
        return client().device(serial).forward_port(port)


# ============================================================================ one connection
class Conn:
    """One connection to the daemon: the welcome on connect, then request/answer frames."""

    def __init__(self, serial: str, local_port: int, timeout: float = CONNECT_TIMEOUT):
        self.serial = serial
        try:
            self.sock = socket.create_connection(("127.0.0.1", local_port), timeout=timeout)
        except OSError as e:
            raise DeviceLost(f"cannot reach the THOMAS daemon on {serial} through adb forward "
                             f"({e.strerror or e})") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        self._id = 0
        try:
            self.welcome, _ = read_frame(self.rfile)
        except (WireError, OSError) as e:
            self.close()
            # NOTE: adb accepts the forwarded connection even when nothing listens on the phone, then closes it
            raise DeviceLost(f"the THOMAS daemon is not running on {serial} (the forwarded connection closed: "
                             f"{e}); start it in Termux: `thomas-daemon` (see `thomas setup termux`)") from None
        if self.welcome.get("op") == "refused":      # over the daemon's connection cap: its own words
            self.close()
            raise DaemonRefused(str(self.welcome.get("code")), f"the THOMAS daemon on {serial} refused the "
                                                              f"connection: {self.welcome.get('message')}")
        if self.welcome.get("op") != "welcome":
            self.close()
            raise DeviceError(f"what answers on {serial}'s daemon port is not a THOMAS daemon")

    def request(self, op: str, data: bytes = b"", timeout: float | None = REQUEST_TIMEOUT, **fields) -> tuple[dict, bytes]:
        """Send one request, read its answer; DaemonRefused when ok is false, DeviceLost on a drop."""
        self._id += 1
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(encode_frame({"op": op, "id": self._id, **fields}, data))
            ans, blob = read_frame(self.rfile)
        except socket.timeout:
            self.close()
            raise WatchdogTimeout(f"the daemon on {self.serial} did not answer '{op}' within {timeout:.0f} s") from None
        except (WireError, OSError) as e:
            self.close()
            raise DeviceLost(f"lost the daemon on {self.serial} during '{op}' ({e})") from None
        if not ans.get("ok"):
            raise DaemonRefused(str(ans.get("code", "error")), str(ans.get("message", f"'{op}' refused")))
        return ans, blob

    def auth(self, pairing: dict) -> None:
        try:
            self.request("auth", host=pairing["host"], mac=auth_mac(pairing["token"], self.welcome["nonce"],
                                                                    pairing["host"]))
        except DaemonRefused as e:
            self.close()
            if e.code == "too_many":
                raise DaemonRefused(e.code, f"the THOMAS daemon on {self.serial} refused the connection: {e}") from None
            raise NotPaired(f"the daemon on {self.serial} refused this computer ({e}); pair again: "
                            f"`thomas pair` with the code from `thomas-daemon pair` in Termux") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def pair(serial: str, code: str, name: str, port: int = DAEMON_PORT) -> dict:
    """Exchange the pairing code Termux shows for a token; store and return the pairing record."""
    c = Conn(serial, forward(serial, port))
    try:
        if not c.welcome.get("pairing"):
            raise DeviceError(f"the daemon on {serial} has no pairing code open: run `thomas-daemon pair` in Termux, "
                              f"then `thomas pair` with the code it shows")
        try:
            ans, _ = c.request("pair", code=code.replace(" ", "").replace("-", ""), name=name)
        except DaemonRefused as e:
            raise DeviceError(f"pairing with {serial} refused: {e}") from None
    finally:
        c.close()
    rec = {"serial": serial, "host": ans["host"], "token": ans["token"], "port": port, "name": name,
           "paired": time.strftime("%Y-%m-%d %H:%M:%S"), "root": c.welcome.get("root"),
           "agent": c.welcome.get("agent")}
    save_pairing(serial, rec)
    return rec


def probe_daemon(serial: str, port: int = DAEMON_PORT) -> dict | None:
    """The daemon's welcome when one answers on the phone's `port` (no authentication needed), else None."""
    try:
        c = Conn(serial, forward(serial, port), timeout=5)
    except DeviceError:
        return None
    c.close()
    return c.welcome


# ============================================================================ agent processes
class DaemonProcess(AgentProcess):
    """An agent job on the daemon, streamed over its own connection; re-attached after a drop."""

    def __init__(self, t: "DaemonTransport", args: list[str] | None = None, job: str | None = None,
                 events: int | None = None):
        super().__init__()
        self.t = t
        self.seq = 0                    # the next line the daemon will send
        self.state = "starting"
        self.position = 0
        self.conn = t.connect()
        try:
            if job is None:
                ans, _ = self.conn.request("start", args=list(args))
            else:
                ans, _ = self.conn.request("attach", job=job, **({"events": events} if events else {"seq": 0}))
        except BaseException:
            self.conn.close()
            raise
        self.job = ans["job"]
        self.state = ans.get("state", "running")
        self.position = ans.get("position", 0)
        self._queued_note = False
        if self.state == "queued":
            self._note_queued()
        self._start_reader(self._frames)

    def _note_queued(self) -> None:
        if not self._queued_note:
            self._queued_note = True
            ahead = "the running job" + (f" and {self.position - 1} queued" if self.position > 1 else "")
            self.t.note(f"job {self.job} is queued on {self.t.serial} behind {ahead} (one job at a time); "
                        f"it starts by itself")

    def _frames(self):
        """The base reader's `read()`: returns the bytes of each out line; b"" at the end."""
        while True:
            try:
                head, _ = read_frame(self.conn.rfile)
            except (WireError, OSError) as e:
                if self.ended or self.returncode is not None:
                    return b""
                if not self._reattach(e):
                    raise OSError(f"the daemon on {self.t.serial} dropped the stream of job {self.job} and "
                                  f"did not come back within {RECONNECT_S:.0f} s ({e})") from None
                continue
            op = head.get("op")
            if op == "out":
                if head.get("seq", self.seq) < self.seq:
                    continue                      # already seen (never expected; guards a replay overlap)
                self.seq = head.get("seq", self.seq) + 1
                self.state = "running"
                return (str(head.get("line", "")) + "\n").encode()
            if op == "queued":
                self.state, self.position = "queued", head.get("position", 0)
                self._note_queued()
                continue
            if op == "end":
                self.state = head.get("state") or "done"
                rc = head.get("rc")
                if isinstance(rc, int):
                    self.returncode = rc
                else:
                    self.lost = f"the job ended as '{self.state}' on the daemon"
                return b""

    def _reattach(self, why: Exception) -> bool:
        self.conn.close()
        deadline = time.monotonic() + RECONNECT_S
        while time.monotonic() < deadline and not self.ended:
            try:
                conn = self.t.connect()
                conn.request("attach", job=self.job, seq=self.seq)
            except DaemonRefused:
                return False
            except DeviceError:
                time.sleep(0.5)
                continue
            self.conn = conn
            self.t.note(f"re-attached to job {self.job} on {self.t.serial} at line {self.seq} ({why})")
            return True
        return False

    def next_line(self, timeout: float | None = None) -> str | None:
        # NOTE: a queued job is waiting its turn, not silent: the watchdog starts when it runs
        while True:
            try:
                return super().next_line(timeout)
            except WatchdogTimeout:
                if self.state != "queued":
                    raise

    def _finish(self) -> None:
        if self.returncode is None and self.lost is None:
            self.lost = f"the stream of job {self.job} closed before it ended"
        self.conn.close()

    def cancel(self) -> None:
        """Cancel the job on the daemon (best effort, from a side thread: the phone may be gone)."""
        if not self.ended and self.returncode is None:
            th = threading.Thread(target=self._cancel_remote, daemon=True)
            th.start()
            th.join(3)
        self.conn.close()
        self.ended = True

    def _cancel_remote(self) -> None:
        with contextlib.suppress(ThomasError):
            c = self.t.connect(timeout=3)
            try:
                c.request("cancel", job=self.job, timeout=3)
            finally:
                c.close()


# ============================================================================ the transport
class DaemonTransport(Transport):
    kind = "daemon"

    def __init__(self, serial: str, pairing: dict | None = None, port: int | None = None, note=None):
        rec = pairing or load_pairing(serial)
        if rec is None:
            raise NotPaired(f"this computer is not paired with the THOMAS daemon on {serial}: start the daemon in "
                            f"Termux (`thomas setup termux`), then `thomas pair`; or use --mode shell")
        self.pairing = rec
        self.port = port or int(rec.get("port") or DAEMON_PORT)
        self.note = note or (lambda msg: None)
        self.local_port: int | None = None
        self._ctl: Conn | None = None
        self._lock = threading.Lock()
        super().__init__(serial, str(rec.get("root") or "~/thomas"), "python")
        self._ctl = self.connect()          # fail early, with the daemon's own words
        w = self.welcome = self._ctl.welcome
        self.root = str(w.get("root") or self.root)
        self.python = "the daemon's python (Termux)"
        if w.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch(f"the THOMAS daemon on {serial} speaks protocol {w.get('protocol')} (agent "
                                   f"{w.get('agent')}), this thomas speaks {PROTOCOL_VERSION}: run `thomas setup "
                                   f"termux` again and type the command it shows in Termux (it replaces the daemon)")

    def describe(self) -> dict:
        return dict(super().describe(), port=self.port, daemon_agent=self.welcome.get("agent"),
                    daemon_payload=self.welcome.get("payload"))

    # ------------------------------------------------------------------ connections
    def connect(self, timeout: float = CONNECT_TIMEOUT) -> Conn:
        """A fresh authenticated connection (the forward is set up again if adb lost it)."""
        if self.local_port is None:
            self.local_port = forward(self.serial, self.port)
        try:
            c = Conn(self.serial, self.local_port, timeout)
        except DeviceLost:
            self.local_port = forward(self.serial, self.port)   # the adb server may have restarted
            c = Conn(self.serial, self.local_port, timeout)
        c.auth(self.pairing)
        return c

    def call(self, op: str, data: bytes = b"", **fields) -> tuple[dict, bytes]:
        """One request on the control connection, reconnecting once if it dropped since last use."""
        with self._lock:
            for attempt in (0, 1):
                if self._ctl is None:
                    self._ctl = self.connect()
                try:
                    return self._ctl.request(op, data, **fields)
                except DeviceLost:
                    self._ctl = None
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None

    # ------------------------------------------------------------------ files
    def stat(self, rel: str) -> Entry | None:
        e = self.call("stat", path=rel)[0].get("entry")
        return None if e is None else Entry(e["name"], bool(e["is_dir"]), int(e["size"]), float(e["mtime"]))

    def listdir(self, rel: str) -> list[Entry]:
        return [Entry(e["name"], bool(e["is_dir"]), int(e["size"]), float(e["mtime"]))
                for e in self.call("list", path=rel)[0].get("entries", [])]

    def read_bytes(self, rel: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="thomas-") as d:
            p = Path(d) / "blob"
            self.pull_file(rel, p)
            return p.read_bytes()

    def push_file(self, local: Path, rel: str) -> int:
        size = local.stat().st_size
        digest = sha256_file(local)
        spec = {"path": rel, "size": size, "sha256": digest}
        offset = self._put_begin(spec)
        bad = 0
        with open(local, "rb") as f:
            while True:
                f.seek(offset)
                chunk = f.read(min(CHUNK, size - offset))
                try:
                    ans, _ = self.call("put_chunk", chunk, **spec, offset=offset,
                                       chunk_sha256=hashlib.sha256(chunk).hexdigest())
                except DaemonRefused as e:
                    if e.code == "bad_chunk":
                        bad += 1
                        if bad >= CHUNK_TRIES:
                            raise DeviceError(f"pushing {local.name} to {self.serial}: the chunk at byte {offset} "
                                              f"arrived corrupted {bad} times; refused (check the USB cable)") from None
                        continue
                    if e.code == "offset":
                        offset = self._put_begin(spec)
                        continue
                    raise DeviceError(f"pushing {local.name} to {self.serial}: {e}") from None
                except DeviceLost:
                    offset = self._put_begin(spec)      # reconnected: resume where the daemon is
                    continue
                bad = 0
                offset = int(ans["offset"])
                if ans.get("done"):
                    return size

    def _put_begin(self, spec: dict) -> int:
        try:
            return int(self.call("put_begin", **spec)[0]["offset"])
        except DaemonRefused as e:
            raise DeviceError(f"pushing {spec['path']} to {self.serial}: {e}") from None

    def pull_file(self, rel: str, local: Path) -> int:
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        offset = part.stat().st_size if part.exists() else 0
        bad, drops = 0, 0
        with open(part, "ab") as f:
            while True:
                try:
                    ans, data = self.call("get", path=rel, offset=offset, max=CHUNK)
                except DaemonRefused as e:
                    raise DeviceError(f"pulling {rel} from {self.serial}: {e}") from None
                except DeviceLost:
                    drops += 1                         # call() reconnects; the .part keeps what arrived
                    if drops > CHUNK_TRIES:
                        raise
                    time.sleep(0.5)
                    continue
                if hashlib.sha256(data).hexdigest() != ans.get("chunk_sha256"):
                    bad += 1
                    if bad >= CHUNK_TRIES:
                        raise DeviceError(f"pulling {rel} from {self.serial}: the chunk at byte {offset} arrived "
                                          f"corrupted {bad} times; refused")
                    continue
                bad = 0
                if not data:
                    break
                f.write(data)
                offset += len(data)
        want = self.call("hash", path=rel)[0]
        if sha256_file(part) != want.get("sha256"):
            part.unlink()
            raise DeviceError(f"pulling {rel} from {self.serial}: the file changed or arrived corrupted "
                              f"(sha256 differs); pull it again")
        os.replace(part, local)
        return local.stat().st_size

    def remove(self, rel: str) -> None:
        self.call("remove", path=rel)

    def move(self, src: str, dst: str) -> None:
        self.call("move", src=src, dst=dst)

    def free_bytes(self) -> int | None:
        return self.call("status")[0].get("free")

    # ------------------------------------------------------------------ agent
    def install_payload(self, archive: Path) -> None:
        rel = f"agent-{os.getpid()}.zip"
        self.push_file(archive, rel)
        try:
            ans, _ = self.call("install", path=rel)
        finally:
            with contextlib.suppress(ThomasError):
                self.remove(rel)
        if ans.get("restart"):
            self._restart()

    def _restart(self) -> None:
        """Ask the daemon to re-execute itself with the new agent; wait until it answers again."""
        try:
            self.call("restart")
        except DaemonRefused as e:
            if e.code == "busy":
                self.note(f"the daemon on {self.serial} is busy: it keeps running its own older code until it is "
                          f"idle and restarted (jobs already use the new agent)")
                return
            raise
        self.close()
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.3)
            try:
                self._ctl = self.connect(timeout=5)
                self.welcome = self._ctl.welcome
                return
            except DeviceError:
                if time.monotonic() > deadline:
                    raise DeviceLost(f"the daemon on {self.serial} did not come back within 30 s after restarting "
                                     f"with the new agent; start it again in Termux (`thomas-daemon`)") from None

    def start_agent(self, args: list[str]) -> DaemonProcess:
        return DaemonProcess(self, args=args)

    def attach_agent(self, job: str, events: int = 0) -> DaemonProcess:
        """Follow a job already on the daemon, starting after the first `events` events."""
        return DaemonProcess(self, job=job, events=events)

    def jobs(self) -> list[dict]:
        return self.call("jobs")[0].get("jobs", [])

    def cancel_job(self, job: str) -> str:
        """Stop a job on the daemon (queued: dropped; running: SIGTERM, SIGKILL after 5 s); its state."""
        try:
            return str(self.call("cancel", job=job)[0].get("state"))
        except DaemonRefused as e:
            if e.code == "no_job":
                raise DeviceError(f"the daemon on {self.serial} no longer knows job {job} (restarted since?)") from None
            raise

    def probe(self) -> dict:
        st = self.call("status")[0]
        w = self.welcome
        return {"python": self.python, "python_version": w.get("python"), "root_writable": True, "su": None,
                "opencl_libs": [], "props": _props(self.serial), "daemon": {**st, "agent": w.get("agent"),
                                                                              "payload": w.get("payload"),
                                                                              "port": self.port}}


def _props(serial: str) -> dict:
    """The phone's model and Android version through `adb shell getprop` (no Python needed)."""
    from .adb import adb_errors, client

    props = {}
    with contextlib.suppress(DeviceError):
        with adb_errors(f"device {serial}"):
            dev = client().device(serial)
            for p in ("ro.product.model", "ro.build.version.release", "ro.build.version.sdk", "ro.product.cpu.abi"):
                props[p] = dev.shell(["getprop", p], timeout=10).strip()
    return props
