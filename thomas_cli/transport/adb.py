"""Shell mode: a phone reached through the adb server with adbutils (sync for files, shell for runs).

    t = AdbTransport("R58M123ABC", root="/data/local/tmp/thomas", python="python3", su=False)

What the legacy adb shell forces on us (no shell_v2 on old phones, nor on the virtual device):
  * stdout and stderr arrive merged and the exit status is lost, so every remote command is wrapped
    to print `__THOMAS_EXIT_<nonce>__<status>` last; a stream that ends without that marker means
    the device vanished (unplugged, rebooted, adb server restarted).
  * the command line is one string parsed by the phone's sh: every remote argument goes through
    shlex.quote, never string formatting.
The agent is started in the background of that shell so its pid is known (`__THOMAS_PID_..__`)
and a watchdog or Ctrl-C can kill it on the phone.

The adb server is found as adb finds it: ANDROID_ADB_SERVER_HOST / ANDROID_ADB_SERVER_PORT (read at
call time), and the `adb` binary from ADBUTILS_ADB_PATH or PATH when the server must be started.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import stat as stat_mod
import threading
from pathlib import Path

from .base import AgentProcess, DeviceError, DeviceLost, DeviceRow, Entry, Transport, check_rel

DEFAULT_ROOT = "/data/local/tmp/thomas"
DEFAULT_PYTHON = "python3"
OPENCL_LIBS = ("/vendor/lib64/libOpenCL.so", "/system/vendor/lib64/libOpenCL.so",
               "/vendor/lib/libOpenCL.so", "/system/vendor/lib/libOpenCL.so", "/system/lib64/libOpenCL.so")


def client():
    """An adbutils client for the server adb itself would use (env read now, not at import)."""
    import adbutils

    return adbutils.AdbClient(host=os.environ.get("ANDROID_ADB_SERVER_HOST", "127.0.0.1"),
                              port=int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")))


@contextlib.contextmanager
def adb_errors(what: str):
    """adbutils/socket failures as one-line DeviceErrors."""
    from adbutils import AdbError, AdbTimeout

    try:
        yield
    except AdbTimeout as e:
        raise DeviceError(f"{what}: the adb server timed out ({e})") from None
    except AdbError as e:
        msg = str(e.args[0]) if e.args else str(e)
        if "not found" in msg or "offline" in msg:
            msg += " (is it plugged in with USB debugging allowed? see `thomas devices`)"
        raise DeviceError(f"{what}: {msg}") from None
    except (OSError, EOFError) as e:
        raise DeviceLost(f"{what}: connection to the device lost ({type(e).__name__}: {e})") from None


def list_devices() -> list[DeviceRow]:
    """Every device the adb server knows, with its model; [] when no server can be reached or started."""
    from adbutils import AdbError

    try:
        infos = client().list(extended=True)
    except (AdbError, OSError, FileNotFoundError):
        return []
    return [DeviceRow(i.serial, i.state, "adb", i.tags.get("model", "").replace("_", " "),
                      i.tags.get("product", "")) for i in infos]


class AdbProcess(AgentProcess):
    """The agent in an adb shell stream; the exit marker gives its status, the pid marker its pid."""

    def __init__(self, transport: "AdbTransport", conn, nonce: str):
        super().__init__()
        self.t, self.conn, self.pid = transport, conn, None
        self._exit = re.compile(rf"^__THOMAS_EXIT_{nonce}__(-?\d+)$")
        self._pid = re.compile(rf"^__THOMAS_PID_{nonce}__(\d+)$")
        sock = conn.conn
        sock.settimeout(None)
        self._start_reader(lambda: sock.recv(65536))

    def _feed(self, line: str) -> None:
        if m := self._pid.match(line):
            self.pid = int(m.group(1))
        elif m := self._exit.match(line):
            if self.returncode is None:
                self.returncode = int(m.group(1))
        else:
            self._q.put(line)

    def _finish(self) -> None:
        if self.returncode is None and self.lost is None:
            self.lost = f"the connection to {self.t.serial} closed before the agent exited"
        self.conn.close()

    def cancel(self) -> None:
        pid = self.pid
        if pid is not None and not self.ended:
            # NOTE: the phone may be hung: kill from a side thread and never wait on it for long.
            script = f"kill {pid} 2>/dev/null; (sleep 3; kill -9 {pid}) >/dev/null 2>&1 &"
            th = threading.Thread(target=self._kill, args=(script,), daemon=True)
            th.start()
            th.join(2)
        with contextlib.suppress(OSError):
            self.conn.close()
        self.ended = True

    def _kill(self, script: str) -> None:
        with contextlib.suppress(DeviceError):
            self.t.sh(script, timeout=3)


class AdbTransport(Transport):
    kind = "adb"

    def __init__(self, serial: str, root: str = DEFAULT_ROOT, python: str = DEFAULT_PYTHON, su: bool = False):
        root = root.rstrip("/") or "/"
        if not root.startswith("/"):
            raise DeviceError(f"--device-root must be an absolute path on the phone, got '{root}'")
        super().__init__(serial, root, python)
        self.su = su
        self.dev = client().device(serial)

    def describe(self) -> dict:
        return dict(super().describe(), su=self.su)

    def q(self, rel: str | None = None) -> str:
        """The quoted absolute device path of `rel` (the root itself for None)."""
        return shlex.quote(self.root if rel is None else f"{self.root}/{check_rel(rel)}")

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{check_rel(rel)}"

    # ------------------------------------------------------------------ shell
    def _as_user(self, script: str) -> str:
        return f"su -c {shlex.quote(script)}" if self.su else script

    def sh(self, script: str, timeout: float = 120) -> tuple[int, str]:
        """Run `script` in the phone's sh; returns (exit status, merged output). A missing exit
        marker means the device went away: DeviceLost."""
        nonce = secrets.token_hex(4)
        marker = f"__THOMAS_EXIT_{nonce}__"
        cmd = f"{self._as_user(f'( {script} ) 2>&1')}; echo {marker}$?"
        with adb_errors(f"device {self.serial}"):
            # NOTE: not dev.shell(): its OPEN waits up to 10 min on a hung phone; this one obeys timeout.
            with self.dev.open_transport(timeout=timeout) as c:
                c.send_command("shell:" + cmd)
                c.check_okay()
                raw = c.read_until_close(encoding=None)
        text = raw.decode("utf-8", "replace")
        head, sep, tail = text.rpartition(marker)
        if not sep:
            raise DeviceLost(f"lost device {self.serial} while running a command")
        return int(tail.strip() or "1"), head

    def check(self, script: str, what: str, timeout: float = 120) -> str:
        rc, out = self.sh(script, timeout)
        if rc != 0:
            raise DeviceError(f"{what} failed on {self.serial} (status {rc}): {out.strip()[-300:]}")
        return out

    # ------------------------------------------------------------------ files
    def stat(self, rel: str) -> Entry | None:
        with adb_errors(f"device {self.serial}"):
            st = self.dev.sync.stat(self._abs(rel))
        if st.mode == 0:
            return None
        return Entry(rel.rsplit("/", 1)[-1], stat_mod.S_ISDIR(st.mode), st.size,
                     st.mtime.timestamp() if st.mtime else 0.0)

    def listdir(self, rel: str) -> list[Entry]:
        with adb_errors(f"device {self.serial}"):
            infos = self.dev.sync.list(self._abs(rel))
        return sorted((Entry(i.path, stat_mod.S_ISDIR(i.mode), i.size, i.mtime.timestamp() if i.mtime else 0.0)
                       for i in infos if i.path not in (".", "..")), key=lambda e: e.name)

    def read_bytes(self, rel: str) -> bytes:
        # NOTE: sync RECV of a missing file fails late and vaguely; check first.
        if self.stat(rel) is None:
            raise DeviceError(f"{rel} does not exist on {self.serial} (under {self.root})")
        with adb_errors(f"reading {rel} from {self.serial}"):
            return self.dev.sync.read_bytes(self._abs(rel))

    def push_file(self, local: Path, rel: str) -> int:
        with adb_errors(f"pushing {local.name} to {self.serial}"):
            return self.dev.sync.push(str(local), self._abs(rel), mode=0o644)

    def pull_file(self, rel: str, local: Path) -> int:
        # NOTE: adbutils' pull of a missing path silently creates an empty folder; check first.
        st = self.stat(rel)
        if st is None or st.is_dir:
            raise DeviceError(f"{rel} is not a file on {self.serial} (under {self.root})")
        local.parent.mkdir(parents=True, exist_ok=True)
        with adb_errors(f"pulling {rel} from {self.serial}"):
            return self.dev.sync.pull_file(self._abs(rel), local)

    def remove(self, rel: str) -> None:
        self.check(f"rm -rf {self.q(rel)}", f"removing {rel}")

    def move(self, src: str, dst: str) -> None:
        d = self.q(dst)
        self.check(f"rm -rf {d} && mkdir -p {shlex.quote(self._abs(dst).rsplit('/', 1)[0])} && mv {self.q(src)} {d}",
                   f"moving {src} to {dst}")

    def free_bytes(self) -> int | None:
        rc, out = self.sh(f"mkdir -p {self.q()} && df -k {self.q()}", timeout=30)
        try:
            return int(out.strip().splitlines()[-1].split()[3]) * 1024 if rc == 0 else None
        except (IndexError, ValueError):
            return None

    # ------------------------------------------------------------------ agent
    def install_payload(self, archive: Path) -> None:
        self.check(f"mkdir -p {self.q()}", "creating the device root")
        self.push_file(archive, "agent.zip")
        py = shlex.quote(self.python)
        rc, out = self.sh(f"cd {self.q()} && rm -rf agent.new && {py} -m zipfile -e agent.zip agent.new && "
                          f"rm -rf agent && mv agent.new agent && rm -f agent.zip")
        if rc != 0:
            raise DeviceError(f"unpacking the agent on {self.serial} with '{self.python}' failed (status {rc}: "
                              f"{out.strip()[-200:]}); is --python right? see `thomas doctor`")

    def start_agent(self, args: list[str]) -> AdbProcess:
        nonce = secrets.token_hex(4)
        argv = " ".join(shlex.quote(a) for a in [self.python, "-u", "-m", "device_agent", *args])
        script = (f"if mkdir -p {self.q()} && cd {self.q()}; then "
                  f"PYTHONPATH={shlex.quote(self.root + '/agent')} {argv} 2>&1 & "
                  f"p=$!; echo __THOMAS_PID_{nonce}__$p; wait $p; echo __THOMAS_EXIT_{nonce}__$?; "
                  f"else echo __THOMAS_EXIT_{nonce}__125; fi")
        with adb_errors(f"device {self.serial}"):
            # NOTE: a second marker after `su` reports su's own failure; the first marker seen wins.
            conn = self.dev.open_shell(f"{self._as_user(script)}; echo __THOMAS_EXIT_{nonce}__$?")
        return AdbProcess(self, conn, nonce)

    def probe(self) -> dict:
        py = shlex.quote(self.python)
        libs = " ".join(OPENCL_LIBS)
        script = (f"echo python=$(command -v {py} 2>/dev/null); "
                  f"{py} -c 'import sys; print(\"python_version=\" + sys.version.split()[0])' 2>/dev/null; "
                  f"for f in {libs}; do [ -e $f ] && echo opencl_lib=$f; done; "
                  f"mkdir -p {self.q()} 2>/dev/null; [ -w {self.q()} ] && echo root_writable=1; "
                  f"command -v su >/dev/null 2>&1 && echo su=1; echo uid=$(id -u); "
                  f"for p in ro.product.model ro.build.version.release ro.build.version.sdk ro.product.cpu.abi "
                  f"ro.hardware.egl; do echo prop.$p=$(getprop $p); done")
        _, out = self.sh(script, timeout=60)
        facts: dict = {"python": None, "python_version": None, "root_writable": False, "su": False,
                       "opencl_libs": [], "props": {}}
        for line in out.splitlines():
            k, sep, v = line.partition("=")
            if not sep:
                continue
            if k == "opencl_lib":
                facts["opencl_libs"].append(v)
            elif k.startswith("prop."):
                facts["props"][k[5:]] = v.strip()
            elif k in ("root_writable", "su"):
                facts[k] = True
            elif k in ("python", "python_version", "uid"):
                facts[k] = v.strip() or None
        return facts
