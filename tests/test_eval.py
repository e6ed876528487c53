"""device_agent.evaluate: the numbers `thomas eval` reports, against independent oracles.

Oracles: PyTorch float64 (TorchTwin) for the logits and F.cross_entropy for the loss, scikit-learn
for the confusion matrix and per-class precision/recall/F1, on the numpy and the OpenCL backend; the
agent subcommand `python -m device_agent eval` end to end in a device-like root.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clcheck import needs_cl
from device_agent.model.builder import IMAGENET_PREPROCESS, GraphBuilder
from device_agent.training.data import open_dataset, write_dataset
from device_agent.errors import DataError, InputError
from device_agent.evaluate import check_fit, evaluate, labels_match, pick_split
from device_agent.model.graph import Graph, TensorSpec, save_package
from train_helpers import REPO, digits, tiny_cnn

K = 4
CLASSES = ["zero", "one", "two", "three"]


def _data(size: int = 8, n: int = 120):
    imgs, labels = digits(size)
    sel = labels < K
    return imgs[sel][:n], labels[sel][:n]


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory) -> Path:
    x, y = _data()
    return write_dataset(tmp_path_factory.mktemp("eval-data") / "digits", x, y, CLASSES, val_fraction=0.5, seed=0)


def _fitted(softmax: bool = False) -> Graph:
    """conv-BN-ReLU, strided conv, flatten, linear (+ Softmax): the classifier's weights fitted by least
    squares on the features of the first 60 images, so the model predicts every class, not always
    right (a confusion matrix with off-diagonal cells)."""
    from device_agent.training.data import normalize
    from device_agent.backends.numpy import NumpyInfer

    def build(head: bool) -> Graph:
        b = GraphBuilder("fit", input_shape=(None, 3, 8, 8), preprocess=dict(IMAGENET_PREPROCESS), seed=5)
        x = b.relu(b.bn(b.conv(b.input, 8, 3, name="c1"), name="bn1"), name="r1")
        x = b.flatten(b.relu(b.conv(x, 8, 3, stride=2, name="c2"), name="r2"), name="flat")
        if not head:
            return b.finish({"feat": x})
        x = b.linear(x, K, name="fc", init="torch")
        return b.finish({"probs": b.softmax(x, name="sm")} if softmax else {"logits": x}, labels=CLASSES)

    x, y = _data()
    feat = build(False)
    f = NumpyInfer(feat, np.float64).forward(normalize(x[:60], feat.inputs[0].preprocess, np.float64))["feat"]
    f1 = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    w = np.linalg.solve(f1.T @ f1 + 30.0 * np.eye(f1.shape[1]), f1.T @ (np.eye(K)[y[:60]] * 4.0 - 1.0))
    g = build(True)
    g.weights["fc.weight"] = np.ascontiguousarray(w[:-1].T, np.float32)
    g.weights["fc.bias"] = w[-1].astype(np.float32)
    return g


@pytest.fixture(scope="module")
def model() -> Graph:
    return _fitted()


def _oracle(g: Graph, split, tensor: str):
    """float64 `tensor` for every image of the split by PyTorch, from the uint8 rows normalised here."""
    import torch

    from torch_twin import TorchTwin

    u8 = split.rows(np.arange(len(split))).astype(np.float64)
    pre = g.inputs[0].preprocess
    x = ((u8 * pre["scale"] - np.asarray(pre["mean"])) / np.asarray(pre["std"])).transpose(0, 3, 1, 2)
    tw = TorchTwin(g, dtype=torch.float64)
    tw.forward({"input": torch.from_numpy(x)}, training=False, keep_all=True)
    return tw.env[tensor].detach()


def _check(res, logits, y: np.ndarray, k: int, tol: float) -> None:
    """Every number of `res` against torch (accuracy, top-k, loss) and sklearn (per class)."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = logits.argmax(dim=1).numpy()
    assert len(np.unique(pred)) >= 2, "the test model must predict several classes"
    assert res.count == len(y) and res.top_k == k
    assert res.acc == float(np.mean(pred == y))
    top = torch.topk(logits, k, dim=1).indices.numpy()
    assert res.top_k_acc == float(np.mean((top == y[:, None]).any(axis=1)))
    assert res.loss == pytest.approx(F.cross_entropy(logits, torch.from_numpy(y)).item(), rel=tol)
    np.testing.assert_array_equal(res.confusion, confusion_matrix(y, pred, labels=list(range(K))))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(K)), zero_division=np.nan)
    np.testing.assert_allclose(res.precision, p, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.recall, r, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.f1, f, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(res.support, s)


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["numpy", pytest.param("opencl", marks=needs_cl)])
@pytest.mark.parametrize("split", ["val", "train"])
def test_numbers_match_torch_and_sklearn(ds_path, model, backend, split):
    ds = open_dataset(ds_path)
    check_fit(model, ds, "'tiny'")
    part = pick_split(ds, split)
    res = evaluate(model, part, batch=16, backend=backend, top=2, num_classes=K)   # 16 does not divide 60
    assert res.backend == backend and res.split == split and res.loss_tensor == "logits"
    _check(res, _oracle(model, part, "logits"), part.labels, 2, 1e-5 if backend == "numpy" else 1e-4)
    doc = res.to_dict(ds.classes)
    json.dumps(doc, allow_nan=False)                      # an undefined precision travels as null
    assert doc["confusion"] == res.confusion.tolist() and [r["class"] for r in doc["per_class"]] == CLASSES
    assert doc["macro"]["recall"] == pytest.approx(float(np.nanmean(res.recall)))
    assert doc["count"] == len(part) and doc["img_s"] > 0


@pytest.mark.torch
def test_a_model_ending_in_softmax_is_scored_on_its_logits(ds_path):
    """The loss is the cross-entropy of the logits before the Softmax, never of its probabilities;
    top-k ranks are the same either way."""
    import torch
    import torch.nn.functional as F

    g = _fitted(softmax=True)
    ds = open_dataset(ds_path)
    res = evaluate(g, ds.val, batch=32, backend="numpy", top=3)
    assert res.loss_tensor == next(n for n in g.nodes if n.op == "Softmax").inputs[0] != "probs"
    logits = _oracle(g, ds.val, res.loss_tensor)
    _check(res, logits, ds.val.labels, 3, 1e-5)
    probs = _oracle(g, ds.val, "probs")
    wrong = F.cross_entropy(probs, torch.from_numpy(ds.val.labels)).item()
    assert abs(res.loss - wrong) > 1e-3          # the oracle can tell the two apart


def test_fixed_batch_model_pads_its_last_batch(ds_path, model):
    """A package whose input has a fixed batch (4) runs exactly that batch; the padding rows of the last
    batch (a split of 6 images: 4, then 2 and 2 padding rows) never reach the counts."""
    spec = model.inputs[0]
    fixed = Graph(model.name, [TensorSpec(spec.name, (4, 3, 8, 8), preprocess=spec.preprocess)], model.outputs,
                  model.nodes, model.params, model.weights, model.labels, model.meta).validate()
    x, y = _data()
    small = write_dataset(ds_path.parent / "seven", x[:14], y[:14], CLASSES, val_fraction=0.5, seed=0)
    part = open_dataset(small).train
    assert len(part) % 4
    a = evaluate(fixed, part, batch=64, backend="numpy")
    b = evaluate(model, part, batch=64, backend="numpy")
    assert a.count == b.count == len(part) and a.confusion.sum() == len(part)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.correct_k == b.correct_k


def test_missing_split_and_mismatches_are_one_line(ds_path, model, tmp_path):
    ds = open_dataset(ds_path)
    with pytest.raises(DataError, match=r"has no 'test' split") as e:
        pick_split(ds, "test")
    assert "\n" not in str(e.value)
    x, y = _data()
    no_val = write_dataset(tmp_path / "noval", x, y, CLASSES, val_fraction=0.0)
    with pytest.raises(DataError, match=r"no 'val' split"):
        pick_split(open_dataset(no_val), "val")
    with pytest.raises(InputError, match="--split must be one of"):
        pick_split(ds, "holdout")
    with pytest.raises(DataError, match=r"model 'five' predicts 5 classes, dataset .*digits has 4") as e:
        check_fit(tiny_cnn(5, 8), ds, "'five'")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"images are 8x8, model 'big' expects 16x16") as e:
        check_fit(tiny_cnn(K, 16), ds, "'big'")
    assert "\n" not in str(e.value) and "digits" in str(e.value)


def test_a_grayscale_dataset_feeds_an_rgb_model_as_training_does(ds_path, model, tmp_path):
    """Datasets pushed as 1 channel are replicated for a 3-channel model (check_fit, then the pipeline):
    the same numbers as the RGB copy of the same images."""
    x, y = _data()
    assert (x[..., :1] == x).all()                     # the digits are gray already
    gray = open_dataset(write_dataset(tmp_path / "gray", x[..., :1], y, CLASSES, val_fraction=0.5, seed=0))
    check_fit(model, gray, "'fit'")
    a = evaluate(model, gray.val, batch=16, backend="numpy")
    b = evaluate(model, open_dataset(ds_path).val, batch=16, backend="numpy")
    assert a.loss == b.loss and a.correct == b.correct
    np.testing.assert_array_equal(a.confusion, b.confusion)
    gb = GraphBuilder("one", input_shape=(None, 1, 8, 8), preprocess={"scale": 1 / 255})
    one = gb.finish({"logits": gb.linear(gb.flatten(gb.input), K)})
    with pytest.raises(DataError, match="images are RGB, model 'one' takes 1-channel"):
        check_fit(one, open_dataset(ds_path), "'one'")
    check_fit(one, gray, "'one'")                      # gray data, gray model: fits


def test_labels_match():
    assert labels_match(CLASSES, CLASSES) is True
    assert labels_match(list(reversed(CLASSES)), CLASSES) is False     # same names, other order: a mix-up
    assert labels_match(["class_0", "class_1", "class_2", "class_3"], CLASSES) is None
    assert labels_match(None, CLASSES) is None


# ============================================================================ the agent subcommand
def _agent(root: Path, *args: str) -> tuple[int, list[dict], str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), THOMAS_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "device_agent", "eval", *args], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()], p.stderr


def test_agent_eval_writes_the_report_and_one_event(tmp_path, model):
    x, y = _data()
    write_dataset(tmp_path / "data" / "d", x, y, CLASSES, val_fraction=0.5, seed=0)
    save_package(model, tmp_path / "models" / "m")
    rc, evs, err = _agent(tmp_path, "models/m", "data/d", "runs/r1/eval.json", "--batch", "7", "--top", "3",
                          "--backend", "numpy")
    assert rc == 0, err
    assert [e["ev"] for e in evs][0] == "hello" and evs[-1]["ev"] == "eval_report"
    prog = [e for e in evs if e["ev"] == "progress"]
    assert prog and prog[-1]["done"] == prog[-1]["total"] == 60 and all(e["phase"] == "eval" for e in prog)
    rep = evs[-1]
    doc = json.loads((tmp_path / "runs" / "r1" / "eval.json").read_text())
    want = evaluate(model, open_dataset(tmp_path / "data" / "d").val, batch=7, backend="numpy", top=3)
    assert rep["count"] == doc["count"] == 60 and rep["top_k"] == 3 and rep["backend"] == "numpy"
    assert rep["acc"] == doc["acc"] == want.acc and doc["confusion"] == want.confusion.tolist()
    assert rep["loss"] == pytest.approx(want.loss) and rep["output"] == "runs/r1/eval.json"
    assert doc["labels_match"] is True and doc["model"] == "models/m" and doc["device"].endswith("(numpy)")

    for args, match in [(("data/d", "runs/r2/e.json", "--split", "test"), "has no 'test' split"),
                        (("data/nosuch", "runs/r2/e.json"), "no such dataset directory"),
                        (("data/d", "/tmp/e.json"), "must be relative to the device root"),
                        (("data/d", "runs/r2/e.json", "--batch", "0"), "--batch must be an integer >= 1"),
                        (("data/d", "runs/r2/e.json", "--top", "x"), "--top must be"),
                        (("data/d", "runs/r2/e.json", "--bogus", "1"), "unknown option")]:
        rc, evs, err = _agent(tmp_path, "models/m", *args)
        assert rc == 1 and evs[-1]["ev"] == "error" and match in evs[-1]["message"], (args, evs, err)
        assert "Traceback" not in err and "\n" not in evs[-1]["message"]
    assert not (tmp_path / "runs" / "r2").exists()
