"""Daemon mode end to end: `python -m device_agent serve` on the virtual phone's loopback, reached by
the host through a real `adb forward` (real adb server, the fake adbd's `tcp:` service, adbutils).

Happy path: pair, doctor (picks the daemon), push-model, push-data, finetune streaming to `done`,
runs pull. Failure paths: a wrong or missing token runs nothing; the connection drops mid-run and the
stream re-attaches (every event exactly once); the host process dies and `thomas runs attach` picks up
(every event exactly once); the daemon is killed mid-run (clear error, checkpoints intact, resume after
a restart); corrupted chunks are retried, then refused; two hosts at once (the second queues).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devicekit import (RUN_ARGS, ZOO_ARGS, DeviceTarget, image_folder, only_run, start_long_run, thomas,
                       thomas_json, thomas_proc, wait_for_event)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parent.parent
SCRUB = ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "THOMAS_SU", "THOMAS_MODE",
         "ANDROID_SERIAL", "ANDROID_ADB_SERVER_PORT", "ANDROID_ADB_SERVER_HOST", "ADBUTILS_ADB_PATH")


# ============================================================================ the daemon on the virtual phone
class Daemon:
    """`python -m device_agent serve` as Termux would run it: its own root, a loopback port, stderr kept."""

    def __init__(self, root: Path, port: int = 0, pair: bool = False):
        self.root, self.lines = root, []
        self.port = port
        self.code: str | None = None
        self._ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("THOMAS_", "ANDROID_", "ADB"))}
        env["PYTHONPATH"] = str(REPO)
        args = [sys.executable, "-u", "-m", "device_agent", "serve", "--port", str(port), "--root", str(root)]
        self.proc = subprocess.Popen(args + (["--pair"] if pair else []), cwd=REPO, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(30), f"the daemon did not start: {self.lines}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                self._ready.set()
            if m := re.search(r"pairing code: (\d{6})", line):
                self.code = m.group(1)
        self._ready.set()

    def wait_code(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while self.code is None:
            assert time.monotonic() < deadline, f"no pairing code shown: {self.lines}"
            time.sleep(0.02)
        return self.code

    def new_code(self) -> str:
        """`python -m device_agent pair` typed in Termux: a fresh code for the running daemon."""
        r = subprocess.run([sys.executable, "-m", "device_agent", "pair", "--root", str(self.root)], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=30)
        m = re.search(r"pairing code: (\d{6})", r.stdout + r.stderr)
        assert m, r.stdout + r.stderr
        return m.group(1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _target(vd, tmp_path, monkeypatch, home_name: str = "home") -> DeviceTarget:
    for k in SCRUB:
        monkeypatch.delenv(k, raising=False)
    for k, v in vd.env.items():
        monkeypatch.setenv(k, v)
    home = tmp_path / home_name
    monkeypatch.setenv("THOMAS_HOME", str(home))
    root = Path(vd.root) / tmp_path.name / "termux" / "thomas"
    return DeviceTarget("daemon", root, ["-s", vd.serial], env=dict(vd.env, THOMAS_HOME=str(home)), vdev=vd)


@pytest.fixture
def daemon_dev(shared_vdev, tmp_path, monkeypatch):
    dev = _target(shared_vdev, tmp_path, monkeypatch)
    d = Daemon(dev.root)
    yield dev, d
    d.stop()


def paired(dev: DeviceTarget, d: Daemon, code: str | None = None) -> dict:
    thomas(dev, "pair", "--code", code or d.wait_code(), "--port", str(d.port), "--name", "test-laptop")
    from thomas_cli.transport.daemon import load_pairing

    return load_pairing(dev.vdev.serial)


def push_basics(dev: DeviceTarget, tmp_path: Path, per_class: int = 10) -> None:
    thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2")
    thomas(dev, "push-data", str(image_folder(tmp_path / "digits", n_per_class=per_class, bad=False)),
           "--size", "32", "--val", "0.2")


def steps_of(run: Path) -> list[int]:
    return [e["step"] for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["ev"] == "step"]


# ============================================================================ happy path
def test_pair_doctor_finetune_pull(daemon_dev, tmp_path):
    dev, d = daemon_dev
    r = thomas(dev, "pair", "--code", "000000" if d.wait_code() != "000000" else "111111", "--port", str(d.port),
               expect=1)
    assert "refused" in r.stderr and "Traceback" not in r.stderr
    rec = paired(dev, d)
    from thomas_cli.transport.daemon import pairing_path

    assert stat.S_IMODE(pairing_path(dev.vdev.serial).stat().st_mode) == 0o600 and len(rec["token"]) == 64
    assert stat.S_IMODE((dev.root / ".daemon" / "hosts.json").stat().st_mode) == 0o600
    (row,) = [r for r in thomas_json(dev, "devices") if r["serial"] == dev.vdev.serial]
    assert "paired with its THOMAS daemon" in row["detail"]
    doc = thomas_json(dev, "doctor")
    checks = {c["check"]: c for c in doc["checks"]}
    assert doc["device"]["transport"] == "daemon" and doc["ok"], doc
    assert "daemon paired" in checks["modes"]["value"] and "using daemon" in checks["modes"]["value"]
    assert checks["numpy"]["state"] == "ok" and doc["agent"]["pushed"]
    assert (dev.root / "agent" / "PAYLOAD").is_file()          # the payload landed through the daemon
    push_basics(dev, tmp_path)
    assert {m["name"] for m in thomas_json(dev, "models", "list")} == {"mnv2"}
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--epochs", "2", *RUN_ARGS, "--json")
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert [events[0]["ev"], events[1]["ev"], events[-1]["ev"]] == ["hello", "plan", "done"]
    run = only_run(Path(dev.env["THOMAS_HOME"]))
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "done" and rec["device"]["transport"] == "daemon" and rec["daemon_job"]
    assert (run / "final" / "model.json").is_file()
    pulled = thomas_json(dev, "runs", "pull", run.name)
    assert any(f.startswith("ckpt/") for f in pulled["files"])
    jobs = thomas_json(dev, "doctor")                           # the daemon is still healthy afterwards
    assert jobs["ok"]


def test_wrong_or_missing_token_runs_nothing(daemon_dev, tmp_path):
    dev, d = daemon_dev
    rec = paired(dev, d)
    from thomas_cli.transport.daemon import pairing_path, save_pairing

    save_pairing(dev.vdev.serial, dict(rec, token="ab" * 32))
    r = thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2", expect=1)
    assert "refused this computer" in r.stderr and "Traceback" not in r.stderr
    assert not (dev.root / "models").exists() and not (dev.root / "agent").exists()
    pairing_path(dev.vdev.serial).unlink()
    r = thomas(dev, "--mode", "daemon", "doctor", expect=1)
    assert "not paired" in r.stderr
    # raw: a client that skips auth is answered 'auth' and hung up on, and nothing runs
    from device_agent.protocol import encode_frame, read_frame
    from thomas_cli.transport.daemon import forward

    with socket.create_connection(("127.0.0.1", forward(dev.vdev.serial, d.port)), timeout=10) as s:
        f = s.makefile("rb")
        assert read_frame(f)[0]["op"] == "welcome"
        s.sendall(encode_frame({"op": "start", "id": 1, "args": ["hello"]}))
        ans, _ = read_frame(f)
        assert not ans["ok"] and ans["code"] == "auth"
        assert f.read() == b""                                   # hung up
    assert not (dev.root / ".daemon" / "jobs").exists() or not any((dev.root / ".daemon" / "jobs").iterdir())


def test_bench_infer_and_runs_rm_through_the_daemon(daemon_dev, tmp_path):
    """The other commands run unchanged over the daemon transport."""
    import numpy as np

    dev, d = daemon_dev
    paired(dev, d)
    doc = thomas_json(dev, "bench", "mobilenet_v2", "--width", "0.35", "--size", "32", "--classes", "10",
                      "--batch", "2", "--steps", "1", "--stage", "infer")
    assert doc["summary"]["ev"] == "bench" and doc["layers"]
    thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    rep = thomas_json(dev, "infer", "mnv2", "--input", str(tmp_path / "x.npy"), "--output",
                      str(tmp_path / "y.npy"), "--backend", "numpy")
    assert rep["throughput"]["transport"] == "daemon" and np.load(tmp_path / "y.npy").shape == (2, 3)
    runs = thomas_json(dev, "runs", "list")
    assert runs and all(r["status"] == "done" for r in runs)
    thomas(dev, "runs", "rm", runs[0]["id"])
    assert not (dev.root / "runs" / runs[0]["id"]).exists()


def test_revoked_host_is_refused_from_its_next_connection(daemon_dev):
    """`thomas-daemon pair --list / --revoke` in Termux: the revoked laptop must pair again."""
    dev, d = daemon_dev
    rec = paired(dev, d)
    thomas(dev, "doctor")

    def termux(*args):
        return subprocess.run([sys.executable, "-m", "device_agent", "pair", "--root", str(d.root), *args], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=30)

    listed = termux("--list")
    assert rec["host"] in listed.stdout and "test-laptop" in listed.stdout
    assert termux("--revoke", "nobody").returncode == 1
    assert termux("--revoke", "test-laptop").returncode == 0
    r = thomas(dev, "doctor", expect=1)
    assert "refused this computer" in r.stderr and "Traceback" not in r.stderr
    assert "no computer is paired" in termux("--list").stdout
    paired(dev, d, code=d.new_code())                          # pairing again works
    thomas(dev, "doctor")


# ============================================================================ drops and re-attaching
def _start(dev, tmp_path, epochs: int, per_class: int = 16, extra=()):
    push_basics(dev, tmp_path, per_class=per_class)
    return start_long_run(dev, Path(dev.env["THOMAS_HOME"]), epochs, *extra)


def test_connection_drop_reattaches_every_event_once(daemon_dev, tmp_path):
    dev, d = daemon_dev
    paired(dev, d)
    p, run = _start(dev, tmp_path, epochs=3)
    wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "step" and e["step"] >= 2, proc=p)
    assert dev.vdev.drop_tcp() >= 1                            # the USB hiccup: forwarded streams break
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "re-attached" in stderr
    steps = steps_of(run)
    assert steps == list(range(1, len(steps) + 1))             # every step once, in order
    device_steps = [e["step"] for e in map(json.loads, (dev.root / "runs" / run.name / "events.jsonl")
                                           .read_text().splitlines()) if e["ev"] == "step"]
    assert steps == device_steps


def test_host_killed_then_runs_attach(daemon_dev, tmp_path):
    dev, d = daemon_dev
    paired(dev, d)
    p, run = _start(dev, tmp_path, epochs=3)
    wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "step" and e["step"] >= 2, proc=p)
    p.kill()                                                   # the laptop side dies; the job goes on
    p.wait()
    with open(run / "events.jsonl", "a") as f:
        f.write('{"ev": "step", "ste')                        # the host died mid-write
    r = thomas(dev, "runs", "attach", run.name, "--json")
    assert json.loads(r.stdout.splitlines()[-1])["ev"] == "done"
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [e["ev"] for e in events].count("hello") == 1 and events[-1]["ev"] == "done"
    device = [json.loads(x) for x in (dev.root / "runs" / run.name / "events.jsonl").read_text().splitlines()]
    strip = lambda evs: [(e["ev"], e.get("step"), e.get("epoch")) for e in evs if e["ev"] != "hello"]  # noqa: E731
    assert strip(events) == strip(device)                      # exactly the device's events, each once
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert (run / "final" / "model.json").is_file()
    r = thomas(dev, "runs", "attach", "nope", expect=1)
    assert "no run 'nope'" in r.stderr


def test_runs_cancel_stops_a_detached_daemon_run(daemon_dev, tmp_path):
    """The laptop lost the run (killed here); `thomas runs cancel` stops it on the phone, checkpoints stay."""
    dev, d = daemon_dev
    paired(dev, d)
    p, run = _start(dev, tmp_path, epochs=200)
    wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "checkpoint", proc=p)
    p.kill()
    p.wait()
    job = json.loads((run / "run.json").read_text())["daemon_job"]
    assert {j["job"]: j for j in _jobs(dev)}[job]["state"] == "running"     # the phone goes on alone
    r = thomas(dev, "runs", "cancel", run.name)
    assert "cancelled" in r.stdout and "--resume" in r.stdout
    assert {j["job"]: j for j in _jobs(dev)}[job]["state"] == "cancelled"
    assert json.loads((run / "run.json").read_text())["status"] == "cancelled"
    assert any((dev.root / "runs" / run.name / "ckpt").iterdir())
    assert "cancelled" in thomas(dev, "runs", "cancel", run.name).stdout     # again: says so, no error


def test_daemon_killed_mid_run_then_resume(own_vdev, tmp_path, monkeypatch):
    dev = _target(own_vdev, tmp_path, monkeypatch)
    d = Daemon(dev.root)
    try:
        paired(dev, d)
        p, run = _start(dev, tmp_path, epochs=3, extra=("--timeout", "20"))
        wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "checkpoint", proc=p)
        d.kill()
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 1, stderr
        assert "lost" in stderr and "runs attach" in stderr and "--resume" in stderr and "Traceback" not in stderr
        ckpt = dev.root / "runs" / run.name / "ckpt"
        assert any(ckpt.iterdir())
        port = d.port
        d = Daemon(dev.root, port=port)                        # restarted in Termux, same port
        jobs = {j["job"]: j for j in _jobs(dev)}
        assert jobs[json.loads((run / "run.json").read_text())["daemon_job"]]["state"] == "lost"
        r = thomas(dev, "finetune", "--resume", run.name, "--json")
        ev = [json.loads(x) for x in r.stdout.splitlines()]
        assert ev[1]["ev"] == "plan" and ev[1]["start_step"] > 0 and ev[-1]["ev"] == "done"
    finally:
        d.stop()


def _jobs(dev) -> list[dict]:
    from thomas_cli.transport.daemon import DaemonTransport

    t = DaemonTransport(dev.vdev.serial)
    try:
        return t.jobs()
    finally:
        t.close()


def test_two_hosts_second_queues(daemon_dev, tmp_path, monkeypatch):
    """Another laptop's run waits behind the running one (one job at a time on the phone's GPU);
    Ctrl-C on the first laptop cancels its job on the daemon and the second one starts."""
    dev, d = daemon_dev
    paired(dev, d)
    other = _target(dev.vdev, tmp_path, monkeypatch, home_name="home2")   # a second laptop
    paired(other, d, code=d.new_code())
    monkeypatch.setenv("THOMAS_HOME", dev.env["THOMAS_HOME"])
    p1, run1 = _start(dev, tmp_path, epochs=200)
    wait_for_event(run1 / "events.jsonl", lambda e: e["ev"] == "step", proc=p1)
    p2 = thomas_proc(other, "finetune", "mnv2", "--data", "digits", "--epochs", "1", *RUN_ARGS)
    deadline = time.monotonic() + 60
    while not any(j["state"] == "queued" for j in _jobs(dev)):
        assert time.monotonic() < deadline and p2.poll() is None, p2.communicate()
        time.sleep(0.1)
    assert p1.poll() is None                                   # the first run is still going
    p1.send_signal(signal.SIGINT)                              # Ctrl-C on the first laptop
    _, err1 = p1.communicate(timeout=60)
    assert p1.returncode != 0 and "Traceback" not in err1
    _, err2 = p2.communicate(timeout=120)
    assert p2.returncode == 0, err2
    assert "queued on" in err2
    jobs = {j["job"]: j for j in _jobs(dev)}
    job1 = jobs[json.loads((run1 / "run.json").read_text())["daemon_job"]]
    run2 = only_run(Path(other.env["THOMAS_HOME"]))
    job2 = jobs[json.loads((run2 / "run.json").read_text())["daemon_job"]]
    assert job1["state"] == "cancelled" and job2["state"] == "done"
    assert job2["started"] >= job1["ended"]                    # one job at a time


# ============================================================================ corrupted chunks
class Corrupter:
    """A frame-aware proxy in front of the forwarded port: flips one byte of the data of the first
    `bad` put_chunk frames (host -> daemon); with `drop_after`, cuts the connection (both ways) right
    after forwarding that many put_chunk frames, once."""

    def __init__(self, target_port: int, bad: int = 0, drop_after: int | None = None):
        self.target, self.bad, self.drop_after = target_port, bad, drop_after
        self.flipped = self.chunks = 0
        self.chunk_bytes = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, c, u):
        f = c.makefile("rb")
        try:
            while line := f.readline():
                head = json.loads(line)
                data = f.read(head.get("n", 0)) if head.get("n") else b""
                if head.get("op") == "put_chunk" and data and self.flipped < self.bad:
                    self.flipped += 1
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                u.sendall(line + data)
                if head.get("op") == "put_chunk":
                    self.chunks += 1
                    self.chunk_bytes += len(data)
                    if self.chunks == self.drop_after:    # the chunk went out, its answer is lost
                        c.shutdown(socket.SHUT_RDWR)
                        break
        except OSError:
            pass
        finally:
            u.close()

    def _down(self, u, c):
        try:
            while data := u.recv(65536):
                c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()


@pytest.mark.parametrize("bad", [1, 100])
def test_corrupted_chunk_retried_then_refused(daemon_dev, tmp_path, monkeypatch, bad):
    dev, d = daemon_dev
    paired(dev, d)
    from thomas_cli.transport import daemon as dmod

    real = dmod.forward(dev.vdev.serial, d.port)
    proxy = Corrupter(real, bad)
    monkeypatch.setattr(dmod, "forward", lambda serial, port: proxy.port)
    t = dmod.DaemonTransport(dev.vdev.serial)
    blob = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    if bad == 1:
        assert t.push_file(src, "data/blob.bin") == len(blob) and proxy.flipped == 1
        assert (dev.root / "data" / "blob.bin").read_bytes() == blob
        back = tmp_path / "back.bin"
        t.pull_file("data/blob.bin", back)
        assert back.read_bytes() == blob
    else:
        with pytest.raises(dmod.DeviceError, match="corrupted 3 times"):
            t.push_file(src, "data/blob.bin")
        assert not (dev.root / "data" / "blob.bin").exists()
    t.close()


def test_upload_resumes_after_a_drop(daemon_dev, tmp_path, monkeypatch):
    """The connection dies mid-upload: the transport reconnects and sends only what the daemon lacks."""
    dev, d = daemon_dev
    paired(dev, d)
    from device_agent.protocol import CHUNK
    from thomas_cli.transport import daemon as dmod

    proxy = Corrupter(dmod.forward(dev.vdev.serial, d.port), drop_after=2)
    monkeypatch.setattr(dmod, "forward", lambda serial, port: proxy.port)
    t = dmod.DaemonTransport(dev.vdev.serial)
    blob = os.urandom(3 * CHUNK + 12345)
    (tmp_path / "big.bin").write_bytes(blob)
    assert t.push_file(tmp_path / "big.bin", "data/big.bin") == len(blob)
    assert (dev.root / "data" / "big.bin").read_bytes() == blob
    # resumed, not restarted: at most the chunk in flight at the drop went twice
    assert proxy.chunks >= 4 and len(blob) <= proxy.chunk_bytes <= len(blob) + CHUNK
    t.close()
