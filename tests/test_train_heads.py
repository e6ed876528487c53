"""Training on logits (issue 13): a classifier that ends in Softmax/LogSoftmax trains, evaluates and
caches features on the logits before it, on both engines; inference still returns its probabilities.

  * heads.loss_output / loss_graph on hand-built heads: Softmax and LogSoftmax, opset 11's
    Flatten -> Softmax -> Reshape, a (N,K,1,1) conv head (flattened for the loss), shape-only nodes
    after the softmax, and softmaxes that are not over the classes (left alone).
  * torch.nn classifiers ending in nn.Softmax / nn.LogSoftmax, exported by torch.onnx (opsets 11 and
    13) and imported by thomas_cli: 20 float64 steps on the numpy engine give PyTorch's losses and
    weights for the same network trained WITHOUT the softmax, to 1e-6; so does the eval loss.
  * `last` with the feature cache (the cut, the cached features and the suffix end at the logits),
    and the OpenCL engine in float32 against the numpy engine on the same heads.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.model.builder import IMAGENET_PREPROCESS
from device_agent.training.data import normalize, open_dataset
from device_agent.model.graph import Graph, Node, ParamSpec, load_package
from device_agent.model.heads import loss_graph, loss_output, num_classes
from device_agent.infer import infer_package
from device_agent.ops import get_op
from device_agent.protocol import TrainJob
from device_agent.training.train import run
from clcheck import needs_cl
from train_helpers import make_root, tiny_cnn


def _has_op(name: str) -> bool:
    try:
        get_op(name)
    except Exception:  # noqa: BLE001  (the registry's not-found error, whatever its type)
        return False
    return True


# ------------------------------------------------------------------------------ heads on hand-built graphs
def _append(g: Graph, nodes: list[Node], out: str | list[str], params: dict | None = None) -> Graph:
    """tiny_cnn (logits (N,10)) with `nodes` after it and `out` as its outputs."""
    g = copy.deepcopy(g)
    g.nodes += nodes
    for k, (shape, v) in (params or {}).items():
        g.params[k] = ParamSpec(shape, "float32", k.split(".")[0], True)
        g.weights[k] = v
    g.outputs = [out] if isinstance(out, str) else list(out)
    return g.validate()


def _conv_head() -> Graph:
    """tiny_cnn whose classifier is a 1x1 conv on the pooled map: logits (N,10,1,1)."""
    g = copy.deepcopy(tiny_cnn())
    i = next(k for k, n in enumerate(g.nodes) if n.name == "flat")
    g.nodes = g.nodes[:i]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((10, 16, 1, 1)) * 0.1).astype(np.float32)
    for k in ("fc.weight", "fc.bias"):
        del g.params[k], g.weights[k]
    g.params["head.weight"] = ParamSpec((10, 16, 1, 1), "float32", "head", True)
    g.weights["head.weight"] = w
    g.nodes.append(Node("Conv2d", "head", ["gap", "head.weight"], ["z"],
                        {"out_channels": 10, "kernel": [1, 1]}))
    g.outputs = ["z"]
    return g.validate()


HEADS = {
    # name: (graph, the tensor the loss reads, loss graph output shape at batch 1)
    "plain": lambda: (tiny_cnn(), "logits"),
    "softmax": lambda: (_append(tiny_cnn(), [Node("Softmax", "sm", ["logits"], ["p"], {"axis": 1})], "p"), "logits"),
    "softmax-then-shape": lambda: (_append(tiny_cnn(), [
        Node("Softmax", "sm", ["logits"], ["p"], {"axis": -1}), Node("Identity", "id", ["p"], ["q"]),
        Node("Reshape", "rs", ["q"], ["r"], {"shape": [0, 10, 1, 1]}),
        Node("Flatten", "fl", ["r"], ["probs"], {"axis": 1})], "probs"), "logits"),
    "logits-and-probs": lambda: (_append(tiny_cnn(), [Node("Softmax", "sm", ["logits"], ["p"])],
                                         ["logits", "p"]), "logits"),
    "conv-head-softmax": lambda: (_append(_conv_head(), [Node("Softmax", "sm", ["z"], ["p"], {"axis": 1})], "p"), "z"),
    "opset11-flatten-softmax-reshape": lambda: (_append(_conv_head(), [
        Node("Flatten", "sm.flatten", ["z"], ["zf"], {"axis": 1}), Node("Softmax", "sm.softmax", ["zf"], ["pf"]),
        Node("Reshape", "sm", ["pf"], ["p"], {"shape": [0, 10, 1, 1]})], "p"), "zf"),
}
if _has_op("LogSoftmax"):
    HEADS["logsoftmax"] = lambda: (_append(tiny_cnn(), [Node("LogSoftmax", "lsm", ["logits"], ["lp"], {"axis": 1})],
                                           "lp"), "logits")


@pytest.mark.parametrize("case", list(HEADS))
def test_loss_reads_the_logits_of_every_head_form(case):
    g, want = HEADS[case]()
    assert loss_output(g) == want
    lg = loss_graph(g)
    assert len(lg.outputs) == 1 and lg.infer_shapes(batch=3)[lg.outputs[0]] == (3, 10)
    assert num_classes(g) == 10
    assert not {n.op for n in lg.nodes} & {"Softmax", "LogSoftmax"}
    if case == "plain":
        assert lg is g                     # a model that ends in its logits trains exactly as before
    # the loss graph's output holds the logits the full graph computes on the way to its output
    from device_agent.backends.numpy import NumpyRef
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8))
    g2 = copy.deepcopy(g)
    g2.outputs = list(g.outputs) + [want]              # the full graph, keeping its logits tensor too
    z = NumpyRef(g2, dtype=np.float64).forward(x)[want].reshape(3, -1)
    np.testing.assert_array_equal(NumpyRef(lg, dtype=np.float64).forward(x)[lg.outputs[0]], z)


def test_a_softmax_that_is_not_over_the_classes_is_left_alone():
    g = _conv_head()
    # a per-pixel softmax: (N,10,2,2) over the channels is not one score per class
    g2 = copy.deepcopy(g)
    g2.nodes[-1].attrs["pads"] = [1, 1, 1, 1]          # the 1x1 conv now maps (1,1) -> (3,3)
    g2 = _append(g2, [Node("Softmax", "sm", ["z"], ["p"], {"axis": 1})], "p")
    assert loss_output(g2) == "p"
    # a softmax over the batch axis
    g3 = _append(tiny_cnn(), [Node("Softmax", "sm", ["logits"], ["p"], {"axis": 0})], "p")
    assert loss_output(g3) == "p"


# ------------------------------------------------------------------------------ imported torch classifiers
torch = pytest.importorskip("torch")
nn = torch.nn


class Net(nn.Module):
    """conv-relu, strided conv-relu, global pool, classifier (Linear, or a 1x1 conv: (N,K,1,1)), head."""

    def __init__(self, head: str, conv_head: bool, flat_after: bool):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Conv2d(12, 10, 1) if conv_head else nn.Linear(12, 10)
        self.head = {"softmax": nn.Softmax(dim=1), "logsoftmax": nn.LogSoftmax(dim=1), "none": None}[head]
        self.conv_head, self.flat_after = conv_head, flat_after

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 1)
        x = self.fc(x) if self.conv_head else self.fc(torch.flatten(x, 1))
        if self.head is not None:
            x = self.head(x)
        return torch.flatten(x, 1) if self.flat_after else x


# name: (head, opset, conv_head, flat_after). "softmax-flat-11": a Softmax(axis=1) of a (N,K,1,1)
# tensor at opset 11, i.e. over the flattened trailing axes (torch itself exports a transposed
# softmax there, so the opset-13 export is relabelled 11, where the same node means exactly that)
MODELS = {
    "softmax-11": ("softmax", 11, False, False),
    "softmax-13": ("softmax", 13, False, False),
    "logsoftmax-11": ("logsoftmax", 11, False, False),
    "logsoftmax-13": ("logsoftmax", 13, False, False),
    "softmax-flat-11": ("softmax", 11, True, False),
    "softmax-conv-13": ("softmax", 13, True, True),
    "softmax-13-as-imported": ("softmax", 13, False, False),
}


def _export(case: str, path, seed: int = 0, as_imported: bool = False):
    """(torch module WITHOUT its softmax, float64; imported THOMAS graph of the module WITH it, whose
    one output is the softmax's unless as_imported)."""
    import onnx

    from thomas_cli.onnx import import_onnx

    head, opset, conv_head, flat_after = MODELS[case]
    if head == "logsoftmax" and not _has_op("LogSoftmax"):
        pytest.skip("the LogSoftmax op is not registered yet")
    torch.manual_seed(seed)
    net = Net(head, conv_head, flat_after).eval()
    relabel = case == "softmax-flat-11"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), dynamo=False,
                          opset_version=13 if relabel else opset, input_names=["input"], output_names=["probs"],
                          dynamic_axes={"input": {0: "N"}, "probs": {0: "N"}})
    if relabel:
        m = onnx.load(str(path))
        assert [n.op_type for n in m.graph.node][-1] == "Softmax"
        m.opset_import[0].version = 11
        onnx.save(m, str(path))
    try:
        g = import_onnx(path, preprocess=dict(IMAGENET_PREPROCESS))
    except Exception as e:  # noqa: BLE001  (OnnxError: an op the importer does not know yet)
        if head == "logsoftmax" and "LogSoftmax" in str(e):
            pytest.skip(f"the importer does not read LogSoftmax yet: {e}")
        raise
    if not as_imported:     # the package's only output is the softmax's (the importer may add the logits)
        g.outputs = [g.outputs[-1]]
    twin = copy.deepcopy(net).double()
    twin.head = None
    return twin, g


def _torch_train(net, data, job: TrainJob, steps: int, trainable=None):
    """SGD (torch.optim) over our data order; cross-entropy of the logits flattened to (N,K).
    Returns (losses, val loss after the last step)."""
    ds = open_dataset(data)
    pre = dict(IMAGENET_PREPROCESS)
    images = np.concatenate([np.asarray(m) for m in ds.train.images])
    vx = torch.from_numpy(normalize(np.concatenate([np.asarray(m) for m in ds.val.images]), pre, np.float64))
    params = [p for k, p in net.named_parameters() if trainable is None or k in trainable]
    for k, p in net.named_parameters():
        p.requires_grad_(trainable is None or k in trainable)
    opt = torch.optim.SGD(params, lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay)
    n, losses, step = len(images), [], 0
    spe = -(-n // job.batch)
    for epoch in range(job.epochs):
        order = np.random.default_rng([job.seed, 1, epoch]).permutation(n)
        for i in range(spe):
            rows = order[i * job.batch:(i + 1) * job.batch]
            x = torch.from_numpy(normalize(images[rows], pre, np.float64))
            loss = nn.functional.cross_entropy(torch.flatten(net(x), 1), torch.from_numpy(ds.train.labels[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step == steps:
                with torch.no_grad():
                    val = nn.functional.cross_entropy(torch.flatten(net(vx), 1), torch.from_numpy(ds.val.labels))
                return losses, float(val)
    raise AssertionError("fewer steps than asked")


def _ours(paths, **kw):
    job = TrainJob.from_dict({**paths, **dict(epochs=2, batch=16, lr=0.05, momentum=0.9, weight_decay=1e-4, seed=3),
                              **kw})
    evs = []
    done = run(job, lambda e: evs.append(json.loads(e.to_json())))
    return job, evs, done


def _steps(evs):
    return [e["loss"] for e in evs if e["ev"] == "step"]


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test of this module runs torch on one thread (conftest.one_torch_thread)."""


@pytest.mark.torch
@pytest.mark.parametrize("case", list(MODELS))
def test_float64_training_matches_pytorch_without_the_softmax(tmp_path, case):
    twin, g = _export(case, tmp_path / "m.onnx", as_imported=case.endswith("as-imported"))
    assert g.nodes[-1].op in ("Softmax", "LogSoftmax", "Reshape", "Flatten") and loss_output(g) != g.outputs[-1]
    paths = make_root(tmp_path, model=g, limit=200)          # 160 train: 10 steps of 16 per epoch
    job, evs, done = _ours(paths, layers="all", dtype="float64", backend="numpy")
    ref, ref_val = _torch_train(twin, paths["data"], job, steps=20)
    ours = _steps(evs)
    assert len(ours) == 20
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert abs(ref[0] - np.log(10)) < 0.3        # cross-entropy of logits, not of probabilities
    ck = checkpoint.load(tmp_path / "runs" / "r" / "ckpt" / "ckpt-00000020.npz")
    for k, p in twin.named_parameters():
        t = p.detach().numpy()
        v = ck.params[k].reshape(t.shape)
        assert np.abs(v - t).max() <= 1e-6 * max(np.abs(t).max(), 1e-3), k
    evals = [e for e in evs if e["ev"] == "eval"]
    assert evals[-1]["loss"] == pytest.approx(ref_val, rel=1e-6)
    # final/ is the imported model (softmax included) with the trained weights: inference returns
    # what it returned before, probabilities (or log-probabilities) of the trained logits
    fin = load_package(done.final)
    assert fin.outputs == g.outputs and [n.op for n in fin.nodes] == [n.op for n in g.nodes]
    x = normalize(np.asarray(open_dataset(paths["data"]).val.images[0])[:4], fin.inputs[0].preprocess)
    out = infer_package(fin, x, output=fin.outputs[-1]).reshape(4, -1).astype(np.float64)
    probs = np.exp(out) if MODELS[case][0] == "logsoftmax" else out
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("case", ["softmax-13", "softmax-flat-11"])
def test_last_stage_with_the_feature_cache_trains_on_the_logits(tmp_path, case):
    twin, g = _export(case, tmp_path / "m.onnx")
    paths = make_root(tmp_path, model=g, limit=200)
    job, evs, _ = _ours(paths, layers="last", dtype="float64", backend="numpy")
    plan = next(e for e in evs if e["ev"] == "plan")
    assert plan["feature_cache"] is True
    assert [e["hit"] for e in evs if e["ev"] == "cache"][:1] == [False]
    ref, ref_val = _torch_train(twin, paths["data"], job, steps=20, trainable={"fc.weight", "fc.bias"})
    np.testing.assert_allclose(_steps(evs), ref, rtol=1e-6)
    assert [e for e in evs if e["ev"] == "eval"][-1]["loss"] == pytest.approx(ref_val, rel=1e-6)
    # the cached features are the frozen part's outputs; the trainable part ends at the logits
    from device_agent.training.stages import split_graph, trainable_params
    sp = split_graph(g, trainable_params(g, "last"))
    assert plan["cut"] == sp.cut and [n.op for n in sp.suffix.nodes][-1] in ("Gemm", "Flatten")
    assert not {n.op for n in sp.suffix.nodes} & {"Softmax", "Reshape"}
    # a second run reads the cache and trains the same
    _, evs2, _ = _ours(dict(paths, out=str(tmp_path / "runs" / "again")), layers="last", dtype="float64",
                       backend="numpy")
    assert all(e["hit"] for e in evs2 if e["ev"] == "cache")
    assert _steps(evs2) == _steps(evs)


@needs_cl
@pytest.mark.torch
@pytest.mark.parametrize("case", ["softmax-conv-13", "softmax-flat-11", "logsoftmax-13"])
def test_opencl_engine_trains_the_same_head_as_numpy(tmp_path, case):
    _, g = _export(case, tmp_path / "m.onnx")
    paths = make_root(tmp_path, model=g, limit=200)
    out = {}
    for backend in ("numpy", "opencl"):
        p = dict(paths, out=str(tmp_path / "runs" / backend))
        _, evs, done = _ours(p, layers="all", backend=backend, epochs=1)
        out[backend] = (_steps(evs), done)
    (a, da), (b, db) = out["numpy"], out["opencl"]
    assert len(a) == 10 and abs(a[0] - np.log(10)) < 0.3
    np.testing.assert_allclose(b, a, rtol=2e-4)
    assert db.val_loss == pytest.approx(da.val_loss, rel=2e-4) and db.val_acc == pytest.approx(da.val_acc, abs=0.02)
