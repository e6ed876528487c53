"""The virtual adb device: a fake adbd speaking the real adb wire protocol on loopback, reached
through a private, real `adb` server (Debian package `adb`) — so the host code under test runs
real adbutils against a real server, and nothing in adbutils is mocked.

    with VirtualDevice(tmp_path / "phone") as vd:     # fake adbd + `adb -P PORT nodaemon server`
        vd.env                                        # ANDROID_ADB_SERVER_PORT, ADBUTILS_ADB_PATH, ...
        vd.serial                                     # "127.0.0.1:PORT", as `adb devices` lists it
        vd.freeze()                                   # the phone hangs: nothing more goes out
        vd.kill()                                     # the phone vanishes: sockets and processes die
        vd.drop_tcp()                                 # forwarded connections break (adb forward stays)

    python tests/virtual_adb.py DIR        # a standalone virtual phone; prints the env to export

What the fake adbd implements (docs: adb's protocol.txt, SERVICES.TXT, SYNC.TXT):
  * the transport: 24-byte headers (command, arg0, arg1, length, checksum, magic), CNXN answered
    with a banner that advertises NO features (so the server uses the legacy shell and sync v1)
    and no AUTH; OPEN/OKAY/WRTE/CLSE streams with the one-write-in-flight flow control.
  * `shell:CMD` — `sh -c CMD` on this machine, cwd = the device root, stdout and stderr merged and
    the exit status lost, exactly like a legacy adbd. `getprop` answers from `props`.
  * `sync:` — STAT, LIST, SEND, RECV, DATA, DONE, QUIT (v1), confined to the device root.
  * `tcp:PORT` — a byte pipe to 127.0.0.1:PORT on this machine: what the adb server opens for each
    connection to a port set up with `adb forward tcp:L tcp:PORT` (the Termux daemon's path).
  * services are a table (SERVICES), one Stream subclass each.

Commands run on this machine for real: paths the host uses must be host paths under `root`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

A_SYNC, A_CNXN, A_AUTH, A_OPEN = 0x434E5953, 0x4E584E43, 0x48545541, 0x4E45504F
A_OKAY, A_CLSE, A_WRTE = 0x59414B4F, 0x45534C43, 0x45545257
A_VERSION = 0x01000001           # >= this: checksums are optional (we still send them)
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024        # sync v1: a DATA chunk is at most 64 KiB

PROPS = {
    "ro.product.manufacturer": "THOMAS",
    "ro.product.model": "Virtual_Phone",
    "ro.product.name": "thomas_virtual",
    "ro.product.device": "virtual",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.hardware.egl": "adreno",
}


def free_port() -> int:
    """A free loopback port from the kernel's ephemeral range (never adb's 5555-5585 scan range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _packet(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


# ============================================================================ streams
class Stream:
    """One OPENed service. Subclasses get inbound bytes in `on_data` (called on the connection's
    reader thread, keep it short) and send with `write` (blocks until the host OKAYs)."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int, arg: str):
        self.conn, self.local_id, self.remote_id, self.arg = conn, local_id, remote_id, arg
        self._acked = threading.Event()
        self._acked.set()
        self.closed = threading.Event()

    def start(self) -> None:
        """Called once the OKAY for the OPEN went out."""

    def write(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            chunk, view = bytes(view[:self.conn.max_payload]), view[self.conn.max_payload:]
            while not self._acked.wait(0.1):
                if self.closed.is_set():
                    return False
            if self.closed.is_set():
                return False
            self._acked.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, chunk)
        return True

    def close(self) -> None:
        """Close from the device side (sends CLSE once)."""
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
            self.conn.streams.pop(self.local_id, None)
            self.on_close()

    def on_data(self, data: bytes) -> None:
        pass

    def on_close(self) -> None:
        """The stream ended (either side): release what it holds."""


class ShellStream(Stream):
    """Legacy `shell:CMD`: stdout+stderr merged, no exit status (the host must add a marker)."""

    def start(self) -> None:
        if not self.arg:   # interactive shell: not offered by the virtual phone
            self.write(b"interactive shell not supported by the virtual device\n")
            self.close()
            return
        self.proc = subprocess.Popen(["sh", "-c", self.arg], cwd=self.conn.device.root,
                                     env=self.conn.device.shell_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.conn.device.procs.add(self.proc)
        threading.Thread(target=self._pump, daemon=True, name="vadb-shell").start()

    def _pump(self) -> None:
        out = self.proc.stdout
        while True:
            data = os.read(out.fileno(), 65536)
            if not data or not self.write(data):
                break
        self.proc.wait()
        out.close()
        self.conn.device.procs.discard(self.proc)
        self.close()

    def on_close(self) -> None:
        # NOTE: the host hung up; kill the command like adbd does when its pty/pipe goes away.
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            _killpg(self.proc)


class SyncStream(Stream):
    """`sync:` v1. Requests: id(4) + u32 length + payload; SEND is followed by DATA/DONE packets."""

    def start(self) -> None:
        self.buf = bytearray()
        self.cv = threading.Condition()
        threading.Thread(target=self._serve, daemon=True, name="vadb-sync").start()

    def on_data(self, data: bytes) -> None:
        with self.cv:
            self.buf += data
            self.cv.notify_all()

    def on_close(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def _read(self, n: int) -> bytes | None:
        with self.cv:
            while len(self.buf) < n:
                if self.closed.is_set():
                    return None
                self.cv.wait(0.2)
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out

    def _path(self, raw: bytes) -> Path | None:
        """A device path, confined to the virtual phone's root (None outside)."""
        p = Path(os.path.normpath(raw.decode("utf-8", "surrogateescape")))
        root = Path(self.conn.device.root)
        return p if p == root or root in p.parents else None

    def _fail(self, msg: str) -> None:
        m = msg.encode()
        self.write(b"FAIL" + struct.pack("<I", len(m)) + m)

    def _serve(self) -> None:
        while True:
            head = self._read(8)
            if head is None:
                return
            rid, n = head[:4], struct.unpack("<I", head[4:])[0]
            arg = self._read(n)
            if arg is None:
                return
            if rid == b"QUIT":
                self.close()
                return
            handler = {b"STAT": self._stat, b"LIST": self._list, b"SEND": self._send, b"RECV": self._recv}.get(rid)
            if handler is None:
                self._fail(f"unknown sync request {rid!r}")
                self.close()
                return
            if handler(arg) is False:
                return

    def _stat(self, arg: bytes):
        p = self._path(arg)
        try:
            st = os.stat(p) if p is not None else None
        except OSError:
            st = None
        if st is None:
            self.write(b"STAT" + struct.pack("<III", 0, 0, 0))
        else:
            self.write(b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))

    def _list(self, arg: bytes):
        p = self._path(arg)
        names = []
        if p is not None and p.is_dir():
            names = [".", ".."] + sorted(os.listdir(p))
        for name in names:
            try:
                st = os.lstat(p / name)
            except OSError:
                continue
            nb = name.encode("utf-8", "surrogateescape")
            self.write(b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF,
                                             int(st.st_mtime), len(nb)) + nb)
        self.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _send(self, arg: bytes):
        raw, _, mode = arg.rpartition(b",")
        p = self._path(raw)
        tmp, f = None, None
        if p is not None:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)     # adbd mkdirs the parents too
                fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".sync-")
                f = os.fdopen(fd, "wb")
            except OSError as e:
                f, err = None, str(e)
        else:
            err = "permission denied (outside the virtual device)"
        while True:
            head = self._read(8)
            if head is None:
                break
            rid, n = head[:4], struct.unpack("<I", head[4:])[0]
            if rid == b"DATA":
                data = self._read(n)
                if data is None:
                    break
                if f is not None:
                    f.write(data)
            elif rid == b"DONE":
                if f is None:
                    self._fail(f"secure_mkdirs failed: {err}")
                    return
                f.close()
                os.chmod(tmp, int(mode or b"420") & 0o777)
                os.replace(tmp, p)
                os.utime(p, (n, n))
                self.write(b"OKAY" + struct.pack("<I", 0))
                return
            else:
                self._fail(f"unexpected sync packet {rid!r} during SEND")
                break
        if f is not None:
            f.close()
            os.unlink(tmp)
        return False

    def _recv(self, arg: bytes):
        p = self._path(arg)
        try:
            if p is None:
                raise PermissionError("permission denied (outside the virtual device)")
            with open(p, "rb") as f:
                while chunk := f.read(SYNC_DATA_MAX):
                    self.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as e:
            self._fail(e.strerror or str(e))
            return
        self.write(b"DONE" + struct.pack("<I", 0))


class TcpStream(Stream):
    """`tcp:PORT` (what `adb forward tcp:L tcp:PORT` opens for each connection to L): a byte pipe to
    127.0.0.1:PORT on the 'phone'. A refused connect closes the stream, as adbd does."""

    def start(self) -> None:
        try:
            port = int(self.arg.partition(":")[2] if ":" in self.arg else self.arg)
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except (ValueError, OSError):
            self.sock = None
            self.close()
            return
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.device.socks.add(self.sock)
        threading.Thread(target=self._pump, daemon=True, name="vadb-tcp").start()

    def _pump(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data or not self.write(data):
                break
        self.close()
        self._drop()

    def on_data(self, data: bytes) -> None:
        # NOTE: called on the connection's reader thread; a blocking sendall here is the flow control
        try:
            self.sock.sendall(data)
        except OSError:
            self.close()

    def on_close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self.conn.device.socks.discard(sock)


SERVICES: dict[str, type[Stream]] = {"shell:": ShellStream, "sync:": SyncStream, "tcp:": TcpStream}


# ============================================================================ connection
class Connection:
    """One transport connection from the adb server: a reader thread dispatching packets."""

    def __init__(self, device: "VirtualDevice", sock: socket.socket):
        self.device, self.sock = device, sock
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.max_payload = 4096
        threading.Thread(target=self._run, daemon=True, name="vadb-conn").start()

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.device.unfrozen.wait()
        with self.lock:
            try:
                self.sock.sendall(_packet(cmd, arg0, arg1, data))
            except OSError:
                pass

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _run(self) -> None:
        try:
            while True:
                head = self._recv_exact(24)
                if head is None:
                    break
                cmd, a0, a1, n, _crc, _magic = struct.unpack("<6I", head)
                data = self._recv_exact(n) if n else b""
                if data is None:
                    break
                self.device.unfrozen.wait()
                self._dispatch(cmd, a0, a1, data)
        finally:
            for s in list(self.streams.values()):
                s.closed.set()
                s.on_close()
            self.streams.clear()
            try:
                self.sock.close()
            except OSError:
                pass

    def _dispatch(self, cmd: int, a0: int, a1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.max_payload = min(a1, MAX_PAYLOAD) or 4096
            banner = "device::" + "".join(f"{k}={v};" for k, v in PROPS.items()
                                          if k in ("ro.product.name", "ro.product.model", "ro.product.device"))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, banner.encode())
        elif cmd == A_OPEN:
            name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            for prefix, cls in SERVICES.items():
                if name.startswith(prefix):
                    local_id = self.device.next_id()
                    s = cls(self, local_id, a0, name[len(prefix):])
                    self.streams[local_id] = s
                    self.send(A_OKAY, local_id, a0)
                    s.start()
                    return
            self.send(A_CLSE, 0, a0)           # unknown service: refused
        elif cmd == A_OKAY:
            s = self.streams.get(a1)
            if s is not None:
                s._acked.set()
        elif cmd == A_WRTE:
            s = self.streams.get(a1)
            if s is None:
                self.send(A_CLSE, 0, a0)
                return
            self.send(A_OKAY, a1, a0)
            s.on_data(data)
        elif cmd == A_CLSE:
            s = self.streams.pop(a1, None)
            if s is not None:
                s.closed.set()
                s.on_close()
        # A_AUTH / A_SYNC / anything else: ignored (we never ask for AUTH)


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ============================================================================ the device
class VirtualDevice:
    """A fake adbd on 127.0.0.1 plus a private `adb` server that has `adb connect`ed to it."""

    def __init__(self, root, adb: str | None = None, packages: tuple[str, ...] = ()):
        self.root = str(Path(root).resolve())
        self.packages = tuple(packages)   # what `pm` knows: "name[@installer][+storage]" (no Termux by default)
        self.adb = adb or shutil.which("adb")
        if self.adb is None:
            raise RuntimeError("the virtual adb device needs the `adb` binary (Debian package `adb`; "
                               "`make setup` installs it)")
        self.procs: set[subprocess.Popen] = set()
        self.socks: set[socket.socket] = set()     # tcp: streams' sockets to 'phone' loopback ports
        self.conns: list[Connection] = []
        self.unfrozen = threading.Event()
        self.unfrozen.set()
        self._ids = 0
        self._id_lock = threading.Lock()
        self.server: subprocess.Popen | None = None
        self.listener: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "VirtualDevice":
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self.home = tempfile.mkdtemp(prefix="vadb-home-")
        self._write_shims()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.serial = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name="vadb-accept").start()
        self.server_port = free_port()
        self.env = {"ANDROID_ADB_SERVER_PORT": str(self.server_port), "ADBUTILS_ADB_PATH": self.adb,
                    "ADB_MDNS": "0", "ADB_LIBUSB": "0", "ADB_MDNS_AUTO_CONNECT": "0"}
        self.server = subprocess.Popen([self.adb, "-P", str(self.server_port), "nodaemon", "server"],
                                       env=self._adb_env(), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise
        return self

    def _adb_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANDROID_", "ADB"))}
        env.update(self.env, HOME=self.home)     # NOTE: the server writes ~/.android/adbkey here
        return env

    def adb_cmd(self, *args: str, timeout: float = 10) -> str:
        r = subprocess.run([self.adb, "-P", str(self.server_port), *args], env=self._adb_env(),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        return r.stdout + r.stderr

    def _connect(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f"adb server exited with {self.server.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.server_port), timeout=0.2):
                    break
            except OSError:
                # NOTE: never run an adb client before our server listens: it would fork a daemon one
                if time.monotonic() > deadline:
                    raise RuntimeError(f"adb server never listened on {self.server_port}") from None
                time.sleep(0.05)
        out = self.adb_cmd("connect", self.serial)
        if "connected" not in out:
            raise RuntimeError(f"adb connect {self.serial}: {out.strip()}")
        while time.monotonic() < deadline:
            if self.adb_cmd("-s", self.serial, "get-state").strip() == "device":
                return
            time.sleep(0.05)
        raise RuntimeError(f"virtual device {self.serial} never came online")

    def stop(self) -> None:
        """Stop everything this device started (idempotent): processes, sockets, the adb server."""
        self.unfrozen.set()
        self._close_device()
        if self.server is not None:
            if self.server.poll() is None:
                self.server.terminate()
                try:
                    self.server.wait(5)
                except subprocess.TimeoutExpired:
                    self.server.kill()
                    self.server.wait()
            self.server = None
        if getattr(self, "home", None):
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def _close_device(self) -> None:
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
            self.listener = None
        for c in self.conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in list(self.socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.socks.clear()
        for p in list(self.procs):
            _killpg(p)
        for p in list(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def __enter__(self) -> "VirtualDevice":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def kill(self) -> None:
        """The phone vanishes: its processes die and its connection drops (the adb server stays)."""
        self.unfrozen.set()
        self._close_device()

    def drop_tcp(self) -> int:
        """A USB hiccup for forwarded ports: every open `tcp:` stream breaks (the forwards stay, so new
        connections work). Returns how many were dropped."""
        socks = list(self.socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def freeze(self) -> None:
        """The phone hangs: the connection stays up but nothing is read or sent any more."""
        self.unfrozen.clear()

    def thaw(self) -> None:
        self.unfrozen.set()

    # ------------------------------------------------------------------ internals
    def next_id(self) -> int:
        with self._id_lock:
            self._ids += 1
            return self._ids

    def _accept(self) -> None:
        while True:
            listener = self.listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(Connection(self, sock))

    def _write_shims(self) -> None:
        """`getprop` and `pm` for the shell, as the phone's toolbox would answer them."""
        self.bindir = os.path.join(self.home, "bin")
        os.makedirs(self.bindir)
        lines = "\n".join(f"  {k}) echo '{v}' ;;" for k, v in PROPS.items())
        listing = "\\n".join(f"[{k}]: [{v}]" for k, v in PROPS.items())
        script = (f"#!/bin/sh\ncase \"$1\" in\n{lines}\n  '') printf '{listing}\\n' ;;\n  *) echo ;;\nesac\n")
        self._shim("getprop", script)
        self._shim("pm", self._pm_script())

    def _shim(self, name: str, script: str) -> None:
        path = os.path.join(self.bindir, name)
        with open(path, "w") as f:
            f.write(script)
        os.chmod(path, 0o755)

    def _pm_script(self) -> str:
        """`pm path PKG`, `pm list packages [-i] [FILTER]` and `pm dump PKG` (its runtime permissions)
        answered from `packages` ("com.termux@org.fdroid.fdroid+storage": installer, storage granted)."""
        import re

        rows = []
        for spec in self.packages:
            m = re.fullmatch(r"([\w.]+)(?:@([\w.]+))?(\+storage)?", spec)
            if m is None:
                raise ValueError(f"bad package spec {spec!r}: name[@installer][+storage]")
            rows.append((m.group(1), m.group(2) or "null", "true" if m.group(3) else "false"))
        table = "".join(f"{n} {i} {g}\n" for n, i, g in rows)
        return f"""#!/bin/sh
# pm, as far as the tests ask it; the package table: name installer storage-granted
table='{table}'
cmd=${{1:-}}; shift 2>/dev/null || true
case "$cmd" in
  path)
    printf '%s' "$table" | while read -r n i g; do
      [ "$n" = "${{1:-}}" ] && echo "package:/data/app/~~virtual==/$n-1/base.apk"
    done ;;
  list)
    [ "${{1:-}}" = packages ] && shift
    inst=; if [ "${{1:-}}" = -i ]; then inst=1; shift; fi
    printf '%s' "$table" | while read -r n i g; do
      case "$n" in *"${{1:-}}"*)
        if [ -n "$inst" ]; then echo "package:$n  installer=$i"; else echo "package:$n"; fi ;;
      esac
    done ;;
  dump)
    printf '%s' "$table" | while read -r n i g; do
      [ "$n" = "${{1:-}}" ] || continue
      printf 'Packages:\n  Package [%s] (1a2b3c):\n    userId=10123\n    User 0: installed=true\n' "$n"
      printf '      runtime permissions:\n'
      printf '        android.permission.READ_EXTERNAL_STORAGE: granted=%s, flags=[ USER_SET ]\n' "$g"
      printf '        android.permission.WRITE_EXTERNAL_STORAGE: granted=%s, flags=[ USER_SET ]\n' "$g"
    done ;;
  *) echo "Error: unknown command '$cmd'" ;;
esac
"""

    def shell_env(self) -> dict:
        """The environment of a shell command: this machine's PATH behind the phone's tools, and no
        THOMAS_/PYTHON variables leaking from the test process into the 'phone'."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("THOMAS_", "PYTHON", "ANDROID_", "ADB", "PYTEST", "VIRTUAL_ENV"))}
        env.update(PATH=self.bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
                   HOME=self.root, TMPDIR=self.root, ANDROID_ROOT="/system")
        return env


def main(argv: list[str]) -> int:
    root = argv[1] if len(argv) > 1 else tempfile.mkdtemp(prefix="virtual-phone-")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with VirtualDevice(root) as vd:
        print(f"virtual device {vd.serial}, device files under {vd.root}")
        print("export " + " ".join(f"{k}={v}" for k, v in vd.env.items()))
        print("Ctrl-C stops it.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
