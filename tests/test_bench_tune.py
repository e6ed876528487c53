"""`thomas tune`: variants timed once on the device, the winner saved under "<device>|<driver>" and
read by every later Runtime; a corrupt tuning file is a warning and the defaults."""
from __future__ import annotations

import json

import pytest

from devicekit import thomas
from test_device_cli import make_target

cl = pytest.importorskip("pyopencl")
try:
    HAVE_CL = bool(cl.get_platforms())
except cl.Error:
    HAVE_CL = False
pytestmark = pytest.mark.skipif(not HAVE_CL, reason="no OpenCL platform")

TINY = ["mobilenet_v2", "--width", "0.35", "--size", "32", "--classes", "10", "--batch", "2", "--steps", "1"]


@pytest.fixture(params=["local", "adb"])
def dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "shared_vdev")


def test_tune_saves_the_winner_for_this_device_and_driver(dev):
    from device_agent.backends.opencl.runtime import Runtime
    from device_agent.tune import VARIANTS

    r = thomas(dev, "tune", *TINY, "--json")
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    variants = [e for e in evs if e["ev"] == "tune_variant"]
    last = evs[-1]
    rt = Runtime()
    assert last["ev"] == "tune" and last["op"] == "gemm"
    assert len(variants) == len(VARIANTS[rt.tuning.get("gemm").get("variant") or rt.kind])
    assert all(v["gemms"] > 0 for v in variants if v["error"] is None)
    doc = json.loads((dev.root / "tuning" / "devices.json").read_text())
    assert list(doc) == [last["key"]] and doc[last["key"]]["gemm"]["params"] == last["params"]
    assert last["key"] == f"{rt.device.name.strip()}|{rt.device.driver_version.strip()}"


def test_tuned_params_are_read_and_corrupt_files_fall_back(tmp_path, monkeypatch, capfd):
    from device_agent.backends.opencl.runtime import Runtime, device_key

    f = tmp_path / "devices.json"
    monkeypatch.setenv("THOMAS_TUNING_FILE", str(f))
    defaults = Runtime().tuning.get("gemm")                        # no file: the shipped data
    key = device_key(Runtime().device)
    f.write_text(json.dumps({key: {"gemm": {"params": {"TM": 4, "MWG": 32}}},
                             "Other GPU|1.0": {"gemm": {"params": {"TM": 99}}}}))
    tuned = Runtime().tuning.get("gemm")
    assert tuned["TM"] == 4 and tuned["MWG"] == 32 and tuned == dict(defaults, TM=4, MWG=32)
    capfd.readouterr()
    for bad in ("{not json", json.dumps([1, 2]), json.dumps({key: {"gemm": {"params": 3}}})):
        f.write_text(bad)
        assert Runtime().tuning.get("gemm") == defaults
        err = capfd.readouterr().err
        assert "warning: ignoring the tuning file" in err and str(f) in err


def test_a_plan_trains_on_tuned_and_on_corrupt_tuning(tmp_path, monkeypatch):
    import numpy as np

    from device_agent.backends.opencl.runtime import Runtime, device_key
    from device_agent.plan import OptimConfig, Plan
    from train_helpers import tiny_cnn

    f = tmp_path / "devices.json"
    monkeypatch.setenv("THOMAS_TUNING_FILE", str(f))
    g = tiny_cnn(10, 8)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.arange(4, dtype=np.int32)
    losses = []
    for content in (json.dumps({device_key(Runtime().device): {"gemm": {"params": {"TM": 4, "TN": 8, "VW": 4,
                                                                                   "MWG": 32, "NWG": 32}}}}),
                    "garbage"):
        f.write_text(content)
        plan = Plan(g, batch=4, optimizer=OptimConfig("sgd"), runtime=Runtime())
        losses.append(plan.train_step(x, y, lr=0.0)[0])
    assert np.isfinite(losses).all() and abs(losses[0] - losses[1]) < 1e-4


def test_tune_without_pyopencl_is_a_clean_error(tmp_path, monkeypatch):
    import sys

    from device_agent import tune
    from device_agent.errors import BackendError

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "m"}))
    for mod in [m for m in sys.modules if m.startswith("device_agent.backends.opencl")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    monkeypatch.setattr("device_agent.graph.load_package", lambda p: None)
    with pytest.raises(BackendError, match="pyopencl is not installed"):
        tune.main([str(job)], print)
