"""`thomas report RUN`: PNGs of a training run (curves) and of a bench run (per-layer bars), and a
clear one-line error for a run with nothing to plot."""
from __future__ import annotations

import json
import os
from pathlib import Path

from devicekit import RUN_ARGS, only_run, thomas, thomas_json
from test_device_cli import make_target, push_basics

from thomas_cli import runs, store

TINY = ["mobilenet_v2", "--width", "0.35", "--size", "32", "--classes", "10", "--batch", "2", "--steps", "1"]
PNG = b"\x89PNG\r\n\x1a\n"


def _local(request, tmp_path, monkeypatch):
    return make_target("local", request, tmp_path, monkeypatch, "shared_vdev")


def test_report_of_a_finetune_run(request, tmp_path, monkeypatch):
    dev = _local(request, tmp_path, monkeypatch)
    push_basics(dev, tmp_path)
    thomas(dev, "finetune", "mnv2", "--data", "digits", "--layers", "last", "--epochs", "2", *RUN_ARGS, "--json")
    run = only_run(Path(os.environ["THOMAS_HOME"]))
    out = tmp_path / "r" / "report.png"
    r = thomas(dev, "report", run.name, "-o", str(out))
    assert out.read_bytes()[:8] == PNG and str(out) in r.stderr.replace("\n", "")


def test_report_of_a_bench_run_and_default_name(request, tmp_path, monkeypatch):
    dev = _local(request, tmp_path, monkeypatch)
    doc = thomas_json(dev, "bench", *TINY, "--stage", "last")
    monkeypatch.chdir(tmp_path)
    thomas(dev, "report", doc["id"])
    assert (tmp_path / f"report-{doc['id']}.png").read_bytes()[:8] == PNG


def test_report_curves_from_metrics_and_errors(tmp_path, monkeypatch):
    from devicekit import DeviceTarget

    dev = DeviceTarget("local", tmp_path, ["--device", "local"])
    rec = {"id": "20260101-000000-abcd", "model": "m", "data": "d", "stage": "last", "status": "done"}
    store.run_dir(rec["id"]).mkdir(parents=True)
    runs.save_run(rec)
    r = thomas(dev, "report", rec["id"], "-o", str(tmp_path / "x.png"), expect=1)
    assert "no metrics to plot" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    with open(store.run_dir(rec["id"]) / "metrics.jsonl", "w") as f:
        for e in (1, 2, 3):
            f.write(json.dumps({"epoch": e, "train_loss": 1 / e, "train_acc": 0.3 * e, "val_loss": None,
                                "val_acc": None, "lr": 0.01, "ms": 10}) + "\n")
        f.write('{"epoch": 4, "train_lo')                    # torn line of an interrupted run
    thomas(dev, "report", rec["id"], "-o", str(tmp_path / "x.png"))
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG
    r = thomas(dev, "report", "nope", expect=1)
    assert "no run 'nope'" in r.stderr
