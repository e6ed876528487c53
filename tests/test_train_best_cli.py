"""The host side of best/ (issue 14): `thomas finetune` pulls best/ beside final/ and says which epoch
it holds; `thomas export RUN` and `thomas infer RUN` use best/ by default and say so on stderr,
`--which final` picks the last epoch's model; a bad --which is one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from devicekit import RUN_ARGS, only_run, thomas
from test_device_cli import make_target, push_basics

from device_agent.model.graph import load_package


def _done(run: Path) -> dict:
    last = json.loads((run / "events.jsonl").read_text().splitlines()[-1])
    assert last["ev"] == "done", last
    return last


def test_finetune_pulls_best_and_export_infer_use_it(request, tmp_path, monkeypatch):
    dev = make_target("local", request, tmp_path, monkeypatch, "shared_vdev")
    push_basics(dev, tmp_path)
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--layers", "last", "--epochs", "3", *RUN_ARGS,
               "--lr", "0.05", "--set", "select=val_loss")
    run = only_run(Path(os.environ["THOMAS_HOME"]))
    done = _done(run)
    e = done["best_epoch"]
    assert done["select"] == "val_loss" and done["best"].endswith("/best") and 1 <= e <= 3
    assert load_package(run / "best").meta["trained"]["epoch"] == e
    assert (run / "final" / "model.json").is_file()
    summary = json.loads((run / "run.json").read_text())["summary"]
    assert summary["best_epoch"] == e and summary["select"] == "val_loss"
    assert f"best: epoch {e} (val_loss {done['best_metric']:.4f}, final {done['final_metric']:.4f})" in \
        " ".join(r.stdout.split())

    # export: best/ unless --which final, and it says which
    r = thomas(dev, "export", run.name, "-o", str(tmp_path / "best.onnx"))
    note = " ".join(r.stderr.split())
    assert f"run {run.name}: best/ (epoch {e} of 3, val_loss {done['best_metric']:.4f}); --which final" in note
    assert str(run / "best") in " ".join(r.stdout.split())
    r = thomas(dev, "export", run.name, "--which", "final", "-o", str(tmp_path / "final.onnx"))
    assert f"run {run.name}: final/" in r.stderr and "--which final" not in r.stderr
    assert str(run / "final") in " ".join(r.stdout.split())
    r = thomas(dev, "export", run.name, "--which", "last", "-o", str(tmp_path / "x.onnx"), expect=1)
    assert r.stderr.strip() == "error: --which must be best or final, got 'last'"
    r = thomas(dev, "export", str(run / "best"), "--which", "final", "-o", str(tmp_path / "x.onnx"), expect=1)
    assert "is a model package: --which picks a run's best/ or final/" in r.stderr

    # infer: best/ by default (pushed as models/<run>-best), final/ on request
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = thomas(dev, "infer", run.name, "--input", str(tmp_path / "x.npy"), "--json")
    assert f"run {run.name}: best/ (epoch {e}" in " ".join(r.stderr.split())
    assert (dev.root / "models" / f"{run.name}-best" / "model.json").is_file()
    r = thomas(dev, "infer", run.name, "--which", "final", "--input", str(tmp_path / "x.npy"), "--json")
    assert (dev.root / "models" / run.name / "model.json").is_file()
