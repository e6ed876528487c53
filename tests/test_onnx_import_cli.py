"""`thomas import` end to end on what real exporters write (python -m thomas_cli in a subprocess):

  * exporter-style scalars: constants of shape () and (1,), as initializers and as Constant nodes,
    in Add/Sub/Mul/Div/Pow and Clip min/max; imported, then `thomas --device local infer` (equal to
    the numpy engine on the package as loaded) and 3 fine-tune steps of `--layers all` on a tiny npz;
  * normalization: --mean/--std/--scale and the presets, recorded in model.json, printed by
    `thomas inspect`, applied by infer; bad values one line;
  * hostile files and shapes: one line, exit 1, nothing written, no traceback.
Every package left under tmp_path (the import, the device's models/, the run's final/) is checked
by the round-trip property (onnx_helpers.packages_round_trip)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from device_agent.model.graph import load_package
from device_agent.infer import infer_package
from onnx_helpers import init, model, node, packages_round_trip, save, fails, thomas  # noqa: F401

RNG = np.random.default_rng(0)



# =============================================================================== exporter-style scalars
def _scalar_model(as_constant_nodes: bool):
    """conv -> every elementwise op with a scalar operand, twice (once (), once (1,)) -> GAP -> gemm.
    The hard-swish of TF/Keras exports is in there: x * clip(x + 3, 0, 6) / 6."""
    nodes, inits = [], []

    def scalar(name, shape, v):
        arr = np.full(shape, v, np.float32)
        if as_constant_nodes:
            nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                          value=helper.make_tensor(name, TensorProto.FLOAT, list(shape),
                                                                   arr.ravel().tolist())))
        else:
            inits.append(init(name, arr))
        return name

    nodes.append(node("Conv", ["x", "w", "b"], ["t"], pads=[1, 1, 1, 1]))
    inits += [init("w", (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)),
              init("b", np.zeros(4, np.float32))]
    cur = "t"
    for k, shape in enumerate([(), (1,)]):
        ops = [("Add", cur, scalar(f"three{k}", shape, 3.0)), ("Clip", None, None),
               ("Mul", cur, None), ("Div", None, scalar(f"six{k}", shape, 6.0)),
               ("Sub", scalar(f"half{k}", shape, 0.5), None), ("Pow", None, scalar(f"two{k}", shape, 2.0)),
               ("Mul", None, scalar(f"k{k}", shape, 0.5)), ("Add", None, scalar(f"one{k}", shape, 1.0)),
               ("Div", f"one{k}", None)]                       # 1 / (0.5 (0.5 - hswish(x))^2 + 1)
        prev = cur
        for j, (op, a, b) in enumerate(ops):
            out = f"s{k}_{j}"
            if op == "Clip":
                ins = [prev, scalar(f"lo{k}", shape, 0.0), scalar(f"hi{k}", shape, 6.0)]
            elif op == "Mul" and a == cur and b is None:
                ins = [cur, prev]                                # x * relu6(x + 3)
            else:
                ins = [a or prev, b or prev]
            nodes.append(node(op, ins, [out]))
            prev = out
        nodes.append(node("Add", [prev, cur], [f"r{k}"]))
        cur = f"r{k}"
    nodes += [node("GlobalAveragePool", [cur], ["g"]), node("Flatten", ["g"], ["f"]),
              node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits += [init("fw", (RNG.standard_normal((10, 4)) * 0.5).astype(np.float32)), init("fb", np.zeros(10, np.float32))]
    return model(nodes, x=("x", [None, 3, 16, 16]), inits=inits, opset=13)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    r = np.random.default_rng(1)
    np.savez(d / "tiny.npz", x_train=r.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), y_train=np.arange(12) % 10,
             x_val=r.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), y_val=np.arange(10))
    return d / "tiny.npz"


@pytest.mark.parametrize("as_constant_nodes", [False, True], ids=["initializers", "constant-nodes"])
def test_exporter_scalars_import_infer_and_finetune(as_constant_nodes, tiny_npz, tmp_path):
    path = save(_scalar_model(as_constant_nodes), tmp_path / "scalars.onnx")
    rep = json.loads(thomas("import", path, "-o", tmp_path / "pkg", "--preprocess", "unit", "--json").stdout)
    assert rep["ok"] and rep["written"] and rep["parity"]["max_rel"] <= 1e-4
    g = load_package(tmp_path / "pkg")                  # exactly the agent's loader
    shapes = sorted({p.shape for p in g.params.values() if not p.trainable})
    assert shapes == [(), (1,)]                          # declared as stored, both forms kept
    assert {"Add", "Sub", "Mul", "Div", "Clip"} <= {n.op for n in g.nodes}
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    thomas("infer", tmp_path / "pkg", "--input", tmp_path / "x.npy", "--output", tmp_path / "logits.npy", "--json")
    assert np.allclose(np.load(tmp_path / "logits.npy"), infer_package(g, x), rtol=1e-4, atol=1e-5)
    p = thomas("finetune", tmp_path / "pkg", "--data", tiny_npz, "--epochs", "1", "--batch", "4", "--layers", "all",
               "--json")
    evs = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    steps = [e for e in evs if e["ev"] == "step"]
    assert len(steps) == 3 and all(np.isfinite(e["loss"]) for e in steps)
    assert evs[-1]["ev"] == "done"


# =============================================================================== normalization
@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    nodes = [node("Conv", ["x", "w"], ["c"]), node("GlobalAveragePool", ["c"], ["g"]), node("Flatten", ["g"], ["y"])]
    w = (RNG.standard_normal((5, 3, 3, 3)) * 0.3).astype(np.float32)
    gray = [node("Conv", ["x", "w1"], ["c"]), node("GlobalAveragePool", ["c"], ["g"]), node("Flatten", ["g"], ["y"])]
    save(model(gray, x=("x", [None, 1, 8, 8]), inits=[init("w1", w[:, :1])]), d / "gray.onnx")
    return save(model(nodes, x=("x", [None, 3, 8, 8]), inits=[init("w", w)]), d / "conv.onnx")


def test_mean_std_scale_recorded_printed_and_applied(conv_onnx, tmp_path):
    thomas("import", conv_onnx, "-o", tmp_path / "a", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.5",
           "--scale", "1/255")
    pre = load_package(tmp_path / "a").inputs[0].preprocess
    assert pre == {"scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}
    p = thomas("inspect", tmp_path / "a")
    assert "preprocess: x = (pixel / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]" in p.stdout
    assert json.loads(thomas("inspect", tmp_path / "a", "--json").stdout)["inputs"][0]["preprocess"] == pre
    # infer applies it: uint8 images == the float formula given as preprocessed input
    u8 = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    thomas("infer", tmp_path / "a", "--input", tmp_path / "u8.npy", "--output", tmp_path / "l.npy")
    want = (u8.astype(np.float64) / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]
    ref = infer_package(load_package(tmp_path / "a"), want.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.allclose(np.load(tmp_path / "l.npy"), ref, rtol=1e-4, atol=1e-5)


def test_one_value_means_every_channel_and_presets(conv_onnx, tmp_path):
    thomas("import", conv_onnx, "-o", tmp_path / "one", "--mean", "0.5", "--std", "0.5")
    thomas("import", conv_onnx, "-o", tmp_path / "signed", "--preprocess", "signed")
    thomas("import", conv_onnx, "-o", tmp_path / "float", "--mean", "127.5", "--std", "127.5", "--scale", "1")
    a, b = (load_package(tmp_path / k).inputs[0].preprocess for k in ("one", "signed"))
    assert a == b == {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert load_package(tmp_path / "float").inputs[0].preprocess == {"scale": 1.0, "mean": [127.5] * 3,
                                                                     "std": [127.5] * 3}
    thomas("import", conv_onnx.parent / "gray.onnx", "-o", tmp_path / "gray", "--mean", "0.1307", "--std", "0.3081")
    assert load_package(tmp_path / "gray").inputs[0].preprocess["mean"] == [0.1307]
    thomas("import", conv_onnx, "-o", tmp_path / "unit", "--preprocess", "unit")
    assert load_package(tmp_path / "unit").inputs[0].preprocess == {"scale": 1 / 255}


@pytest.mark.parametrize("args,match", [
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5': 2 values for a model input of 3 channels (give 1 or 3)"),
    (["--std", "0.5,0,0.5"], "--std '0.5,0,0.5': every std must be > 0"),
    (["--std", "-1"], "--std '-1': every std must be > 0"),
    (["--mean", "a,b,c"], "--mean 'a,b,c': give comma-separated numbers"),
    (["--mean", "nan"], "--mean 'nan': give finite numbers"),
    (["--scale", "abc"], "--scale 'abc': give a number or a fraction, e.g. 1/255"),
    (["--scale", "1/0"], "--scale '1/0'"),
    (["--scale", "0"], "--scale '0': must be a positive finite number"),
    (["--preprocess", "imagenet", "--mean", "0.5"], "--preprocess is a preset: give it, or --mean/--std/--scale"),
    (["--preprocess", "caffe"], "--preprocess 'caffe': known: imagenet, unit, signed"),
])
def test_bad_normalization_is_one_line(args, match, conv_onnx, tmp_path):
    fails("import", conv_onnx, "-o", tmp_path / "o", *args, match=match)
    assert not (tmp_path / "o").exists()


def test_imagenet_preset_needs_three_channels(conv_onnx, tmp_path):
    fails("import", conv_onnx.parent / "gray.onnx", "-o", tmp_path / "o", "--preprocess", "imagenet",
          match="--preprocess imagenet needs a 3-channel input; this model has 1 channel(s)")
    fails("import", conv_onnx.parent / "gray.onnx", "-o", tmp_path / "o", "--std", "0.5,0.5,0.5",
          match="3 values for a model input of 1 channels")


# =============================================================================== hostile files
def test_hostile_files_are_one_line(conv_onnx, tmp_path):
    big = save(model([node("Relu", ["x"], ["y"])], x=("x", [1, 3, 10 ** 9, 10 ** 9])), tmp_path / "big.onnx")
    fails("import", big, "-o", tmp_path / "o", match="an input of 1x3x1000000000x1000000000 (the parity batch) "
                                                     "needs about")
    fails("import", conv_onnx, "-o", tmp_path / "o", "--input-shape", "1,3,100000,100000",
          match="pass a smaller --input-shape")
    m = model([node("Relu", ["x"], ["y"])])
    del m.graph.output[:]
    fails("import", save(m, tmp_path / "noout.onnx"), "-o", tmp_path / "o", match="the graph declares no outputs")
    s = helper.make_tensor("s", TensorProto.STRING, [1], [b"hello"])
    fails("import", save(model([node("Relu", ["x"], ["y"])], inits=[s]), tmp_path / "str.onnx"), "-o",
          tmp_path / "o", match="tensor 's' holds STRING data")
    bad = save(model([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1])]), tmp_path / "attr.onnx")
    fails("import", bad, "-o", tmp_path / "o", match="attribute 'pads' must be a list of 4 integers, got [1, 1]")
    assert not (tmp_path / "o").exists()
