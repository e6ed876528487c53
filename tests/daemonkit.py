"""A real `python -m device_agent serve` subprocess and a raw client of the daemon wire (protocol.py),
for the daemon's own tests: no adb, plain TCP on loopback.

    d = DaemonProc(tmp_path / "root")          # port 0; d.port, d.code (the pairing code it printed)
    c = Client(d.port); host, token = c.pair(d.code)
    c = Client(d.port); c.auth(host, token); c.req("stat", path="x")
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from device_agent.protocol import WireError, auth_mac, encode_frame, read_frame

REPO = Path(__file__).resolve().parents[1]

# A stand-in agent for job tests (the daemon runs whatever <root>/agent holds). Its lines:
#   hello event, "to stderr" (stderr), then for `run N DELAY [TOUCH] [stubborn]`: "log i" + a step event
#   N times, DELAY s apart, then the file TOUCH, a done event; `stubborn` ignores SIGTERM; `long`: one
#   line of 100000 characters.
FAKE_AGENT = '''\
import json, os, signal, sys, time
a = sys.argv[1:]
def ev(name, **kw):
    print(json.dumps({"ev": name, **kw}), flush=True)
ev("hello", protocol=1, agent="fake", payload=None, python="3", pid=os.getpid())
print("to stderr", file=sys.stderr, flush=True)
if a[:1] == ["run"]:
    if "stubborn" in a:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for i in range(int(a[1])):
        print(f"log {i}", flush=True)
        ev("step", step=i)
        time.sleep(float(a[2]))
    if len(a) > 3 and a[3] != "stubborn":
        open(a[3], "w").write("ran")
    ev("done")
if a[:1] == ["long"]:
    print("x" * 100000, flush=True)
'''


def install_fake_agent(root: Path) -> None:
    pkg = root / "agent" / "device_agent"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_AGENT)


class DaemonProc:
    """The daemon as a subprocess; its stderr lines are collected (and searched) by a thread."""

    def __init__(self, root: Path, *args: str, expect_code: bool | None = None):
        self.root = Path(root)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen([sys.executable, "-m", "device_agent", "serve", "--port", "0", "--root",
                                   str(self.root), *args], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        if expect_code is None:
            expect_code = not (self.root / ".daemon" / "hosts.json").exists() or "--pair" in args
        self.code = self.wait_line(r"pairing code: (\d{6})").group(1) if expect_code else None

    def _pump(self) -> None:
        for ln in self.p.stderr:
            with self.cond:
                self.lines.append(ln.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)        # EOF
            self.cond.notify_all()

    def wait_line(self, pattern: str, start: int = 0, timeout: float = 10) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    ln = self.lines[i]
                    if ln is None:
                        raise AssertionError(f"daemon exited before {pattern!r}:\n" + self.log())
                    if m := rx.search(ln):
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} from the daemon within {timeout} s:\n" + self.log())
                self.cond.wait(left)

    def log(self) -> str:
        with self.cond:
            return "\n".join(ln for ln in self.lines if ln is not None)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        return self.p.wait(15)


class Client:
    """One raw connection: the welcome on connect, then request/answer frames."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.rfile = self.sock.makefile("rb")
        self.id = 0
        self.welcome, _ = self.frame()
        self.data = b""

    def send(self, op: str, data: bytes = b"", **fields) -> None:
        self.id += 1
        self.sock.sendall(encode_frame({"op": op, "id": self.id, **fields}, data))

    def frame(self) -> tuple[dict, bytes]:
        return read_frame(self.rfile)

    def req(self, op: str, data: bytes = b"", **fields) -> dict:
        """The answer's header (its bytes in self.data)."""
        self.send(op, data, **fields)
        ans, self.data = self.frame()
        assert ans.get("id") == self.id, ans
        return ans

    def ok(self, op: str, data: bytes = b"", **fields) -> dict:
        ans = self.req(op, data, **fields)
        assert ans["ok"] is True, ans
        return ans

    def pair(self, code: str, name: str = "laptop") -> tuple[str, str]:
        ans = self.ok("pair", code=code, name=name)
        return ans["host"], ans["token"]

    def auth(self, host: str, token: str) -> dict:
        return self.req("auth", host=host, mac=auth_mac(token, self.welcome["nonce"], host))

    def stream(self, until_end: bool = True):
        """Job stream frames (queued / out / end); stops after end."""
        while True:
            f, _ = self.frame()
            yield f
            if f["op"] == "end" and until_end:
                return

    def hung_up(self) -> bool:
        """The daemon closed this connection (EOF or reset on the next read)."""
        try:
            self.frame()
        except (WireError, ConnectionError):
            return True
        return False

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()
