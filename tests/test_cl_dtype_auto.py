"""A job's dtype "auto" (the default): "mixed" where the OpenCL backend runs on a GPU (a phone profile
stands for one here), "float32" on a CPU device, on numpy and for a graph with ops that have no OpenCL
kernels; the run reports and checkpoints the dtype it ran, so a resume decides the same."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from clcheck import needs_cl
from device_agent.engine import resolve_dtype
from device_agent.ops import REGISTRY
from device_agent.protocol import TrainJob
from device_agent.training import checkpoint
from device_agent.training.train import run
from train_helpers import make_root, tiny_cnn

pytestmark = needs_cl


@pytest.fixture
def gpu_profiled(monkeypatch):
    """the process's shared runtime as a phone GPU (Adreno's limits and kind on the local device)"""
    from device_agent.backends.opencl import runtime

    monkeypatch.setattr(runtime, "_SHARED", {})
    monkeypatch.setenv("THOMAS_CL_PROFILE", "adreno-6xx")
    yield runtime.shared_runtime()
    for rt in runtime._SHARED.values():
        rt.close()


def test_auto_is_float32_on_a_cpu_device_and_on_numpy():
    """float32 on PoCL (a CPU device) and on numpy; the test device decides "mixed" where it is a GPU
    (the suite on the H100)"""
    from device_agent.backends.opencl.runtime import shared_runtime

    g = tiny_cnn(10)
    kind = shared_runtime().kind
    assert resolve_dtype("auto", "opencl", g) == ("mixed" if kind == "gpu" else "float32"), kind
    assert resolve_dtype("auto", "numpy", g) == "float32"
    for given in ("float32", "float64", "mixed"):
        assert resolve_dtype(given, "opencl", g) == given  # only "auto" is decided


def test_auto_is_mixed_on_a_gpu_unless_an_op_lacks_kernels(gpu_profiled, monkeypatch):
    assert gpu_profiled.kind == "gpu"
    g = tiny_cnn(10)
    assert resolve_dtype("auto", "opencl", g) == "mixed"
    assert resolve_dtype("auto", "numpy", g) == "float32"
    op = g.nodes[0].op                                     # registered without OpenCL kernels, as a new op would be
    monkeypatch.setitem(REGISTRY, op, dataclasses.replace(REGISTRY[op], cl=None))
    assert resolve_dtype("auto", "opencl", g) == "float32"


@pytest.mark.parametrize("profile", [None, "adreno-6xx"])
def test_a_run_reports_and_checkpoints_the_dtype_it_decided(tmp_path, monkeypatch, profile):
    from device_agent.backends.opencl import runtime

    monkeypatch.setattr(runtime, "_SHARED", {})
    if profile:
        monkeypatch.setenv("THOMAS_CL_PROFILE", profile)
    paths = make_root(tmp_path, size=8, model=tiny_cnn(10, 8), val_fraction=0.25)
    job = TrainJob.from_dict(dict(paths, out=str(tmp_path / "run"), layers="all", epochs=1, batch=16))
    assert job.dtype == "auto"
    evs = []
    done = run(job, lambda e: evs.append(json.loads(e.to_json())))
    want = "mixed" if profile or runtime.shared_runtime().kind == "gpu" else "float32"
    plan = next(e for e in evs if e["ev"] == "plan")
    assert plan["dtype"] == want and plan["backend"] == "opencl", plan
    ckpts = checkpoint.checkpoints(tmp_path / "run" / "ckpt")
    assert ckpts
    assert {checkpoint.load(p).meta["dtype"] for _, p in ckpts} == {want}
    assert np.isfinite(done.val_loss)
    for rt in runtime._SHARED.values():
        rt.close()


def test_a_resumed_auto_run_keeps_the_dtype_it_started_with(tmp_path, monkeypatch):
    """a run begun as float32 (the old default) on a GPU continues as float32 when resumed with dtype auto
    (which now means mixed there); an explicit dtype still has to match the run's"""
    from device_agent.backends.opencl import runtime
    from device_agent.errors import JobError

    monkeypatch.setattr(runtime, "_SHARED", {})
    monkeypatch.setenv("THOMAS_CL_PROFILE", "adreno-6xx")
    paths = make_root(tmp_path, size=8, model=tiny_cnn(10, 8), val_fraction=0.25)
    base = dict(paths, out=str(tmp_path / "run"), layers="all", batch=16, epochs=1)
    run(TrainJob.from_dict(dict(base, dtype="float32")), lambda e: None)
    evs = []
    run(TrainJob.from_dict(dict(base, resume=True)), lambda e: evs.append(json.loads(e.to_json())))
    assert next(e for e in evs if e["ev"] == "plan")["dtype"] == "float32"
    with pytest.raises(JobError, match="job field 'dtype' is 'mixed'"):
        run(TrainJob.from_dict(dict(base, resume=True, dtype="mixed")), lambda e: None)
    for rt in runtime._SHARED.values():
        rt.close()
