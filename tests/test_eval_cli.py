"""`thomas eval` end to end on a device (the embedded local one, and the virtual adb phone for the main
path): every model form (package, model on the device, run: best/ else final/, in place or pushed),
--split test, the run record (`runs list/show`), `thomas report`'s PNG, and bad input as one line.
The numbers themselves are checked against torch and sklearn in test_eval.py; here they must equal
an in-process evaluate() of the same model on the same split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device_agent.model.builder import GraphBuilder
from device_agent.training.data import open_dataset, write_dataset
from device_agent.evaluate import evaluate
from device_agent.model.graph import Graph, save_package
from devicekit import thomas, thomas_json
from test_daemon_cli import daemon_dev, paired  # noqa: F401  (fixture)
from test_device_cli import _no_stray_adb_server, make_target  # noqa: F401  (fixture)
from test_eval import CLASSES, _data, _fitted
from train_helpers import tiny_cnn

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=["adb", "local"])
def dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "shared_vdev")


@pytest.fixture
def local(request, tmp_path, monkeypatch):
    return make_target("local", request, tmp_path, monkeypatch, "shared_vdev")


@pytest.fixture(scope="module")
def fit() -> Graph:
    return _fitted()


def _put_data(dev, name: str = "digits") -> Path:
    """A dataset written straight into the device root (as push-data leaves it): 4 classes, 8x8."""
    x, y = _data()
    return write_dataset(dev.root / "data" / name, x, y, CLASSES, val_fraction=0.5, seed=0)


def _home() -> Path:
    import os

    return Path(os.environ["THOMAS_HOME"])


def _one_line_error(r, match: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def _same_numbers(doc: dict, want) -> None:
    assert doc["count"] == want.count and doc["acc"] == want.acc and doc["top_k_acc"] == want.top_k_acc
    assert doc["confusion"] == want.confusion.tolist() and doc["loss"] == pytest.approx(want.loss, rel=1e-6)


# ============================================================================ model forms
def test_package_then_device_model_then_report(dev, fit, tmp_path):
    data = _put_data(dev)
    pkg = save_package(fit, tmp_path / "pkgs" / "fit")
    doc = thomas_json(dev, "eval", str(pkg), "--data", "digits", "--backend", "numpy", "--batch", "16")
    _same_numbers(doc, evaluate(fit, open_dataset(data).val, backend="numpy"))
    assert doc["split"] == "val" and doc["which"] is None and doc["backend"] == "numpy"
    assert doc["source"] == str(pkg.resolve()) and (dev.root / "models" / "fit" / "model.json").is_file()
    assert len(set(np.argmax(doc["confusion"], axis=1))) >= 2          # a matrix worth drawing
    host = _home() / "runs" / doc["id"]
    assert json.loads((host / "eval.json").read_text())["confusion"] == doc["confusion"]
    assert any(json.loads(ln)["ev"] == "eval_report" for ln in (host / "events.jsonl").read_text().splitlines())
    row = next(r for r in thomas_json(dev, "runs", "list") if r["id"] == doc["id"])
    assert row["status"] == "done" and row["stage"] == "eval val" and row["val_acc"] == doc["acc"]

    # the model now on the device, by name; the train split; human output
    r = thomas(dev, "eval", "fit", "--data", "digits", "--split", "train", "--top", "2", "--backend", "auto")
    assert "top-1 accuracy" in r.stdout and "top-2 accuracy" in r.stdout and "confusion" in r.stdout
    assert "per class" in r.stdout and "three" in r.stdout and "saved as run" in r.stderr
    run_id = r.stderr.split("saved as run ")[1].split()[0]
    shown = thomas(dev, "runs", "show", run_id)
    assert "top-1 accuracy" in shown.stdout and "eval train" in shown.stdout
    assert thomas_json(dev, "runs", "show", run_id)["eval"]["split"] == "train"

    png = tmp_path / "cm.png"
    thomas(dev, "report", run_id, "-o", str(png))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
        px = np.asarray(im.convert("L"))
    assert px.std() > 10                                        # not a blank canvas


def _fake_run(run_id: str, parts: dict, device: dict | None = None) -> Path:
    """A run record of this host with the given packages (best/, final/) in its folder."""
    d = _home() / "runs" / run_id
    for which, g in parts.items():
        save_package(g, d / which)
    rec = {"id": run_id, "kind": "finetune", "status": "done", "model": "fit", "data": "digits"}
    if device is not None:
        rec["device"] = device
    (d / "run.json").write_text(json.dumps(rec))
    return d


def test_a_run_uses_best_else_final(local, fit, tmp_path):
    data = _put_data(local)
    val = open_dataset(data).val
    worse = tiny_cnn(4, 8, seed=9)
    worse.labels = list(CLASSES)
    # final/ only, the host's copy: pushed as models/<run>
    _fake_run("20260101-000000-aaaa", {"final": fit})
    doc = thomas_json(local, "eval", "20260101-000000-aaaa", "--data", "digits", "--backend", "numpy")
    assert doc["which"] == "final" and (local.root / "models" / "20260101-000000-aaaa" / "model.json").is_file()
    _same_numbers(doc, evaluate(fit, val, backend="numpy"))
    # best/ beside a worse final/: best is used and said
    d = _fake_run("20260101-000000-bbbb", {"best": fit, "final": worse})
    r = thomas(local, "eval", "20260101-000000-bbbb", "--data", "digits", "--backend", "numpy")
    assert "(best/)" in r.stdout
    doc = thomas_json(local, "eval", str(d), "--data", "digits", "--backend", "numpy")   # the run's folder
    assert doc["which"] == "best" and doc["source"] == "run 20260101-000000-bbbb best/"
    _same_numbers(doc, evaluate(fit, val, backend="numpy"))


def test_a_finetune_run_is_evaluated_in_place_and_its_report_has_the_confusion(local, fit, tmp_path):
    _put_data(local)
    thomas(local, "push-model", str(save_package(fit, tmp_path / "fit")))
    rows = [json.loads(ln) for ln in thomas(local, "finetune", "fit", "--data", "digits", "--epochs", "1",
                                            "--batch", "16", "--backend", "cpu", "--json").stdout.splitlines()]
    run_id = Path(next(e for e in rows if e["ev"] == "done")["out"]).name
    doc = thomas_json(local, "eval", run_id, "--data", "digits", "--backend", "numpy")
    which = doc["which"]
    assert which in ("best", "final")                # best/ once training keeps it, else final/
    rec = json.loads((_home() / "runs" / doc["id"] / "run.json").read_text())
    assert rec["job"]["model"] == f"runs/{run_id}/{which}"                  # its own copy, nothing pushed
    assert not (local.root / "models" / run_id).exists() and not (local.root / "models" / f"{run_id}-best").exists()
    from device_agent.model.graph import load_package

    want = evaluate(load_package(local.root / "runs" / run_id / which), open_dataset(local.root / "data" / "digits").val,
                    backend="numpy")
    _same_numbers(doc, want)
    png = tmp_path / "train.png"
    thomas(local, "report", run_id, "-o", str(png))      # loss/accuracy and the val confusion matrix
    assert png.stat().st_size > 10_000


def test_split_test(local, fit, tmp_path):
    """A dataset's own test split, pushed the way a user does (an npz with x_train .. y_test, kept)."""
    x, y = _data()
    np.savez(tmp_path / "held.npz", x_train=x[:60], y_train=y[:60], x_val=x[60:90], y_val=y[60:90],
             x_test=x[90:], y_test=y[90:], classes=np.array(CLASSES))
    thomas(local, "push-data", str(tmp_path / "held.npz"))
    data = local.root / "data" / "held"
    pkg = save_package(fit, tmp_path / "fit")
    doc = thomas_json(local, "eval", str(pkg), "--data", "held", "--split", "test", "--backend", "numpy")
    test = open_dataset(data).test
    assert doc["split"] == "test" and doc["count"] == len(test) == 30
    _same_numbers(doc, evaluate(fit, test, backend="numpy"))
    row = next(r for r in thomas_json(local, "runs", "list") if r["id"] == doc["id"])
    assert row["stage"] == "eval test" and row["val_acc"] is None and row["acc"] == doc["acc"]


def test_eval_through_the_termux_daemon(daemon_dev, fit, tmp_path):
    """Unchanged over the daemon transport (eval queues behind other GPU work there); runs rm removes
    the device's copy of the record."""
    dev, d = daemon_dev
    paired(dev, d)
    data = _put_data(dev)
    doc = thomas_json(dev, "eval", str(save_package(fit, tmp_path / "fit")), "--data", "digits", "--backend", "numpy")
    _same_numbers(doc, evaluate(fit, open_dataset(data).val, backend="numpy"))
    assert (dev.root / "runs" / doc["id"] / "eval.json").is_file()
    thomas(dev, "runs", "rm", doc["id"])
    assert not (dev.root / "runs" / doc["id"]).exists() and not (_home() / "runs" / doc["id"]).exists()


# ============================================================================ bad input
def test_bad_input_is_one_line_and_leaves_nothing(local, fit, tmp_path):
    _put_data(local)
    pkg = save_package(fit, tmp_path / "fit")
    big = save_package(tiny_cnn(4, 16), tmp_path / "big")
    five = save_package(tiny_cnn(5, 8), tmp_path / "five")
    gb = GraphBuilder("gray", input_shape=(None, 1, 8, 8), preprocess={"scale": 1 / 255})
    gray = save_package(gb.finish({"logits": gb.linear(gb.flatten(gb.input), 4)}), tmp_path / "gray")
    (_home() / "runs" / "20260101-000000-cccc").mkdir(parents=True)
    (_home() / "runs" / "20260101-000000-cccc" / "run.json").write_text(json.dumps({"id": "20260101-000000-cccc",
                                                                                   "kind": "bench"}))
    cases = [((str(pkg), "--data", "nosuch"), "no dataset 'nosuch'"),
             ((str(pkg), "--data", "digits", "--split", "test"), "has no 'test' split"),
             ((str(big), "--data", "digits"), "takes 16x16 images, dataset 'digits' holds 8x8"),
             ((str(five), "--data", "digits"), "predicts 5 classes, dataset 'digits' has 4"),
             ((str(gray), "--data", "digits"), "takes 1-channel (grayscale) images, dataset 'digits' holds RGB"),
             (("nosuch", "--data", "digits"), "no such package directory, run or model"),
             ((str(pkg), "--data", "digits", "--split", "holdout"), "--split must be one of"),
             ((str(pkg), "--data", "digits", "--backend", "cuda"), "--backend must be one of"),
             ((str(pkg), "--data", "../etc"), "dataset name '../etc'"),
             (("20260101-000000-cccc", "--data", "digits"), "is a bench run")]
    for args, match in cases:
        _one_line_error(thomas(local, "eval", *args, expect=1), match)
    assert not (local.root / "models").exists()                    # nothing was pushed
    assert [p.name for p in (_home() / "runs").iterdir()] == ["20260101-000000-cccc"]   # no eval record
    r = thomas(local, "report", "20260101-000000-cccc", expect=1)
    _one_line_error(r, "no metrics to plot")
