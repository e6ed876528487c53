"""Confinement (issue 14, item 1): every path an agent call names — the path fields of a training job
(found in the schema, so fields added later are covered), bench/tune job fields, infer/eval arguments
and the job file itself — stays inside the device root (the agent's cwd in every mode: local folder,
adb shell `cd`, daemon job cwd); otherwise `bad_job` naming the field, and nothing is written outside.
Checked in-process (the rule), through the agent as every transport runs it, and through
`thomas --device local finetune --set cache_dir=...`."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from device_agent.confine import (check_job_paths, confine_call, confined, path_fields, positionals,
                                  read_train_job)
from device_agent.errors import JobError
from device_agent.protocol import TrainJob
from guardkit import agent, job, last_error, small_root, write_job


@pytest.fixture
def root(tmp_path):
    return small_root(tmp_path)


def _escapes(root: Path, outside: Path) -> dict[str, str]:
    """name -> a path value that must be refused (the symlinks are made here)."""
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    return {"absolute": str(outside / "x"), "dotdot": "../outside/x", "inner-dotdot": "runs/../../outside/x",
            "dot": "./runs/x", "trailing-slash": "runs/x/", "symlink-out": "out-link/x", "symlink-loop": "loop/x",
            "daemon-dir": ".daemon/x", "agent-dir": "agent/device_agent", "empty": "", "backslash": "runs\\x"}


def test_path_fields_come_from_the_schema():
    """model, data, out, cache_dir are marked; any other str field is a closed choice (so a new free
    path field that forgot its PATH mark fails here)."""
    assert set(path_fields()) >= {"model", "data", "out", "cache_dir"}
    base = {"model": "m", "data": "d", "out": "o"}
    for f in dataclasses.fields(TrainJob):
        if "str" in str(f.type) and f.name not in path_fields():
            with pytest.raises(JobError, match=f"'{f.name}'"):
                TrainJob.from_dict(dict(base, **{f.name: "some/free/path"}))


@pytest.mark.parametrize("field", ["model", "data", "out", "cache_dir"])
def test_every_path_field_refuses_every_escape(root, tmp_path, field):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, value in _escapes(root, outside).items():
        p = root / "jobs" / f"{field}-{name}.json"
        p.write_text(json.dumps(job(**{field: value})))
        with pytest.raises(JobError) as e:
            read_train_job(str(p), root)
        assert f"job field '{field}'" in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    assert not any(outside.iterdir())


def test_paths_inside_the_root_pass_symlinks_included(root):
    (root / "data" / "alias").symlink_to(root / "data" / "digits", target_is_directory=True)
    assert confined(root, "data/alias", "job field 'data'") == root / "data" / "alias"
    assert confined(root, "runs/not/yet/made", "job field 'out'") == root / "runs" / "not" / "yet" / "made"
    p = root / "jobs" / "ok.json"
    p.write_text(json.dumps(job(data="data/alias", cache_dir="my-cache")))
    assert read_train_job(str(p), root).cache_dir == "my-cache"
    assert read_train_job(str(p)).data == "data/alias"        # no root: the developer entry, not confined


def test_host_check_and_positionals():
    check_job_paths({"cache_dir": "cache/x", "lr": 0.1})
    for bad in ("/tmp/x", "../x", ".daemon"):
        with pytest.raises(JobError, match="'cache_dir'"):
            check_job_paths({"cache_dir": bad})
    assert positionals(["m", "--batch", "4", "x.npy", "--backend=numpy", "y.npy"]) == ["m", "x.npy", "y.npy"]


def test_bench_tune_infer_eval_arguments(root, tmp_path):
    for cmd, doc, field in (("bench", {"model": "/etc"}, "bench field 'model'"),
                            ("bench", {"model": "models/m", "out": "../b"}, "bench field 'out'"),
                            ("tune", {"model": "../../m"}, "tune field 'model'")):
        rel = write_job(root, doc, f"{cmd}.json")
        with pytest.raises(JobError, match=field):
            confine_call(cmd, [rel], root)
    for args, what in ((["models/m", "/tmp/x.npy", "y.npy"], "infer X.npy"),
                       (["models/m", "x.npy", "../y.npy", "--batch", "2"], "infer OUT.npy"),
                       (["/m", "data/digits", "r.json"], "eval MODEL"),
                       (["models/m", "data/digits", "..", "--split", "val"], "eval OUT.json")):
        with pytest.raises(JobError, match=what):
            confine_call(args and ("infer" if "infer" in what else "eval"), args, root)
    with pytest.raises(JobError, match="run JOB.json"):
        confine_call("run", [str(tmp_path / "job.json")], root)
    confine_call("doctor", [], root)                        # not a path command


def test_agent_refuses_escapes_and_writes_nothing_outside(root, tmp_path):
    """As every transport runs it: `python -m device_agent run|infer|bench` with cwd = the device root."""
    outside = tmp_path / "outside"
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    cases = [(job(cache_dir=str(outside / "cache")), "cache_dir"), (job(cache_dir="../outside/cache"), "cache_dir"),
             (job(out="out-link/run"), "out"), (job(data="/" + str(root / "data" / "digits").lstrip("/")), "data")]
    for i, (doc, field) in enumerate(cases):
        rc, evs, _ = agent(root, "run", write_job(root, doc, f"j{i}.json"))
        err = last_error(evs)
        assert rc == 1 and err["code"] == "bad_job" and f"'{field}'" in err["message"], err
    rc, evs, _ = agent(root, "infer", "models/m", "../x.npy", "y.npy")
    assert rc == 1 and last_error(evs)["code"] == "bad_job" and "infer X.npy" in evs[-1]["message"]
    rc, evs, _ = agent(root, "bench", write_job(root, {"model": str(root / "models" / "m")}, "b.json"))
    assert rc == 1 and last_error(evs)["code"] == "bad_job" and "bench field 'model'" in evs[-1]["message"]
    assert not outside.exists() and not (root / "runs").exists()


def test_agent_run_with_a_confined_cache_dir_trains(root):
    rc, evs, err = agent(root, "run", write_job(root, job(cache_dir="caches/mine", layers="last")))
    assert rc == 0 and evs[-1]["ev"] == "done", err[-500:]
    assert any(ev["ev"] == "cache" for ev in evs) and (root / "caches" / "mine").is_dir()


def test_cli_finetune_set_cache_dir_outside_is_one_line(root, tmp_path, monkeypatch):
    """`thomas --device local finetune m --set cache_dir=...` (and the same field in a --job file)."""
    from devicekit import DeviceTarget, thomas

    for k in ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "ANDROID_SERIAL"):
        monkeypatch.delenv(k, raising=False)
    dev = DeviceTarget("local", root, ["--device", "local", "--device-root", str(root), "--python", sys.executable])
    outside = tmp_path / "x"
    jf = tmp_path / "job.json"
    jf.write_text(json.dumps({"cache_dir": "../../x"}))
    for extra in (["--set", f"cache_dir={outside}"], ["--set", "cache_dir=../../../../x"], ["--job", str(jf)]):
        r = thomas(dev, "finetune", "m", "--data", "digits", "--epochs", "1", *extra, expect=1)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in r.stderr and any("'cache_dir'" in ln for ln in lines), r.stderr
        assert lines[-1].startswith("error:") and ("device root" in lines[-1] or "'..'" in lines[-1]), lines
    assert not outside.exists() and not (root.parent / "x").exists() and not (root / "runs").exists()
    # a symlink inside the root passes the host's syntax check; the agent on the device refuses it
    (root / "escape").symlink_to(outside.parent, target_is_directory=True)
    r = thomas(dev, "finetune", "m", "--data", "digits", "--epochs", "1", "--set", "cache_dir=escape/c", expect=1)
    assert "Traceback" not in r.stderr and "'cache_dir' 'escape/c' leads outside the device root" in r.stderr, r.stderr
    assert not (outside.parent / "c").exists()


def test_daemon_jobs_are_confined_to_its_root(root, tmp_path):
    """The daemon runs `python -m device_agent ARGS` with cwd = its --root: the same rule holds there."""
    from daemonkit import Client, DaemonProc

    d = DaemonProc(root)
    try:
        host, token = Client(d.port).pair(d.code)
        c = Client(d.port)
        assert c.auth(host, token)["ok"]
        rel = write_job(root, job(cache_dir=str(tmp_path / "outside")), "daemon.json")
        c.ok("start", args=["run", rel])
        frames = list(c.stream())
        evs = [json.loads(f["line"]) for f in frames if f["op"] == "out" and f["line"].startswith("{")]
        err = last_error(evs)
        assert frames[-1]["rc"] == 1 and err["code"] == "bad_job" and "'cache_dir'" in err["message"], err
        assert not (tmp_path / "outside").exists()
    finally:
        d.kill()
