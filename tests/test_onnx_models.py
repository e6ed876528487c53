"""ONNX import/export of real architectures, checked against onnxruntime.

  * the light_* models shipped in the onnx package's backend test data (real architectures:
    AlexNet, ZFNet, VGG19, SqueezeNet, Inception v1/v2, ResNet50, DenseNet121), as shipped and
    with random weights (the shipped ones fill every weight with one constant);
  * PyTorch exports (torch.onnx.export, dynamo=False) of our zoo's AlexNet, MobileNetV2 and
    MobileNetV3-Small, at several opsets, with BN kept or folded by torch, batch 1 and 4;
  * import -> export -> onnxruntime round trips, a fine-tuned run's final/ package, and training
    (replace_head, forward/backward) on imported graphs.
Parity: max|ours - onnxruntime| / max|onnxruntime| <= 1e-4 (measured: ~1e-7).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from device_agent.backends.numpy import NumpyRef
from device_agent.model.builder import replace_head
from device_agent.model.graph import load_package, save_package
from onnx_helpers import LIGHT_DIR, calibrate_bn, packages_round_trip, randomized_light, torch_export  # noqa: F401
from thomas_cli.onnx import export_onnx, import_onnx, onnx_parity
from thomas_cli.zoo import build

TOL = 1e-4
# every light_* model (light_shufflenet below). The ones with
# huge fully connected layers run as shipped; random weights for them would mean 250-400 MB files.
LIGHT_AS_SHIPPED = ["bvlc_alexnet", "zfnet512", "vgg19"]
LIGHT_RANDOM = ["squeezenet", "inception_v1", "inception_v2", "resnet50", "densenet121"]


def _check(path, g, batch=None, tol=TOL):
    r = onnx_parity(path, g, batch=batch)
    assert r["max_rel"] <= tol, r
    return r


def _ort(path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


# =============================================================================== onnx's light models
@pytest.mark.parametrize("name", LIGHT_AS_SHIPPED + ["squeezenet"])
def test_light_models_as_shipped(name):
    path = LIGHT_DIR / f"light_{name}.onnx"
    g = import_onnx(path)
    assert g.inputs[0].shape == (None, 3, 224, 224)
    _check(path, g)


@pytest.mark.parametrize("name", LIGHT_RANDOM)
def test_light_models_random_weights(name, tmp_path):
    path = randomized_light(name, tmp_path / f"{name}.onnx")
    g = import_onnx(path)
    r = _check(path, g)
    assert r["max_abs"] > 0                              # a real comparison of varied logits
    out = NumpyRef(g).forward({g.inputs[0].name: np.ones((1, 3, 224, 224), np.float32)})
    assert np.ptp(out[g.outputs[0]]) > 0


def test_light_alexnet_structure():
    g = import_onnx(LIGHT_DIR / "light_bvlc_alexnet.onnx")
    ops = [n.op for n in g.nodes]
    assert ops.count("Conv2d") == 5 and ops.count("Gemm") == 3 and ops.count("LRN") == 2
    assert ops[-1] == "Softmax" and "Reshape" in ops
    assert g.outputs == ["fc8", "prob_1"]                 # the logits first, then the file's output
    reshape = next(n for n in g.nodes if n.op == "Reshape")
    assert reshape.attrs["shape"][0] == 0                  # the file's fixed [1, 9216] keeps the batch free
    assert g.infer_shapes(batch=3)[g.outputs[0]] == (3, 1000)
    assert g.param_groups() == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert all(p.group and p.trainable for p in g.params.values())


def test_light_shufflenet_channel_shuffles(tmp_path):
    # its 16 channel shuffles (Reshape -> Transpose -> Reshape) were the one thing it lacked
    path = randomized_light("shufflenet", tmp_path / "shufflenet.onnx")
    g = import_onnx(path)
    assert [n.op for n in g.nodes].count("Transpose") == 16
    assert all(n.attrs["perm"] == [0, 2, 1, 3, 4] for n in g.nodes if n.op == "Transpose")
    assert _check(path, g)["max_abs"] > 0


# =============================================================================== PyTorch exports
TORCH_SIZES = {"alexnet": 95, "mobilenet_v2": 64, "mobilenet_v3_small": 64}
TORCH_CASES = [("alexnet", 11, False), ("alexnet", 13, False), ("alexnet", 17, False)] + [
    (m, o, bn) for m in ("mobilenet_v2", "mobilenet_v3_small") for o in (11, 13, 17) for bn in (True, False)]


@pytest.fixture(scope="module")
def torch_graphs():
    pytest.importorskip("torch")
    return {m: calibrate_bn(build(m, num_classes=10, size=s, seed=1), seed=2) for m, s in TORCH_SIZES.items()}


@pytest.mark.parametrize("name,opset,keep_bn", TORCH_CASES)
def test_torch_exports_import_and_match(name, opset, keep_bn, torch_graphs, tmp_path):
    src = torch_graphs[name]
    path = torch_export(src, tmp_path / f"{name}.onnx", opset=opset, keep_bn=keep_bn)
    g = import_onnx(path)
    save_package(g, tmp_path / "pkg")                     # round-tripped by packages_round_trip
    assert g.inputs[0].shape == (None,) + src.inputs[0].shape[1:]
    for batch in (1, 4):
        _check(path, g, batch=batch)
    n_bn = sum(n.op == "BatchNorm" for n in src.nodes)
    assert sum(n.op == "BatchNorm" for n in g.nodes) == (n_bn if keep_bn else 0)
    if keep_bn:      # the same layers and parameters as the graph torch exported
        want = [{"Flatten": "Reshape"}.get(n.op, n.op) for n in src.nodes if n.op != "Dropout"]
        assert [n.op for n in g.nodes] == want
        assert g.num_params() == src.num_params()
        assert g.num_params(trainable_only=False) == src.num_params(trainable_only=False)
        assert len(g.param_groups()) == len(src.param_groups())
    # and the same function as the graph torch exported
    x = np.random.default_rng(3).standard_normal((2,) + src.inputs[0].shape[1:]).astype(np.float32)
    ours = NumpyRef(g).forward({g.inputs[0].name: x})[g.outputs[0]]
    ref = NumpyRef(src).forward({"input": x})["logits"]
    assert np.max(np.abs(ours - ref)) <= TOL * np.max(np.abs(ref))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "alexnet"])
def test_torch_exports_at_224(name, tmp_path):
    pytest.importorskip("torch")
    src = calibrate_bn(build(name, num_classes=1000, size=224, seed=1), seed=2)
    path = torch_export(src, tmp_path / f"{name}.onnx", opset=17, keep_bn=True)
    g = import_onnx(path)
    assert g.num_params() == src.num_params()
    for batch in (1, 4):
        _check(path, g, batch=batch)


def test_fixed_batch_export_still_gets_a_free_batch(torch_graphs, tmp_path):
    path = torch_export(torch_graphs["mobilenet_v3_small"], tmp_path / "fixed.onnx", opset=13, dynamic=False)
    g = import_onnx(path)
    assert g.inputs[0].shape[0] is None
    _check(path, g)                                       # onnxruntime runs the file at its batch 1
    assert NumpyRef(g).forward({"input": np.zeros((3, 3, 64, 64), np.float32)})["logits"].shape == (3, 10)


# =============================================================================== export round trips
@pytest.mark.parametrize("opset", [11, 13, 17])
def test_import_export_round_trip(opset, torch_graphs, tmp_path):
    path = torch_export(torch_graphs["mobilenet_v3_small"], tmp_path / "in.onnx", opset=13, keep_bn=True)
    g = import_onnx(path)
    out = export_onnx(g, tmp_path / "out.onnx", opset=opset)
    r = _check(out, g, batch=3)
    assert r["batch"] == 3
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a, b = _ort(path, x), _ort(out, x)
    assert np.max(np.abs(a - b)) <= TOL * np.max(np.abs(a))
    again = import_onnx(out)                              # and back: the same graph
    assert [n.op for n in again.nodes] == [n.op for n in g.nodes]
    assert again.num_params(False) == g.num_params(False)


def test_round_trip_of_light_models(tmp_path):
    for name in ("squeezenet", "inception_v1"):
        path = randomized_light(name, tmp_path / f"{name}.onnx")
        g = import_onnx(path, labels=[f"c{i}" for i in range(1000)])
        out = export_onnx(g, tmp_path / f"{name}.out.onnx", opset=13)
        _check(out, g)
        x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
        a, b = _ort(path, x), _ort(out, x)
        assert np.max(np.abs(a - b)) <= TOL * np.max(np.abs(a))
        assert import_onnx(out).labels == g.labels        # labels travel in the metadata


def test_fine_tuned_run_exports(torch_graphs, tmp_path):
    path = torch_export(torch_graphs["mobilenet_v2"], tmp_path / "m.onnx", opset=17, keep_bn=True)
    g = replace_head(import_onnx(path), 4, seed=7, labels=["a", "b", "c", "d"])
    rng = np.random.default_rng(8)
    for k, p in g.params.items():                         # "fine-tuned": every weight moved
        if p.trainable:
            g.weights[k] = (g.weights[k] + 0.01 * rng.standard_normal(p.shape)).astype(np.float32)
    save_package(g, tmp_path / "run" / "final")
    tuned = load_package(tmp_path / "run" / "final")
    out = export_onnx(tuned, tmp_path / "tuned.onnx", opset=17)
    _check(out, tuned, batch=2)
    x = np.random.default_rng(9).standard_normal((2, 3, 64, 64)).astype(np.float32)
    ours = NumpyRef(tuned).forward({"input": x})["logits"]
    assert ours.shape == (2, 4)
    assert np.allclose(_ort(out, x), ours, rtol=1e-4, atol=1e-5)
    assert import_onnx(out).labels == ["a", "b", "c", "d"]


# =============================================================================== training imported graphs
def test_imported_mobilenet_v2_trains_with_a_new_head(torch_graphs, tmp_path):
    torch = pytest.importorskip("torch")
    from torch_twin import TorchTwin

    path = torch_export(torch_graphs["mobilenet_v2"], tmp_path / "m.onnx", opset=13, keep_bn=True)
    g = import_onnx(path)
    head = [n for n in g.nodes if n.op == "Gemm"][-1]
    assert g.param_groups()[-1] == head.name
    bn = [n for n in g.nodes if n.op == "BatchNorm"]
    assert all(not g.params[t].trainable for n in bn for t in n.inputs[3:])
    assert all(g.params[t].trainable for n in bn for t in n.inputs[1:3])
    assert all(p.group in {n.name for n in g.nodes} for p in g.params.values())
    g5 = replace_head(g, 5, seed=0)
    assert g5.infer_shapes(batch=2)[g5.outputs[0]] == (2, 5)

    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64))
    labels = np.array([1, 4])
    be = NumpyRef(g5, dtype=np.float64)
    be.forward({"input": x}, training=True, grad=True)
    loss = be.loss(labels)
    grads = be.backward()
    assert np.isfinite(loss) and set(grads) == {k for k, p in g5.params.items() if p.trainable}
    tw = TorchTwin(g5, dtype=torch.float64)
    tl = tw.loss(tw.forward({"input": x}, training=True)[g5.outputs[0]], labels)
    tg = tw.grads(tl)
    assert abs(loss - tl.item()) <= 1e-9 * abs(tl.item())
    for k, v in tg.items():
        assert np.max(np.abs(grads[k] - v)) <= 1e-8 * np.max(np.abs(v)) + 1e-12, k


def test_imported_alexnet_last_layer_training(torch_graphs, tmp_path):
    path = torch_export(torch_graphs["alexnet"], tmp_path / "a.onnx", opset=11, keep_bn=False)
    g = replace_head(import_onnx(path), 3, seed=0)
    head = [n for n in g.nodes if n.op == "Gemm"][-1]
    last = {t for t in head.inputs if t in g.params}
    be = NumpyRef(g, trainable=last)
    x = np.random.default_rng(2).standard_normal((2, 3, 95, 95)).astype(np.float32)
    be.forward({"input": x}, training=True, grad=True)
    be.loss(np.array([0, 2]))
    grads = be.backward()
    assert set(grads) == last and all(np.any(v != 0) for v in grads.values())
    assert be.tape_nodes == [n.name for n in g.nodes if n.name == head.name]
