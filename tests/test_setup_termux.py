"""`thomas setup termux` against the virtual adb device, and its bootstrap script run for real.

The phone's side of daemon mode is Termux, which no test machine has: here "Termux" is a HOME and a
PREFIX in tmp dirs, with `python` in $PREFIX/bin (this venv's) and a `termux-wake-lock` that leaves a
mark. The script the host generates runs with plain `sh` on this machine, as the user would type it;
the daemon it starts listens on this machine's loopback, which the virtual phone's `tcp:PORT` service
reaches, so `adb forward`, the probe, pairing and doctor run the real way. `pm` on the virtual phone
answers from VirtualDevice(packages=...).

What this cannot show: Termux itself (pkg, storage permission, the vendor OpenCL driver, Android
killing the app in the background) — see docs/ANDROID.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from devicekit import DeviceTarget, thomas
from virtual_adb import VirtualDevice, free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HAVE_ADB = shutil.which("adb") is not None
SCRUB = ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "THOMAS_SU", "THOMAS_MODE",
         "ANDROID_SERIAL", "ANDROID_ADB_SERVER_PORT", "ANDROID_ADB_SERVER_HOST", "ADBUTILS_ADB_PATH")
SERVE = Path(__file__).resolve().parents[1] / "device_agent" / "daemon" / "serve.py"
TERMUX_OK = ("com.termux@org.fdroid.fdroid+storage",)


def _need_adb():
    if not HAVE_ADB:
        pytest.skip("the virtual adb device needs the `adb` binary (Debian package adb; `make setup` installs it)")


def _need_serve():
    # NOTE: serve.py is another piece of issue 6; a checkout without it must fail loudly, not skip
    assert SERVE.is_file(), "device_agent/daemon/serve.py (the daemon) is missing: the bootstrap script has nothing to start"


def phone(tmp_path, monkeypatch, packages=()) -> tuple[VirtualDevice, DeviceTarget, str]:
    """A virtual phone with `packages`, the target selecting it, and the shared dir inside it."""
    _need_adb()
    for k in SCRUB:
        monkeypatch.delenv(k, raising=False)
    vd = VirtualDevice(tmp_path / "phone", packages=packages).start()
    for k, v in vd.env.items():
        monkeypatch.setenv(k, v)
    return vd, DeviceTarget("adb", Path(vd.root), ["-s", vd.serial], env=dict(vd.env), vdev=vd), \
        f"{vd.root}/sdcard/Download/thomas"


@pytest.fixture
def vphone(tmp_path, monkeypatch):
    made = []

    def make(packages=()):
        made.append(phone(tmp_path, monkeypatch, packages))
        return made[-1]

    yield make
    for vd, _, _ in made:
        vd.stop()


# ============================================================================ "Termux" on this machine
class Termux:
    """HOME and PREFIX of a pretend Termux; `run_script` types the bootstrap command."""

    def __init__(self, base: Path):
        self.home, self.prefix = base / "home", base / "usr"
        (self.prefix / "bin").mkdir(parents=True)
        self.home.mkdir()
        self._tool("python", f'exec {sys.executable} "$@"')
        self._tool("termux-wake-lock", 'echo locked >> "$HOME/wake-lock"')
        self.procs: list[subprocess.Popen] = []

    def _tool(self, name: str, body: str) -> None:
        p = self.prefix / "bin" / name
        p.write_text(f"#!/bin/sh\n{body}\n")
        p.chmod(0o755)

    def env(self, **extra) -> dict:
        env = {"HOME": str(self.home), "PREFIX": str(self.prefix), "TMPDIR": str(self.home),
               "PATH": f"{self.prefix}/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def start(self, cmd: list[str], **extra) -> "Daemon":
        p = subprocess.Popen(cmd, env=self.env(**extra), cwd=self.home, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs.append(p)
        return Daemon(p)

    def run_script(self, script: str, **extra) -> "Daemon":
        return self.start(["sh", script], **extra)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


class Daemon:
    """The script's (then the daemon's) merged output, read by a thread and searched as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.cv, self.eof = proc, [], threading.Condition(), False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()
        self.proc.wait()                # reaped at once, as Termux's shell would
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for ln in self.lines:
                    if m := re.search(pattern, ln):
                        return m
                if self.eof or time.monotonic() > deadline:
                    raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))
                self.cv.wait(0.2)

    def exited(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout)
        time.sleep(0.1)
        return rc

    @property
    def text(self) -> str:
        with self.cv:
            return "\n".join(self.lines)


@pytest.fixture
def termux(tmp_path):
    t = Termux(tmp_path / "termux")
    yield t
    t.stop()


def welcome(port: int) -> dict:
    """The daemon's first frame, straight over loopback (no adb)."""
    from device_agent.protocol import read_frame

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return read_frame(s.makefile("rb"))[0]


def write_bootstrap(shared: Path, port: int = 7878) -> str:
    """What `thomas setup termux` pushes, written to a local folder; returns the payload hash."""
    from thomas_cli.device import build_payload
    from thomas_cli.termux import PAYLOAD_ZIP, SCRIPT, bootstrap_script

    shared.mkdir(parents=True, exist_ok=True)
    z, digest = build_payload(shared)
    z.replace(shared / PAYLOAD_ZIP)
    (shared / SCRIPT).write_text(bootstrap_script(digest, "0.1.0", port, str(shared)))
    return digest


# ============================================================================ the pieces
def test_bootstrap_script_text():
    from thomas_cli.termux import bootstrap_script

    s = bootstrap_script("ab" * 32, "0.1.0", 7979, "/sdcard/My Files/thomas")
    assert subprocess.run(["sh", "-n"], input=s, text=True).returncode == 0
    assert "--port 7979" in s and "sh '/sdcard/My Files/thomas/thomas-termux.sh'" in s
    assert 'exec env PYTHONPATH="$root/agent" python -m device_agent serve --root "$root"' in s
    assert 'exec env PYTHONPATH="$root/agent" python -m device_agent pair --root "$root"' in s
    with pytest.raises(ValueError):
        bootstrap_script("'; rm -rf ~; '", "0.1.0")


def test_parsers():
    from thomas_cli.termux import installer_of, storage_granted

    listing = "package:com.termux.api  installer=null\npackage:com.termux  installer=com.android.vending"
    assert installer_of(listing, "com.termux") == "com.android.vending"
    assert installer_of(listing, "com.termux.api") is None
    dump = ("  Package [com.termux] (4f2a):\n    User 0: ceDataInode=1 installed=true\n      runtime permissions:\n"
            "        android.permission.READ_EXTERNAL_STORAGE: granted=false, flags=[ USER_SENSITIVE ]\n")
    assert storage_granted(dump) is False
    assert storage_granted(dump.replace("granted=false", "granted=true")) is True
    assert storage_granted(dump, "MANAGE_EXTERNAL_STORAGE: allow; time=+3d") is True
    assert storage_granted("Unable to find package: com.termux") is None


# ============================================================================ setup against the virtual phone
def test_missing_termux_fails_clearly(vphone):
    vd, dev, shared = vphone(packages=())
    r = thomas(dev, "setup", "termux", "--yes", "--shared-dir", shared, expect=1)
    errline = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errline) == 1, r.stderr
    assert "Termux (com.termux) is not installed" in errline[0] and "F-Droid" in errline[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert not Path(shared).exists()                      # nothing pushed before Termux exists

    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, expect=1)
    res = json.loads(r.stdout)
    assert res["ok"] is False and [(c["step"], c["state"]) for c in res["steps"]] == [("Termux", "fail")]


def test_pushes_payload_and_script_then_waits_for_the_daemon(vphone):
    vd, dev, shared = vphone(packages=TERMUX_OK)
    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(free_port()), expect=1)
    res = json.loads(r.stdout)
    states = {c["step"]: c["state"] for c in res["steps"]}
    assert states == {"Termux": "ok", "packages": "manual", "storage": "ok", "push": "ok", "daemon": "fail"}, res
    assert "F-Droid" in res["steps"][0]["value"]
    assert "no THOMAS daemon answers" in r.stderr and "thomas-termux.sh" in r.stderr
    # both files on the phone, the script bound to exactly this payload
    script = (Path(shared) / "thomas-termux.sh").read_text()
    with zipfile.ZipFile(Path(shared) / "thomas-agent.zip") as z:
        meta = json.loads(z.read("PAYLOAD"))
        assert "device_agent/daemon/serve.py" in z.namelist() or not SERVE.exists()
    assert meta["hash"] == res["payload"] and f"want='{meta['hash']}'" in script


def test_play_store_termux_and_no_storage_warn_but_go_on(vphone):
    vd, dev, shared = vphone(packages=("com.termux@com.android.vending", "com.termux.api@com.android.vending"))
    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(free_port()), expect=1)
    steps = {c["step"]: c for c in json.loads(r.stdout)["steps"]}
    assert steps["Termux"]["state"] == "warn" and "Google Play" in steps["Termux"]["value"]
    assert "Termux:API installed" in steps["Termux"]["value"]
    assert steps["storage"]["state"] == "warn" and "termux-setup-storage" in steps["storage"]["fix"]
    assert steps["push"]["state"] == "ok"                 # warnings do not stop a --yes run


def test_interactive_retry_then_quit(vphone, monkeypatch):
    from thomas_cli.commands import setup as setup_cmd

    vd, dev, shared = vphone(packages=())
    monkeypatch.setattr(setup_cmd, "_interactive", lambda yes: True)
    # Enter (Termux installed), the check fails, r(etry): fails again, q(uit)
    from typer.testing import CliRunner

    from thomas_cli.main import app

    r = CliRunner().invoke(app, [*dev.args, "setup", "termux", "--shared-dir", shared], input="\nr\nq\n")
    assert r.exit_code == 1, r.output
    assert r.stdout.count("is not installed") == 2 and "[r]etry" in r.stdout
    assert "error: Termux: Termux (com.termux) is not installed" in r.stderr and "Traceback" not in r.output


# ============================================================================ the script, run for real
def test_bootstrap_script_unpacks_installs_and_starts_the_daemon(tmp_path, termux):
    _need_serve()
    shared = tmp_path / "sdcard" / "Download" / "thomas"
    digest = write_bootstrap(shared)
    d = termux.run_script(str(shared / "thomas-termux.sh"), THOMAS_DAEMON_ARGS="--port 0")
    port = int(d.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    code = d.wait_for(r"pairing code: (\d{6})").group(1)
    agent = termux.home / "thomas" / "agent"
    assert json.loads((agent / "PAYLOAD").read_text())["hash"] == digest
    assert (agent / "device_agent" / "daemon" / "serve.py").is_file() and not (termux.home / "thomas" / "agent.new").exists()
    wrapper = termux.prefix / "bin" / "thomas-daemon"
    assert os.access(wrapper, os.X_OK) and (termux.home / "wake-lock").read_text() == "locked\n"
    w = welcome(port)
    assert w["op"] == "welcome" and w["payload"] == digest and w["pairing"] is True
    assert w["root"] == str((termux.home / "thomas").resolve())
    assert len(code) == 6

    # `thomas-daemon pair` opens a new code for the running daemon
    p = subprocess.run([str(wrapper), "pair"], env=termux.env(), capture_output=True, text=True, timeout=20)
    assert p.returncode == 0 and re.search(r"pairing code: \d{6}", p.stdout), p.stdout + p.stderr

    # rerunning the script upgrades: the old daemon is stopped, a new one serves the same root
    old = d.proc.pid
    d2 = termux.run_script(str(shared / "thomas-termux.sh"), THOMAS_DAEMON_ARGS="--port 0")
    d2.wait_for(rf"stopping the running THOMAS daemon \(pid {old}\)")
    port2 = int(d2.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    assert d.exited() == 0
    assert welcome(port2)["payload"] == digest


def test_bootstrap_script_refuses_outside_termux_and_a_mismatched_payload(tmp_path, termux):
    shared = tmp_path / "shared"
    write_bootstrap(shared)
    env = termux.env()
    del env["PREFIX"]
    p = subprocess.run(["sh", str(shared / "thomas-termux.sh")], env=env, capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "run this inside Termux" in p.stderr
    # a zip from another build next to this script: refused before anything changes
    from thomas_cli.termux import bootstrap_script

    (shared / "thomas-termux.sh").write_text(bootstrap_script("0" * 64, "0.1.0", 7878, str(shared)))
    p = subprocess.run(["sh", str(shared / "thomas-termux.sh")], env=termux.env(), capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 1 and "this script wants 000000000000" in p.stderr, p.stderr
    assert not (termux.home / "thomas" / "agent").exists() and not (termux.prefix / "bin" / "thomas-daemon").exists()


def test_setup_end_to_end_through_adb_forward(vphone, termux):
    """setup pushes; the script (typed in 'Termux') starts the daemon; setup again: probe, pair, doctor."""
    _need_serve()
    vd, dev, shared = vphone(packages=TERMUX_OK)
    port = free_port()
    thomas(dev, "setup", "termux", "--yes", "--shared-dir", shared, "--port", str(port), expect=1)
    d = termux.run_script(f"{shared}/thomas-termux.sh")
    code = d.wait_for(r"pairing code: (\d{6})").group(1)

    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(port),
               "--code", code, "--name", "test-laptop", "--wait", "10")
    res = json.loads(r.stdout)
    assert res["ok"] is True, r.stderr
    assert {c["step"]: c["state"] for c in res["steps"]} == {
        "Termux": "ok", "packages": "manual", "storage": "ok", "push": "ok", "daemon": "ok", "pair": "ok",
        "doctor": "ok"}
    checks = {c["check"]: c for c in res["doctor"]["checks"]}
    assert checks["numpy"]["state"] == "ok" and "using daemon" in checks["modes"]["value"]
    assert res["doctor"]["device"]["transport"] == "daemon"
    rec = json.loads((Path(os.environ["THOMAS_HOME"]) / "pairing" / f"{vd.serial.replace(':', '_')}.json").read_text())
    assert rec["name"] == "test-laptop" and rec["port"] == port

    # a rerun on a set-up phone needs no code: every step passes as it stands
    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(port))
    res = json.loads(r.stdout)
    assert res["ok"] is True and "is paired with the daemon" in res["steps"][-2]["value"], r.stderr


def _restart_on_tampered_agent(termux: Termux, d: Daemon, path: str, old: str, new: str) -> Daemon:
    """Stop the daemon, change one file of the agent Termux has, start it again with `thomas-daemon`."""
    os.killpg(d.proc.pid, signal.SIGTERM)
    d.exited()
    f = termux.home / "thomas" / "agent" / path
    f.write_text(f.read_text().replace(old, new))
    d = termux.start([str(termux.prefix / "bin" / "thomas-daemon")])
    d.wait_for(r"listening on")
    return d


def test_setup_refuses_a_daemon_of_another_protocol_until_the_script_upgrades_it(vphone, termux):
    _need_serve()
    from device_agent.protocol import PROTOCOL_VERSION

    vd, dev, shared = vphone(packages=TERMUX_OK)
    port = free_port()
    thomas(dev, "setup", "termux", "--yes", "--shared-dir", shared, "--port", str(port), expect=1)
    d = termux.run_script(f"{shared}/thomas-termux.sh")
    d.wait_for(r"listening on")
    old = _restart_on_tampered_agent(termux, d, "device_agent/protocol.py", f"PROTOCOL_VERSION = {PROTOCOL_VERSION}",
                                     "PROTOCOL_VERSION = 999")

    r = thomas(dev, "setup", "termux", "--yes", "--shared-dir", shared, "--port", str(port), expect=1)
    assert "speaks protocol 999" in r.stderr and "thomas-termux.sh` again" in r.stderr, r.stderr
    # the script, typed again, stops that daemon and starts the agent this computer pushed
    new = termux.run_script(f"{shared}/thomas-termux.sh")
    new.wait_for(rf"stopping the running THOMAS daemon \(pid {old.proc.pid}\)")
    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(port),
               "--wait", "10", expect=1)
    states = {c["step"]: c["state"] for c in json.loads(r.stdout)["steps"]}
    assert states["daemon"] == "ok" and states["pair"] == "fail"      # not paired yet: --code needed
    assert "rerun with --code CODE" in r.stderr


def test_setup_updates_an_older_agent_through_the_daemon(vphone, termux):
    """Same protocol, older payload: no script rerun; once paired, doctor installs this computer's agent."""
    _need_serve()
    vd, dev, shared = vphone(packages=TERMUX_OK)
    port = free_port()
    thomas(dev, "setup", "termux", "--yes", "--shared-dir", shared, "--port", str(port), expect=1)
    d = termux.run_script(f"{shared}/thomas-termux.sh")
    d.wait_for(r"listening on")
    payload = termux.home / "thomas" / "agent" / "PAYLOAD"
    digest = json.loads(payload.read_text())["hash"]
    d = _restart_on_tampered_agent(termux, d, "PAYLOAD", digest, "e" * 64)
    code = d.wait_for(r"pairing code: (\d{6})").group(1)

    r = thomas(dev, "setup", "termux", "--yes", "--json", "--shared-dir", shared, "--port", str(port),
               "--code", code, "--wait", "5")
    res = json.loads(r.stdout)
    steps = {c["step"]: c for c in res["steps"]}
    assert res["ok"] is True and "updated through it at step 7" in steps["daemon"]["value"], r.stderr
    assert json.loads(payload.read_text())["hash"] == digest          # the daemon installed the pushed agent
    checks = {c["check"]: c for c in res["doctor"]["checks"]}
    assert "pushed now" in checks["agent"]["value"]
