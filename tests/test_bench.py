"""`thomas bench` end to end on tiny shapes (mobilenet_v2 width 0.35 at 32x32, batch 2, one step):
structure only (every layer appears in both columns, files written), never timings."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from devicekit import thomas, thomas_json


def home() -> Path:
    return Path(__import__("os").environ["THOMAS_HOME"])
from test_device_cli import make_target

from device_agent.model.graph import load_package

TINY = ["mobilenet_v2", "--width", "0.35", "--size", "32", "--classes", "10", "--batch", "2", "--steps", "1"]


@pytest.fixture(params=["local", "adb"])
def dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "shared_vdev")


def _pyopencl_ok() -> bool:
    try:
        import pyopencl as cl
        return bool(cl.get_platforms())
    except Exception:  # noqa: BLE001  (no ICD: the OpenCL column carries the error instead)
        return False


def test_bench_compare_cpu_every_layer_in_both_columns(dev, tmp_path):
    home = Path(__import__("os").environ["THOMAS_HOME"])
    doc = thomas_json(dev, "bench", *TINY, "--stage", "all")
    summary = doc["summary"]
    assert summary["ev"] == "bench" and summary["stage"] == "all" and summary["batch"] == 2
    res = summary["results"]
    assert set(res) == {"opencl", "numpy"}
    assert res["numpy"]["threads"] == "1" and res["numpy"]["ms_step"] > 0
    assert res["numpy"]["memory"]["peak"] > res["numpy"]["memory"]["params"]
    g = load_package(dev.root / "models" / "bench-mobilenet_v2-32-w0.35")
    nodes = {n.name for n in g.nodes}
    np_layers = {e["layer"] for e in doc["layers"] if e["backend"] == "numpy"}
    assert nodes <= np_layers and "optimizer" in np_layers
    trained = [e for e in doc["layers"] if e["backend"] == "numpy" and e["op"] == "Conv2d"]
    assert trained and all(e["bw_ms"] > 0 for e in trained)
    if _pyopencl_ok():
        assert "ms_step" in res["opencl"] and res["opencl"]["memory"]["peak"] > 0
        cl_layers = {e["layer"] for e in doc["layers"] if e["backend"] == "opencl"}
        # BN is folded or fused on some paths, Flatten is a view: every Conv2d and Gemm has its own row
        assert {n.name for n in g.nodes if n.op in ("Conv2d", "Gemm")} <= cl_layers
        assert "optimizer" in cl_layers
        assert summary["speedup"] > 0
    else:
        assert "error" in res["opencl"]
    run = home / "runs" / doc["id"]
    rec = json.loads((run / "run.json").read_text())
    assert rec["kind"] == "bench" and rec["status"] == "done"
    assert json.loads((run / "bench.json").read_text())["summary"]["ev"] == "bench"
    evs = [json.loads(l)["ev"] for l in (run / "events.jsonl").read_text().splitlines()]
    assert evs[0] == "hello" and evs[-1] == "bench" and "layer_time" in evs
    listed = thomas_json(dev, "runs", "list")
    assert any(r["id"] == doc["id"] for r in listed)
    shown = thomas(dev, "runs", "show", doc["id"]).stdout
    assert "totals" in shown and "steps=1" in shown


def test_bench_table_and_desktop_compare(tmp_path, monkeypatch, request):
    dev = make_target("local", request, tmp_path, monkeypatch, "shared_vdev")
    r = thomas(dev, "bench", *TINY, "--stage", "infer")
    assert "mobilenet_v2 infer, batch 2" in r.stdout and "totals" in r.stdout
    assert "OpenCL is" in r.stdout or "pyopencl" in r.stdout
    doc = thomas_json(dev, "bench", *TINY, "--stage", "last", "--compare", "desktop")
    assert set(doc) == {"desktop", "device"}
    for side in doc.values():
        assert side["summary"]["stage"] == "last"
        assert {"opencl", "numpy"} == set(side["summary"]["results"])
    # a model only the device has is copied to the desktop side first
    thomas(dev, "push-model", "mobilenet_v2", "--classes", "3", "--size", "32", "--width", "0.35", "--name", "mine")
    r = thomas(dev, "bench", "mine", "--batch", "2", "--steps", "1", "--stage", "infer", "--compare", "desktop")
    assert "mine infer, batch 2" in r.stdout and "totals" in r.stdout
    assert sum(json.loads(p.read_text()).get("kind") == "bench" for p in home().glob("runs/*/run.json")) == 5


def test_bench_without_pyopencl_still_runs_the_baseline(tmp_path, monkeypatch, capsys):
    from device_agent.bench import bench
    from device_agent.protocol import parse_event
    from thomas_cli import zoo
    from device_agent.model.graph import save_package

    pkg = tmp_path / "m"
    save_package(zoo.build("mobilenet_v2", num_classes=4, size=32, width=0.35), pkg)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": str(pkg), "stage": "last", "batch": 2, "steps": 1, "out": str(tmp_path / "o")}))
    monkeypatch.setitem(sys.modules, "pyopencl", None)        # `import pyopencl` raises ImportError
    events = []
    assert bench.main([str(job)], events.append) == 0
    last = events[-1]
    assert last.ev == "bench" and "pyopencl" in last.results["opencl"]["error"]
    assert last.results["numpy"]["ms_step"] > 0 and last.speedup is None
    assert {e.backend for e in events[:-1]} == {"numpy"}
    assert parse_event(last.to_json()).results == json.loads(last.to_json())["results"]
    assert (tmp_path / "o" / "bench.json").exists()


def test_bench_job_errors_name_the_field(tmp_path):
    from device_agent.bench import bench
    from device_agent.errors import InputError

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "x", "stage": "middle"}))
    with pytest.raises(InputError, match="stage"):
        bench.load_job(str(job))
    from device_agent.bench import tune

    for doc, words in (({"model": "x", "batch": 0}, "tune field 'batch' must be an integer >= 1, got 0"),
                       ({"model": "x", "steps": True}, "tune field 'steps'"), ({"batch": 2}, "needs 'model'")):
        job.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=words):
            tune.load_job(str(job))
    job.write_text("{")
    with pytest.raises(InputError, match="not a readable tune job"):
        tune.load_job(str(job))
    job.write_text(json.dumps({"model": "x"}))
    assert tune.load_job(str(job)) == {"model": "x", "batch": 8, "steps": 3, "conv": True}
