"""`thomas import / export / infer` through the real CLI (`python -m thomas_cli` in a subprocess):
the parity report, --json, --force, run folders, image and array inputs, and every bad input
as one line on stderr with exit code 1 and no traceback."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from device_agent.model.graph import load_package, save_package
from device_agent.infer import infer_package
from onnx_helpers import check_round_trip, init, model, node, packages_round_trip, save, fails, thomas  # noqa: F401

RNG = np.random.default_rng(0)



def _net(opset=13, dims=(None, 3, 16, 16)):
    """conv -> relu -> maxpool -> flatten (via a shape sub-graph) -> gemm: 7 classes."""
    w = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    fw = (RNG.standard_normal((7, 8 * 8 * 8)) * 0.05).astype(np.float32)
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Shape", ["p"], ["s"]), node("Gather", ["s", "i0"], ["n"], axis=0),
             node("Unsqueeze", ["n", "ax"], ["n1"]), node("Concat", ["n1", "m1"], ["shape"], axis=0),
             node("Reshape", ["p", "shape"], ["f"]), node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = [init("w", w), init("b", RNG.standard_normal(8).astype(np.float32) * 0.1), init("fw", fw),
             init("fb", np.zeros(7, np.float32)), init("i0", np.array(0, np.int64)),
             init("ax", np.array([0], np.int64)), init("m1", np.array([-1], np.int64))]
    return model(nodes, x=("x", list(dims)), opset=opset, inits=inits)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    path = save(_net(), d / "net.onnx")
    (d / "labels.txt").write_text("\n".join(f"class {c}" for c in "abcdefg") + "\n")
    return path


@pytest.fixture(scope="module")
def pkg(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "net"
    p = thomas("import", net, "-o", out, "--labels", net.parent / "labels.txt", "--preprocess", "imagenet",
               "--json")
    return out, json.loads(p.stdout)


# =============================================================================== import
def test_import_writes_a_package_with_parity_report(pkg):
    out, rep = pkg
    assert rep["ok"] and rep["written"] and rep["package"] == str(out)
    assert rep["parity"]["max_rel"] <= 1e-4 and rep["parity"]["max_abs"] >= 0 and rep["parity"]["batch"] == 2
    assert rep["ops"] == {"Conv2d": 1, "Relu": 1, "MaxPool": 1, "Reshape": 1, "Gemm": 1}
    g = load_package(out)
    assert g.labels == [f"class {c}" for c in "abcdefg"] and g.name == "net"
    assert g.inputs[0].shape == (None, 3, 16, 16) and g.inputs[0].preprocess["std"] == [0.229, 0.224, 0.225]
    assert g.meta["parity"]["max_rel"] == rep["parity"]["max_rel"]
    assert [p.trainable for p in g.params.values()] == [True] * 4
    assert check_round_trip(out, out.parent / "again") == 4


def test_import_human_output_and_input_shape(net, tmp_path):
    p = thomas("import", net, "-o", tmp_path / "p", "--name", "tiny", "--input-shape", "4,3,16,16")
    assert "max abs" in p.stdout and "max rel" in p.stdout and "ok" in p.stdout
    assert "batch 4" in p.stdout
    assert load_package(tmp_path / "p").name == "tiny"


def test_parity_above_tolerance_fails_unless_forced(net, pkg, tmp_path):
    rel = pkg[1]["parity"]["max_rel"]
    assert rel > 0                       # numpy and onnxruntime round differently on this net
    tol = f"{rel / 10:.3e}"
    line = fails("import", net, "-o", tmp_path / "no", "--tolerance", tol, match="parity check failed")
    assert "package not written (use --force" in line and not (tmp_path / "no").exists()
    p = thomas("import", net, "-o", tmp_path / "yes", "--tolerance", tol, "--force", "--json")
    assert json.loads(p.stdout)["ok"] is False and "warning" in p.stderr
    load_package(tmp_path / "yes")


def test_import_errors(net, tmp_path):
    fails("import", tmp_path / "missing.onnx", "-o", tmp_path / "o", match="missing.onnx: no such file")
    (tmp_path / "garbage.onnx").write_bytes(bytes(RNG.integers(0, 256, 5000, dtype=np.uint8)))
    fails("import", tmp_path / "garbage.onnx", "-o", tmp_path / "o", match="garbage.onnx: not")
    data = net.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    fails("import", tmp_path / "trunc.onnx", "-o", tmp_path / "o", match="trunc.onnx")
    fails("import", net, "-o", tmp_path / "o", "--input-shape", "1,4,16,16",
          match="does not fit input shape 1x4x16x16: input 'weight' has shape (8, 3, 3, 3), expected (8, 4, 3, 3)")
    fails("import", net, "-o", tmp_path / "o", "--input-shape", "1,3,20,20",
          match="does not fit input shape 1x3x20x20")
    fails("import", net, "-o", tmp_path / "o", "--input-shape", "3,16,16", match="has rank 3")
    fails("import", net, "-o", tmp_path / "o", "--input-shape", "1,3,big,16", match="--input-shape")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    fails("import", net, "-o", tmp_path / "o", "--labels", tmp_path / "three.txt",
          match="3 labels given, but output 'y' has 7 classes")
    assert not (tmp_path / "o").exists()


def test_import_lists_every_unsupported_op(tmp_path):
    nodes = [node("Transpose", ["x"], ["t"], name="tp", perm=[1, 0, 2, 3]), node("Tanh", ["t"], ["a"], name="th_a"),
             node("Tanh", ["a"], ["b"], name="th_b"), node("Erf", ["b"], ["c"], name="erf"),
             node("Relu", ["c"], ["y"])]
    path = save(model(nodes), tmp_path / "u.onnx")
    line = fails("import", path, "-o", tmp_path / "o", match="4 node(s) use ops THOMAS cannot import")
    for part in ("Tanh ×2 (first: 'th_a')", "Transpose that moves the batch axis ×1 (first: 'tp')",
                 "Erf ×1 (first: 'erf')"):
        assert part in line


def test_import_refuses_external_data_outside_the_folder(tmp_path):
    m = _net(dims=(1, 3, 16, 16))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("length", "864")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "secret.bin").write_bytes(b"\0" * 864)
    path = save(m, tmp_path / "model" / "net.onnx")
    fails("import", path, "-o", tmp_path / "o", match="external data path '../secret.bin' escapes the model's folder")


# =============================================================================== export
def test_export_package_and_run(pkg, tmp_path):
    out, _ = pkg
    p = thomas("export", out, "-o", tmp_path / "a.onnx", "--opset", "11", "--json")
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["opset"] == 11 and rep["parity"]["max_rel"] <= 1e-4
    onnx.checker.check_model(onnx.load(str(tmp_path / "a.onnx")))
    # a run: <run>/final/ holds the fine-tuned package
    g = load_package(out)
    for k in g.params:
        g.weights[k] = (g.weights[k] * 1.1 + 0.01).astype(np.float32)
    save_package(g, tmp_path / "run1" / "final")
    (tmp_path / "run1" / "job.json").write_text("{}")
    p = thomas("export", tmp_path / "run1", "-o", tmp_path / "tuned.onnx")
    assert "max rel" in p.stdout and str(tmp_path / "run1" / "final") in p.stdout
    import onnxruntime as ort

    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    s = ort.InferenceSession(str(tmp_path / "tuned.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(s.run(None, {"x": x})[0], infer_package(g, x), rtol=1e-4, atol=1e-5)


def test_export_errors(pkg, tmp_path):
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "events.jsonl").write_text("")
    fails("export", tmp_path / "run2", "-o", tmp_path / "x.onnx", match="the run has no final/ package")
    fails("export", tmp_path / "nothing", "-o", tmp_path / "x.onnx", match="no such package, run folder or run id")
    fails("export", pkg[0], "-o", tmp_path / "x.onnx", "--opset", "5", match="exports opsets 7..21")


# =============================================================================== infer
def test_infer_arrays_images_and_folders(pkg, tmp_path):
    out, _ = pkg
    g = load_package(out)
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    p = thomas("infer", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "logits.npy", "--top", "3",
               "--json")
    rep = json.loads(p.stdout)
    logits = np.load(tmp_path / "logits.npy")
    # NOTE: the device runs its auto backend (OpenCL where there is a device): float32 sums in another order
    assert logits.shape == (3, 7) and np.allclose(logits, infer_package(g, x), rtol=1e-4, atol=1e-5)
    assert [r["input"] for r in rep["results"]] == ["x.npy[0]", "x.npy[1]", "x.npy[2]"]
    top = rep["results"][0]["top"]
    assert len(top) == 3 and top[0]["index"] == int(np.argmax(logits[0]))
    assert top[0]["label"] == g.labels[top[0]["index"]] and top[0]["prob"] >= top[1]["prob"]
    assert rep["throughput"]["samples"] == 3 and rep["throughput"]["samples_per_s"] > 0

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, size in enumerate([(16, 16), (40, 30), (9, 21)]):
        Image.fromarray(RNG.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "notes.txt").write_text("not an image")
    p = thomas("infer", out, "--input", imgs, "--json")
    rep = json.loads(p.stdout)
    assert [r["input"] for r in rep["results"]] == ["0.png", "1.png", "2.png"] and len(rep["results"][0]["top"]) == 5
    # the folder's first image equals the same pixels given as a uint8 .npy (preprocessing applied once)
    u8 = np.asarray(Image.open(imgs / "0.png"))
    np.save(tmp_path / "u8.npy", u8)
    one = json.loads(thomas("infer", out, "--input", tmp_path / "u8.npy", "--json").stdout)
    a, b = one["results"][0]["top"], rep["results"][0]["top"]
    assert [e["index"] for e in a] == [e["index"] for e in b]
    assert np.allclose([e["logit"] for e in a], [e["logit"] for e in b], rtol=1e-5, atol=1e-6)
    p = thomas("infer", out, "--input", imgs / "1.png")
    assert "1.png" in p.stdout and "inputs/s" in p.stdout and "class " in p.stdout


def test_infer_errors(pkg, tmp_path):
    out, _ = pkg
    fails("infer", out, "--input", tmp_path / "none.png", match="none.png: no such file or folder")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    fails("infer", out, "--input", tmp_path / "bad.png", match="bad.png")
    (tmp_path / "junk.jpg").write_bytes(bytes(range(256)))
    fails("infer", out, "--input", tmp_path / "junk.jpg", match="junk.jpg: not an image Pillow can read")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.float32))
    fails("infer", out, "--input", tmp_path / "wrong.npy", match="does not fit the model input Nx3x16x16")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    fails("infer", out, "--input", tmp_path / "broken.npy", match="broken.npy")
    (tmp_path / "empty").mkdir()
    fails("infer", out, "--input", tmp_path / "empty", match="no images in the folder")
    fails("infer", tmp_path / "nopkg", "--input", tmp_path / "wrong.npy", match="no such package")
