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
    from device_agent.bench.tune import VARIANTS

    r = thomas(dev, "tune", *TINY, "--json")
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    variants = [e for e in evs if e["ev"] == "tune_variant"]
    last = evs[-1]
    rt = Runtime()
    assert last["ev"] == "tune" and last["op"] == "gemm"
    assert len(variants) == len(VARIANTS[rt.tuning.get("gemm").get("variant") or rt.kind])
    assert all(v["gemms"] > 0 for v in variants if v["error"] is None)
    doc = json.loads((dev.root / "tuning" / "devices.json").read_text())
    assert list(doc) == [last["key"]] and doc[last["key"]]["gemm"]["params"] == dict(last["params"],
                                                                                   shapes=last["shapes"])
    assert last["tuned_ms"] <= last["ms"] + 1e-3 and all(" " in k for k in last["shapes"])
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
    from device_agent.backends.opencl.plan import OptimConfig, Plan
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

    from device_agent.bench import tune
    from device_agent.errors import BackendError

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "m"}))
    for mod in [m for m in sys.modules if m.startswith("device_agent.backends.opencl")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    monkeypatch.setattr("device_agent.model.graph.load_package", lambda p: None)
    with pytest.raises(BackendError, match="pyopencl is not installed"):
        tune.main([str(job)], print)


def test_per_shape_tiles_are_picked_past_noise_and_used_by_the_plan(tmp_path, monkeypatch):
    """pick_shapes keeps another variant's tiles for a shape only when clearly faster there; a Plan built
    with a per-shape entry runs those tiles for that shape alone and still computes the same step."""
    import numpy as np

    from device_agent.backends.opencl.gemm import gemm_config, shape_key
    from device_agent.backends.opencl.runtime import LaunchBuilder, Runtime, device_key
    from device_agent.bench.bench import _inputs
    from device_agent.model.builder import GraphBuilder
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from device_agent.bench.tune import pick_shapes

    a, b = {"TM": 4}, {"TM": 8}
    results = [(10.0, 0, a, {"s1": 5.0, "s2": 5.0, "s3": 0.010}),
               (11.0, 1, b, {"s1": 4.0, "s2": 4.8, "s3": 0.001})]
    assert pick_shapes(results, 0) == {"s1": b}           # s2: within 10 %; s3: within 0.02 ms
    assert shape_key("nt", 8, 10, 64) == "nt 8x10x64" and shape_key("nn", 4, 5, 6, 32, True) == "nn 4x5x6 r32"

    f = tmp_path / "devices.json"
    monkeypatch.setenv("THOMAS_TUNING_FILE", str(f))
    rt0 = Runtime()
    fam = rt0.tuning.get("gemm").get("variant") or rt0.kind
    other = {"TM": 4, "TN": 16, "VW": 8} if fam == "cpu" else {"MWG": 32, "NWG": 32, "KWG": 16, "MDIMC": 8, "NDIMC": 8}
    gb = GraphBuilder("fc", (None, 1, 4, 4))
    g = gb.finish([gb.linear(gb.flatten(gb.input), 10, name="fc")])
    x, y = _inputs(g, 8)
    ref = Plan(g, batch=8, trainable=None, optimizer=OptimConfig("sgd"), runtime=rt0)
    want = ref.train_step(x, y, lr=0.1)
    fwd = [ln for ln in ref.fw_launches if ln.tag]
    assert fwd and all(ln.tag.split()[0] in ("nn", "nt", "tn", "tt") for ln in fwd)
    key = fwd[0].tag
    f.write_text(json.dumps({device_key(rt0.device): {"gemm": {"params": {"shapes": {key: other}}}}}))
    rt = Runtime()
    lb = LaunchBuilder(rt)
    assert gemm_config(lb, shape=key)[1].items() >= other.items()
    assert gemm_config(lb, shape="nn 1x1x1")[1] == gemm_config(LaunchBuilder(rt0))[1]
    tuned = Plan(g, batch=8, trainable=None, optimizer=OptimConfig("sgd"), runtime=rt)
    got = tuned.train_step(x, y, lr=0.1)
    assert np.isclose(got[0], want[0], rtol=1e-5) and got[1] == want[1]

    def builds(plan):      # the compiled program behind each GEMM launch, by shape
        import pyopencl as cl

        return {ln.tag: ln.kernel.get_info(cl.kernel_info.PROGRAM).int_ptr for ln in plan.fw_launches + plan.bw_launches
                if ln.tag}

    before, after = builds(ref), builds(tuned)
    same = [k for k in before if k != key and before[k] == before[key]]  # shared key's program before
    assert same and len(set(before.values())) == 1
    assert all(after[k] != after[key] for k in same)                     # that shape alone: other tiles
    assert len({after[k] for k in same}) == 1                            # the rest: still one program


def test_a_variant_that_computes_another_loss_never_wins(tmp_path, monkeypatch, capsys):
    """tune compares each variant's warm-up loss with the shipped tiles' and skips a wrong one, even
    when it is the fastest."""
    import device_agent.bench.tune as tune
    from device_agent.model.graph import save_package
    from thomas_cli.zoo import build

    monkeypatch.setenv("THOMAS_TUNING_FILE", str(tmp_path / "devices.json"))
    pkg = save_package(build("mobilenet_v2", num_classes=4, size=32, width=0.25), tmp_path / "m")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": str(pkg), "batch": 2, "steps": 1}))
    real = tune._time_gemms
    calls = []

    def fake(rt, g, batch, steps, params, shapes=None):
        ms, n, per, loss = real(rt, g, batch, steps, params, shapes)
        calls.append(params)
        if len(calls) == 2:                       # the second variant: fastest by far, and wrong
            return ms / 100, n, {k: v / 100 for k, v in per.items()}, loss + 1.0
        return ms, n, per, loss

    monkeypatch.setattr(tune, "_time_gemms", fake)
    events = []
    assert tune.main([str(job)], events.append) == 0
    variants = [e for e in events if e.ev == "tune_variant"]
    assert variants[1].ms is None and "wrong results" in variants[1].error
    assert events[-1].ev == "tune" and events[-1].index != 1
