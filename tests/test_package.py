"""Model package: load/save round trip and one clear error per malformed case."""
import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from device_agent.errors import PackageError
from device_agent.model.graph import Graph, Node, ParamSpec, TensorSpec, load_package, save_package


def tiny_graph() -> Graph:
    """input (N,3,8,8) -> conv 3x3 -> BN -> relu -> GAP -> flatten -> linear(4)."""
    rng = np.random.default_rng(0)
    w = {
        "conv.weight": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
        "bn.weight": np.ones(6, np.float32), "bn.bias": np.zeros(6, np.float32),
        "bn.running_mean": np.zeros(6, np.float32), "bn.running_var": np.ones(6, np.float32),
        "fc.weight": rng.standard_normal((4, 6)).astype(np.float32), "fc.bias": np.zeros(4, np.float32),
    }
    params = {k: ParamSpec(v.shape, "float32", k.split(".")[0], "running" not in k) for k, v in w.items()}
    nodes = [
        Node("Conv2d", "conv", ["input", "conv.weight"], ["t0"],
             {"out_channels": 6, "kernel": [3, 3], "pads": [1, 1, 1, 1]}),
        Node("BatchNorm", "bn", ["t0", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], ["t1"]),
        Node("Relu", "relu", ["t1"], ["t2"]),
        Node("GlobalAveragePool", "gap", ["t2"], ["t3"]),
        Node("Flatten", "flat", ["t3"], ["t4"]),
        Node("Gemm", "fc", ["t4", "fc.weight", "fc.bias"], ["logits"], {"out_features": 4}),
    ]
    inputs = [TensorSpec("input", (None, 3, 8, 8), preprocess={"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3})]
    return Graph("tiny", inputs, ["logits"], nodes, params, w, labels=["a", "b", "c", "d"])


@pytest.fixture
def pkg(tmp_path):
    return save_package(tiny_graph(), tmp_path / "tiny")


def edit_json(pkg, fn):
    doc = json.loads((pkg / "model.json").read_text())
    fn(doc)
    (pkg / "model.json").write_text(json.dumps(doc))


def edit_weights(pkg, fn):
    with np.load(pkg / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    np.savez(pkg / "weights.npz", **arrays)


def node(doc, name):
    return next(n for n in doc["nodes"] if n["name"] == name)


def test_round_trip_is_exact(pkg):
    g = load_package(pkg)
    ref = tiny_graph()
    assert g.to_json() == json.loads(json.dumps(ref.to_json()))
    for k, v in ref.weights.items():
        assert g.weights[k].dtype == np.float32 and np.array_equal(g.weights[k], v)
    assert g.param_groups() == ["conv", "bn", "fc"]
    assert g.num_params() == 6 * 27 + 12 + 4 * 6 + 4
    assert g.infer_shapes(batch=5)["logits"] == (5, 4)
    assert g.infer_shapes(batch=1)["t0"] == (1, 6, 8, 8)


JSON_CASES = {
    "unknown op": (lambda d: node(d, "relu").update(op="Swishy"), "node 'relu': field 'op': unknown op 'Swishy'"),
    "bad attribute": (lambda d: node(d, "conv")["attrs"].update(stride=[0, 1]), "node 'conv' (Conv2d): attrs.stride"),
    "wrong attribute type": (lambda d: node(d, "conv")["attrs"].update(groups="two"), "attrs.groups"),
    "missing attribute": (lambda d: node(d, "conv")["attrs"].pop("kernel"), "node 'conv' (Conv2d): attrs.kernel: missing"),
    "unknown attribute": (lambda d: node(d, "relu")["attrs"].update(slope=0.1), "attrs.slope: unknown attribute"),
    "dangling input": (lambda d: node(d, "relu")["inputs"].__setitem__(0, "nowhere"), "node 'relu': input 'nowhere' is dangling"),
    "cycle": (lambda d: node(d, "bn")["inputs"].__setitem__(0, "t2"), "cycle: bn -> relu -> bn"),
    "future format": (lambda d: d.update(format=99), "package format 99 is newer"),
    "misshaped weight in both files": (None, "node 'conv' (Conv2d): input 'weight' ('conv.weight')"),
    "param shape disagrees with npz": (lambda d: d["params"]["fc.bias"].update(shape=[5]), "param 'fc.bias': weights.npz holds shape (4,)"),
    "unknown node field": (lambda d: node(d, "gap").update(colour="red"), "unknown field 'colour'"),
    "missing output": (lambda d: d.update(outputs=["nope"]), "output 'nope' is not produced"),
    "buffer marked trainable": (lambda d: d["params"]["bn.running_var"].update(trainable=True), "must have \"trainable\": false"),
    "weight not a param": (lambda d: d["params"].pop("fc.weight"), "input 'weight' ('fc.weight') must be a param"),
    "too many inputs": (lambda d: node(d, "relu")["inputs"].append("t0"), "field 'inputs' has 2 tensors"),
    "bad preprocess": (lambda d: d["inputs"][0]["preprocess"].update(std=[1, 0, 1]), "field 'std' must be positive"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_malformed_model_json(pkg, case):
    fn, msg = JSON_CASES[case]
    if fn is None:  # conv weight (6,3,3,3) -> (6,3,2,2) consistently in model.json and weights.npz
        edit_json(pkg, lambda d: d["params"]["conv.weight"].update(shape=[6, 3, 2, 2]))
        edit_weights(pkg, lambda a: a.update({"conv.weight": np.zeros((6, 3, 2, 2), np.float32)}))
    else:
        edit_json(pkg, fn)
    with pytest.raises(PackageError) as e:
        load_package(pkg)
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


WEIGHT_CASES = {
    "missing weight": (lambda a: a.pop("bn.bias"), "param 'bn.bias': missing from weights.npz"),
    "extra weight": (lambda a: a.update(stray=np.zeros(3, np.float32)), "array 'stray' is not listed"),
    "wrong dtype": (lambda a: a.update({"fc.weight": a["fc.weight"].astype(np.float64)}), "holds dtype float64"),
    "misshaped weight": (lambda a: a.update({"fc.weight": np.zeros((4, 7), np.float32)}), "holds shape (4, 7)"),
    "non-finite": (lambda a: a["conv.weight"].__setitem__((0, 0, 0, 0), np.nan), "1 non-finite value(s)"),
    "object array": (lambda a: a.update({"fc.bias": np.array([{"x": 1}, None, 3, 4], dtype=object)}), "holds Python objects"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_malformed_weights(pkg, case):
    fn, msg = WEIGHT_CASES[case]
    with np.load(pkg / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    np.savez(pkg / "weights.npz", **arrays)  # object arrays are pickled by savez: we must refuse them
    with pytest.raises(PackageError) as e:
        load_package(pkg)
    assert msg in str(e.value)


def test_corrupt_files(pkg, tmp_path):
    (pkg / "model.json").write_text('{"format": 1,')
    with pytest.raises(PackageError, match="invalid JSON at line 1"):
        load_package(pkg)
    good = save_package(tiny_graph(), tmp_path / "again")
    (good / "weights.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PackageError, match="not a valid npz archive"):
        load_package(good)
    with pytest.raises(PackageError, match="not a model package directory"):
        load_package(tmp_path / "missing")
    (good / "model.json").unlink()
    with pytest.raises(PackageError, match="missing model.json"):
        load_package(good)


def test_save_refuses_invalid_graph(tmp_path):
    g = tiny_graph()
    g.weights["fc.bias"] = np.full(4, np.inf, np.float32)
    with pytest.raises(PackageError, match="non-finite"):
        save_package(g, tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.json").exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create a file
        return (open, (self.path, "w"))


def test_npz_members_are_never_unpickled(pkg, tmp_path):
    """A pickle payload inside the npz must be refused, not executed."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(str(marker))], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(pkg / "weights.npz", "a") as z:
        z.writestr("evil.npy", buf.getvalue())
    with pytest.raises(PackageError, match="array 'evil' holds Python objects"):
        load_package(pkg)
    assert not marker.exists()


def test_cli_inspect_reports_one_line_error(pkg):
    edit_json(pkg, lambda d: node(d, "relu").update(op="Swishy"))
    r = subprocess.run([sys.executable, "-m", "thomas_cli", "inspect", str(pkg)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "unknown op 'Swishy'" in lines[0], r.stderr


def test_cli_inspect_table(pkg):
    r = subprocess.run([sys.executable, "-m", "thomas_cli", "inspect", str(pkg), "--json", "--batch", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["params"] == 6 * 27 + 12 + 28
    assert [l["op"] for l in doc["layers"]] == ["Conv2d", "BatchNorm", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert doc["layers"][0]["flops"] == 2 * 2 * 6 * 8 * 8 * 27
    assert doc["layers"][-1]["output"] == [2, 4]
