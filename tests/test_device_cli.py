"""The host CLI against a device, end to end: every test runs twice, through the virtual adb device
(fake adbd + a real `adb` server + real adbutils) and through the embedded local device.

Happy path: devices, doctor, push-model, push-data, finetune streaming to `done`, runs list/show/
pull/rm, the agent re-pushed only when its hash changes. Failure paths: the device killed mid-run,
a hung device and the watchdog, a protocol mismatch (exit 3), a device root full of shell
metacharacters, a pull path with '..', bad job fields.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devicekit import (RUN_ARGS, ZOO_ARGS, DeviceTarget, image_folder, only_run, start_long_run, thomas,
                       thomas_json, wait_for_event)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HAVE_ADB = shutil.which("adb") is not None
SCRUB = ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "THOMAS_SU",
         "ANDROID_SERIAL", "ANDROID_ADB_SERVER_PORT", "ANDROID_ADB_SERVER_HOST", "ADBUTILS_ADB_PATH")


def _adb_default_server_up() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", 5037)) == 0


@pytest.fixture(scope="module", autouse=True)
def _no_stray_adb_server():
    """These tests use private adb servers only: none may start the user's default one (port 5037)."""
    before = _adb_default_server_up()
    yield
    assert before or not _adb_default_server_up(), "a test started an adb server on the default port 5037"


def make_target(kind: str, request, tmp_path: Path, monkeypatch, vdev_fixture: str, root_name: str = "thomas",
                python: str = sys.executable) -> DeviceTarget:
    for k in SCRUB:
        monkeypatch.delenv(k, raising=False)
    if kind == "local":
        root = tmp_path / "local-device" / root_name
        return DeviceTarget("local", root, ["--device", "local", "--device-root", str(root), "--python", python])
    vd = request.getfixturevalue(vdev_fixture)
    for k, v in vd.env.items():
        monkeypatch.setenv(k, v)
    root = Path(vd.root) / tmp_path.name / root_name
    return DeviceTarget("adb", root, ["-s", vd.serial, "--device-root", str(root), "--python", python],
                        env=dict(vd.env), vdev=vd)


@pytest.fixture(params=["adb", "local"])
def dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "shared_vdev")


@pytest.fixture(params=["adb", "local"])
def own_dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "own_vdev")


@pytest.fixture
def home():
    return Path(os.environ["THOMAS_HOME"])


def push_basics(dev: DeviceTarget, tmp_path: Path, per_class: int = 10):
    thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2")
    folder = image_folder(tmp_path / "digits", n_per_class=per_class)
    thomas(dev, "push-data", str(folder), "--size", "32", "--val", "0.2")


# ============================================================================ happy path
def test_devices_lists_the_phone_and_local(dev):
    rows = thomas_json(dev, "devices")
    assert rows[-1]["serial"] == "local" and rows[-1]["transport"] == "local"
    if dev.name == "adb":
        phone = [r for r in rows if r["serial"] == dev.vdev.serial]
        assert phone and phone[0]["state"] == "device" and phone[0]["model"] == "Virtual Phone"
        assert "Virtual Phone" in thomas(dev, "devices").stdout


def test_doctor_and_agent_repushed_only_on_change(dev):
    res = thomas_json(dev, "doctor")
    assert res["ok"], res
    checks = {c["check"]: c for c in res["checks"]}
    for name in ("python", "numpy", "agent", "device root"):
        assert checks[name]["state"] == "ok", checks[name]
    assert res["agent"]["pushed"] is True
    assert res["report"]["numpy"] == np.__version__ and res["report"]["root"] == str(dev.root)
    assert (dev.root / "agent" / "PAYLOAD").is_file() and (dev.root / "agent" / "kernels").is_dir()
    # same payload: not pushed again
    assert thomas_json(dev, "doctor")["agent"]["pushed"] is False
    # another version on the device (its hash differs): pushed again
    (dev.root / "agent" / "PAYLOAD").write_text(json.dumps({"hash": "0" * 64, "agent": "0.0.1", "protocol": 1}))
    r = thomas(dev, "doctor")
    assert "pushing the agent" in r.stderr and "pushed now" in r.stdout
    assert json.loads((dev.root / "agent" / "PAYLOAD").read_text())["hash"] == res["agent"]["hash"]


def test_push_model_and_data_then_list(dev, tmp_path, home):
    r = thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2", "--json")
    first = json.loads(r.stdout)
    assert first["skipped"] is False and first["classes"] == 3 and first["input"] == [3, 32, 32]
    assert (dev.root / "models" / "mnv2" / "weights.npz").is_file()
    again = thomas_json(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2")
    assert again["skipped"] is True and again["hash"] == first["hash"]
    # a package directory works as well
    thomas(DeviceTarget("none", dev.root, []), "zoo", "build", "mobilenet_v2", "-o", str(tmp_path / "pkg"), *ZOO_ARGS)
    thomas(dev, "push-model", str(tmp_path / "pkg"), "--name", "from-dir")
    rows = {m["name"]: m for m in thomas_json(dev, "models", "list")}
    assert set(rows) == {"mnv2", "from-dir"}
    assert rows["mnv2"]["hash"] == first["hash"] and rows["mnv2"]["bytes"] > 100_000

    folder = image_folder(tmp_path / "digits", n_per_class=10)
    r = thomas(dev, "push-data", str(folder), "--size", "32", "--val", "0.2")
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr          # listed, not fatal
    assert "30 images (24 train / 6 val, 1 unreadable skipped)" in " ".join(r.stdout.split())
    ds = dev.root / "data" / "digits"
    assert json.loads((ds / "classes.json").read_text()) == ["one", "two", "zero"]
    meta = thomas_json(dev, "push-data", str(folder), "--size", "32", "--val", "0.2")
    assert meta["skipped"] is True and meta["bad"] == ["zero/broken.jpg"]
    reg = json.loads((home / "registry.json").read_text())
    (entry,) = reg.values()
    assert set(entry["models"]) == {"mnv2", "from-dir"} and set(entry["data"]) == {"digits"}


def test_push_data_npz(dev, tmp_path):
    from devicekit import digits

    x, y = digits(8, 3)
    np.savez(tmp_path / "scans.npz", images=x, labels=y, classes=np.array(["a", "b", "c"]))
    res = thomas_json(dev, "push-data", str(tmp_path / "scans.npz"), "--size", "32")
    assert res["count"] == 24 and res["classes"] == ["a", "b", "c"]
    from device_agent.training.data import open_dataset

    ds = open_dataset(dev.root / "data" / "scans")
    assert (ds.height, ds.width) == (32, 32) and len(ds.train) + len(ds.val) == 24


def test_finetune_streams_to_done_and_runs_commands(dev, tmp_path, home):
    push_basics(dev, tmp_path)
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--layers", "last", "--epochs", "2", *RUN_ARGS, "--json")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["ev"] for e in events]
    assert kinds[0] == "hello" and kinds[1] == "plan" and kinds[-1] == "done", kinds
    assert kinds.count("epoch") == 2 and "step" in kinds
    run = only_run(home)
    mirrored = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert mirrored == events                               # the mirror holds every event, in order
    assert (run / "final" / "model.json").is_file() and (run / "metrics.jsonl").is_file()
    from device_agent.model.graph import load_package

    assert load_package(run / "final").labels == ["one", "two", "zero"]
    assert not (run / "ckpt").exists()                      # checkpoints stay on the device ...
    rows = thomas_json(dev, "runs", "list")
    assert [(x["id"], x["status"], x["stage"]) for x in rows] == [(run.name, "done", "last")]
    shown = thomas_json(dev, "runs", "show", run.name)
    assert len(shown["epochs"]) == 2 and shown["job"]["backend"] == "numpy"
    assert "epoch" in thomas(dev, "runs", "show", run.name).stdout
    for verb in ("cancel", "attach"):                       # daemon-only verbs: one line, exit 1
        assert "not started through a THOMAS daemon" in thomas(dev, "runs", verb, run.name, expect=1).stderr
    pulled = thomas_json(dev, "runs", "pull", run.name)     # ... until `runs pull`
    assert any(f.startswith("ckpt/") for f in pulled["files"]) and (run / "ckpt").is_dir()
    assert [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()] == events
    # a human run of the same command: progress lines, the final table
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--epochs", "1", *RUN_ARGS)
    assert "train loss" in r.stdout and "val acc" in r.stdout and "epoch 1:" in r.stderr
    thomas(dev, "runs", "rm", run.name)
    assert not run.exists() and not (dev.root / "runs" / run.name).exists()
    assert len(thomas_json(dev, "runs", "list")) == 1


def test_finetune_pushes_what_is_missing(dev, tmp_path, home):
    """A zoo name and a local folder: the model is built at the data's size and classes."""
    folder = image_folder(tmp_path / "flowers", n_per_class=6, bad=False)
    r = thomas(dev, "finetune", "mobilenet_v2", "--data", str(folder), "--size", "32", "--width", "0.35",
               "--epochs", "1", *RUN_ARGS)
    assert "pushed dataset 'flowers'" in r.stderr and "zoo:mobilenet_v2 classes=3 size=32" in r.stderr
    rec = json.loads((only_run(home) / "run.json").read_text())
    assert rec["status"] == "done" and rec["job"]["model"] == "models/mobilenet_v2"


# ============================================================================ failure paths
def _start_long_run(dev, tmp_path, home, epochs: int = 3):
    push_basics(dev, tmp_path, per_class=16)
    return start_long_run(dev, home, epochs, "--timeout", "3")


def test_device_killed_mid_run_keeps_events_and_resumes(own_dev, tmp_path, home):
    dev = own_dev
    p, run = _start_long_run(dev, tmp_path, home)
    hello = wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "hello", proc=p)
    wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "checkpoint", proc=p)
    if dev.name == "adb":
        dev.vdev.kill()                                   # the phone vanishes
    else:
        os.kill(hello["pid"], signal.SIGKILL)             # the local agent dies
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 1, stderr
    assert "lost" in stderr and "events so far are kept" in stderr and "Traceback" not in stderr
    kept = [json.loads(x)["ev"] for x in (run / "events.jsonl").read_text().splitlines()]
    assert kept[:2] == ["hello", "plan"] and "step" in kept and "done" not in kept
    assert json.loads((run / "run.json").read_text())["status"] == "lost"
    if dev.name == "local":                               # the run continues from its checkpoint
        r = thomas(dev, "finetune", "--resume", run.name, "--json")
        ev = [json.loads(x) for x in r.stdout.splitlines()]
        assert ev[1]["ev"] == "plan" and ev[1]["start_step"] > 0 and ev[-1]["ev"] == "done"
        assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_hung_device_stopped_by_the_watchdog(own_dev, tmp_path, home):
    dev = own_dev
    p, run = _start_long_run(dev, tmp_path, home, epochs=50)
    hello = wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "hello", proc=p)
    wait_for_event(run / "events.jsonl", lambda e: e["ev"] == "step", proc=p)
    t0 = time.monotonic()
    if dev.name == "adb":
        dev.vdev.freeze()                                 # connection up, nothing moves
    else:
        os.kill(hello["pid"], signal.SIGSTOP)
    try:
        _, stderr = p.communicate(timeout=30)
    finally:
        if dev.name == "local":
            try:
                os.kill(hello["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    took = time.monotonic() - t0
    assert p.returncode == 1 and "no event" in stderr and "3 s" in stderr, stderr
    assert took < 3 + 8, took                              # the watchdog, plus a bounded cancel
    assert "events so far are kept" in stderr
    assert json.loads((run / "run.json").read_text())["status"] == "timeout"


def test_protocol_mismatch_exits_3(dev, tmp_path):
    """An agent that answers another protocol even after a fresh push: exit 3 and a clear message."""
    fake = tmp_path / "oldpython"
    fake.write_text("#!/bin/sh\ncase \"$*\" in *device_agent*) echo '{\"ev\": \"hello\", \"protocol\": 99, "
                    "\"agent\": \"9.9\", \"payload\": null, \"python\": \"3\", \"pid\": 1}'; exit 0;; esac\n"
                    f"exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    args = [a if a != sys.executable else str(fake) for a in dev.args]
    r = thomas(DeviceTarget(dev.name, dev.root, args, dev.env, dev.vdev), "doctor", expect=3)
    assert "protocol 99" in r.stderr and "speaks protocol 1" in r.stderr and "Traceback" not in r.stderr


def test_shell_metacharacters_in_remote_paths(request, tmp_path, monkeypatch, home):
    """A device root with spaces, both quotes, ';', '$(..)' and backticks: used verbatim, nothing runs."""
    weird = "we ird 'q' \"dq\"; touch INJECTED; $(touch INJECTED2) `touch INJECTED3`"
    for kind in (["adb"] if HAVE_ADB else []) + ["local"]:
        dev = make_target(kind, request, tmp_path / kind, monkeypatch, "shared_vdev", root_name=weird)
        push_basics(dev, tmp_path / kind, per_class=6)
        thomas(dev, "finetune", "mnv2", "--data", "digits", "--epochs", "1", *RUN_ARGS)
        assert (dev.root / "models" / "mnv2" / "model.json").is_file() and (dev.root / "agent").is_dir()
        run = max((home / "runs").iterdir())
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        thomas(dev, "runs", "rm", run.name)
        assert not (dev.root / "runs" / run.name).exists()
        base = dev.root.parent
        for where in (base, dev.root, Path.cwd(), Path(dev.vdev.root) if dev.vdev else base):
            assert not list(where.glob("INJECTED*")), where


def test_pull_path_escaping_the_run_folder_is_refused(dev, tmp_path, home):
    push_basics(dev, tmp_path, per_class=6)
    thomas(dev, "finetune", "mnv2", "--data", "digits", "--epochs", "1", *RUN_ARGS)
    run = only_run(home)
    for bad in ("../../etc", "final/../../x", "/etc/passwd"):
        r = thomas(dev, "runs", "pull", run.name, bad, expect=1)
        assert "run path" in r.stderr and "Traceback" not in r.stderr
    r = thomas(dev, "runs", "pull", run.name, "metrics.jsonl")
    assert "pulled 1 files" in r.stdout
    mirror = (run / "events.jsonl").read_text()
    thomas(dev, "runs", "pull", run.name, "events.jsonl")   # the device's copy never replaces the mirror
    assert (run / "events.jsonl").read_text() == mirror and (run / "events.device.jsonl").is_file()


def test_bad_job_fields_are_named(dev, tmp_path, home):
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--set", "lr_decay=0.1", expect=1)
    assert "unknown job field 'lr_decay'" in r.stderr
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"epochs": "three"}))
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--job", str(job), expect=1)
    assert "job field 'epochs'" in r.stderr and "three" in r.stderr
    job.write_text(json.dumps({"out": "/elsewhere"}))
    assert "job field 'out'" in thomas(dev, "finetune", "mnv2", "--data", "digits", "--job", str(job), expect=1).stderr
    assert not (home / "runs").exists()                    # refused before anything ran


def test_bad_job_on_the_device_end_is_named(dev, tmp_path):
    """The agent validates too: a job file with a wrong type, run directly, ends with an error event."""
    from thomas_cli.device import Session, Target, open_transport

    push_basics(dev, tmp_path, per_class=6)
    tgt = Target(serial=dev.vdev.serial if dev.vdev else None, device="adb" if dev.vdev else "local",
                 root=str(dev.root), python=sys.executable)
    s = Session(open_transport(tgt))
    for doc, needle in (({"model": "models/mnv2", "data": "data/digits", "out": "runs/x", "batch": "8"}, "'batch'"),
                        ({"model": "models/mnv2", "data": "data/digits", "out": "runs/y", "bogus": 1}, "'bogus'")):
        s.t.write_bytes("jobs/bad.json", json.dumps(doc).encode())
        res = s.call(["run", "jobs/bad.json"], timeout=60)
        last = res.events[-1]
        assert last.ev == "error" and last.code == "bad_job" and needle in last.message, last
        assert res.returncode == 1


def test_python_missing_on_device_is_explained(dev):
    args = [a if a != sys.executable else "/nonexistent/python3" for a in dev.args]
    broken = DeviceTarget(dev.name, dev.root, args, dev.env, dev.vdev)
    res = json.loads(thomas(broken, "doctor", "--json", expect=1).stdout)
    py = {c["check"]: c for c in res["checks"]}["python"]
    assert res["ok"] is False and py["state"] == "fail" and "not runnable" in py["value"] and py["fix"]
    r = thomas(broken, "finetune", "mnv2", "--data", "digits", expect=1)
    assert "error:" in r.stderr and "--python" in r.stderr and "Traceback" not in r.stderr


def test_python_api_runs_a_stage_on_the_local_device(tmp_path, monkeypatch):
    """What `make demo` builds on: push a zoo model and arrays, run one stage, get the epoch table."""
    from devicekit import digits
    from thomas_cli import zoo
    from thomas_cli.deploy import push_arrays, push_model
    from thomas_cli.device import Session
    from thomas_cli.runs import new_run, run_job
    from thomas_cli.views import RunView
    from thomas_cli.transport.local import LocalTransport

    s = Session(LocalTransport(tmp_path / "device"))
    g = zoo.build("mobilenet_v2", num_classes=10, size=32, width=0.35, seed=0)
    mm = push_model(s, g, "mnv2", "zoo:mobilenet_v2")
    x, y = digits(6, 3)
    x = np.repeat(np.stack([np.kron(a, np.ones((4, 4), np.uint8)) for a in x])[..., None], 3, axis=3)
    dm = push_arrays(s, x, y, ["a", "b", "c"], "scans", val=0.25)
    rec = new_run(s, mm, dm, {"layers": "last", "epochs": 1, "batch": 8, "backend": "numpy"})
    assert rec["job"]["num_classes"] == 3 and rec["stage"] == "last"   # a fresh 3-class head
    view = RunView(as_json=False)
    with view:
        done = run_job(s, rec, on_event=view)
    assert done.ev == "done" and len(view.epochs) == 1 and view.table(rec, done).row_count == 1
