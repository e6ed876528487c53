"""`thomas tune`'s second phase: the convolution paths (im2col / implicit GEMM, Winograd on / off) timed
on full training steps of the model, the fastest saved under "conv2d" and read by every later Runtime;
models whose launches no path changes save nothing; the job's "conv" switch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clcheck import needs_cl

pytestmark = needs_cl


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    f = tmp_path / "devices.json"
    monkeypatch.setenv("THOMAS_TUNING_FILE", str(f))
    monkeypatch.delenv("THOMAS_CL_WINOGRAD", raising=False)
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    return f


def test_paths_timed_and_the_fastest_saved_and_read(tuning):
    """AlexNet at 64x64, batch 16 (64 output tiles in conv3-5: the size rule takes Winograd on a CPU):
    the CPU's paths with distinct launches are timed (the default and Winograd off; Winograd on repeats
    the default), the fastest saved with its measurement, and a new Runtime reads it"""
    from device_agent.backends.opencl.runtime import Runtime, device_key
    from device_agent.bench import tune
    from thomas_cli import zoo

    rt = Runtime()
    g = zoo.build("alexnet", num_classes=5, size=64, seed=0)
    evs = []
    best = tune.tune_conv(rt, g, {"model": "m", "batch": 16, "steps": 1}, evs.append)
    timed = [e for e in evs if e.op == "conv2d"]
    assert [e.index for e in timed] == [0, 1] and all(e.ms > 0 and e.error is None for e in timed)
    assert best is not None and best.op == "conv2d" and best.key == device_key(rt.device)
    fastest = min(timed, key=lambda e: e.ms)
    assert best.index == fastest.index and best.params == tune.CONV_VARIANTS["cpu"][best.index]
    entry = json.loads(tuning.read_text())[best.key]["conv2d"]
    assert entry["params"] == best.params and entry["default_ms"] == pytest.approx(timed[0].ms)
    want = best.params.get("winograd", True)              # {} = the CPU default, Winograd on
    assert Runtime().tuning.get("conv2d").get("winograd", True) == want


def test_a_model_no_path_changes_saves_nothing(tuning):
    """MobileNetV2 has no 3x3 stride-1 regular conv, and a CPU does not time implicit GEMM: one launch
    list for every variant, so nothing is timed, emitted or saved"""
    from device_agent.backends.opencl.runtime import Runtime
    from device_agent.bench import tune
    from thomas_cli import zoo

    g = zoo.build("mobilenet_v2", num_classes=5, size=32, width=0.25, seed=0)
    evs = []
    assert tune.tune_conv(Runtime(), g, {"model": "m", "batch": 2, "steps": 1}, evs.append) is None
    assert evs == [] and not tuning.exists()


def test_the_job_switch(tmp_path):
    from device_agent.bench.tune import load_job
    from device_agent.errors import InputError

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "m"}))
    assert load_job(str(job))["conv"] is True
    job.write_text(json.dumps({"model": "m", "conv": False}))
    assert load_job(str(job))["conv"] is False
    job.write_text(json.dumps({"model": "m", "conv": "yes"}))
    with pytest.raises(InputError, match="'conv' must be true or false"):
        load_job(str(job))


def test_a_path_that_computes_otherwise_is_skipped(tuning, monkeypatch):
    """a variant whose warm-up loss disagrees with the first path's is reported and never wins"""
    from device_agent.backends.opencl.runtime import Runtime
    from device_agent.bench import tune
    from thomas_cli import zoo

    real, calls = tune._time_steps, []

    def timed(rt, plan, g, batch, steps):   # the first path (the default) as it is, the others off by 1
        ms, loss = real(rt, plan, g, batch, steps)
        calls.append(ms)
        return (ms, loss) if len(calls) == 1 else (0.001, loss + 1.0)

    monkeypatch.setattr(tune, "_time_steps", timed)
    g = zoo.build("alexnet", num_classes=5, size=64, seed=0)
    evs = []
    best = tune.tune_conv(Runtime(), g, {"model": "m", "batch": 16, "steps": 1}, evs.append)
    assert best is not None and best.index == 0 and np.isfinite(best.ms)
    assert any(e.error and e.error.startswith("wrong results") for e in evs)


@pytest.fixture
def local(request, tmp_path, monkeypatch):
    from test_device_cli import make_target

    monkeypatch.delenv("THOMAS_CL_WINOGRAD", raising=False)
    return make_target("local", request, tmp_path, monkeypatch, "shared_vdev")


def test_cli_shows_and_saves_both_phases(local):
    """`thomas tune` on a model with Winograd nodes: the GEMM table, then the convolution paths' table and
    the saved path; --no-conv times only the GEMMs"""
    from devicekit import thomas

    args = ["alexnet", "--size", "64", "--classes", "5", "--batch", "16", "--steps", "1"]
    r = thomas(local, "tune", *args)
    assert "GEMM variants on" in r.stdout and "convolution paths (full training steps)" in r.stdout
    assert "winograd=False" in r.stdout and "saved path" in r.stdout
    doc = json.loads((local.root / "tuning" / "devices.json").read_text())
    (entry,) = doc.values()
    assert set(entry) == {"gemm", "conv2d"}
    (local.root / "tuning" / "devices.json").unlink()
    r = thomas(local, "tune", *args, "--no-conv", "--json")
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    assert evs[-1]["ev"] == "tune" and evs[-1]["op"] == "gemm" and all(e.get("op") != "conv2d" for e in evs)
    assert set(next(iter(json.loads((local.root / "tuning" / "devices.json").read_text()).values()))) == {"gemm"}
