"""Seeded hostile inputs for tests/test_fuzz.py, one generator per input kind.

Each generator yields Case(label, argv, expect, check): `argv` is the `thomas` command after the
global device options; `expect` the exit codes that count as a clean refusal (some random mutations
may still be valid input: their case also accepts 0, and `check` then verifies what was written).
Every file a case needs is written under `work` (a fresh folder of the case's kind).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REFUSE = (1, 2)


@dataclass
class Case:
    label: str
    argv: list
    expect: tuple = REFUSE
    check: Callable | None = None        # called with the case's work folder after an exit 0
    env: dict = field(default_factory=dict)


# ============================================================================ building blocks
def tiny_onnx(opset: int = 13):
    """Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->3): a valid 8x8 classifier."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph(nodes, "tiny", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def npy_bytes(arr) -> bytes:
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=True)
    return b.getvalue()


def npy_header_bytes(shape, dtype="<f4") -> bytes:
    """An .npy member whose header declares `shape` but holds 16 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16


def write_npz(path: Path, members: dict) -> Path:
    """An npz whose members are raw bytes (crafted headers) or arrays (saved with pickle allowed)."""
    with zipfile.ZipFile(path, "w") as z:
        for k, v in members.items():
            z.writestr(k + ".npy", v if isinstance(v, bytes) else npy_bytes(v))
    return path


def deep_json(depth: int, kind: str = "[") -> str:
    close = "]" if kind == "[" else "}"
    if kind == "[":
        return "[" * depth + close * depth
    return '{"a":' * depth + "1" + close * depth


def mutate(data: bytes, rng, flips: int) -> bytes:
    b = bytearray(data)
    for _ in range(flips):
        b[int(rng.integers(len(b)))] = int(rng.integers(256))
    return bytes(b)


# ============================================================================ import
def import_cases(work: Path, seed: int) -> list[Case]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    good = tiny_onnx()
    raw = good.SerializeToString()
    cases: list[Case] = []

    def file(name: str, data: bytes) -> Path:
        p = work / name
        p.write_bytes(data)
        return p

    def imp(label, path, *extra, expect=REFUSE):
        out = work / f"out-{label}"
        cases.append(Case(f"import:{label}", ["import", path, "-o", out, *extra], expect,
                          check=lambda _w, out=out: _loads_package(out)))

    imp("empty", file("empty.onnx", b""))
    imp("text", file("text.onnx", b"this is not a protobuf at all\n" * 3))
    for i, cut in enumerate(np.linspace(8, len(raw) - 8, 6).astype(int)):
        imp(f"truncated{i}", file(f"trunc{i}.onnx", raw[:cut]))
    for i in range(12):   # random byte flips: may still parse; then whatever was written must load
        imp(f"flip{i}", file(f"flip{i}.onnx", mutate(raw, rng, 1 + i)), expect=(0, 1, 2))

    def variant(label, edit, *extra):
        m = onnx.ModelProto()
        m.CopyFrom(good)
        edit(m)
        imp(label, file(f"{label}.onnx", m.SerializeToString()), *extra)

    variant("no-outputs", lambda m: m.graph.ClearField("output"))
    variant("no-inputs", lambda m: m.graph.ClearField("input"))
    variant("no-nodes", lambda m: m.graph.ClearField("node"))
    variant("huge-dims", lambda m: [d.ClearField("dim_param") or setattr(d, "dim_value", 10**9)
                                    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]])
    variant("negative-dim", lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[2], "dim_value", -5))
    variant("string-init", lambda m: m.graph.initializer[0].CopyFrom(
        helper.make_tensor("w", TensorProto.STRING, [1], [b"abc"])))
    variant("int-weight", lambda m: m.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int64), "w")))
    variant("short-raw", lambda m: setattr(m.graph.initializer[0], "raw_data", b"\0" * 7))
    variant("missing-init", lambda m: m.graph.initializer.pop(0))
    variant("weight-rank3", lambda m: m.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.ones((4, 3, 3), np.float32), "w")))
    variant("gemm-mismatch", lambda m: m.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(np.ones((3, 7), np.float32), "fw")))
    variant("unknown-op", lambda m: setattr(m.graph.node[1], "op_type", "FrobnicateV9"))
    variant("custom-domain", lambda m: setattr(m.graph.node[1], "domain", "com.example"))
    variant("bad-attr-type", lambda m: m.graph.node[0].attribute.append(
        helper.make_attribute("kernel_shape", "three")))
    variant("bad-pads", lambda m: m.graph.node[0].attribute.append(helper.make_attribute("strides", [0, 0])))
    variant("cycle", lambda m: m.graph.node[0].input.__setitem__(0, "y"))
    variant("dangling-input", lambda m: m.graph.node[1].input.__setitem__(0, "nowhere"))
    variant("opset-1", lambda m: setattr(m.opset_import[0], "version", 1))
    variant("opset-999", lambda m: setattr(m.opset_import[0], "version", 999))
    variant("int-input", lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", TensorProto.INT64))
    variant("two-inputs", lambda m: m.graph.input.append(
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 3, 8, 8])))

    def ext(m, where):
        t = m.graph.initializer[0]
        t.ClearField("float_data")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.append(onnx.StringStringEntryProto(key="location", value=where))
    variant("ext-outside", lambda m: ext(m, "../../../etc/passwd"))
    variant("ext-absolute", lambda m: ext(m, "/etc/passwd"))
    variant("ext-missing", lambda m: ext(m, "weights.bin"))

    ok = file("good.onnx", raw)
    for shape in ["1,3,100000,100000", "abc", "1,3,0,5", "-5,3,8,8", "1,3,8", "1,3,8,8,8", "1,3,1e9,8",
                  "99999999999,3,8,8"]:
        imp(f"shape[{shape}]", ok, "--input-shape", shape)
    for tol in ["-1", "nan", "0", "abc"]:
        imp(f"tol[{tol}]", ok, "--tolerance", tol)
    imp("labels-missing", ok, "--labels", work / "nope.txt")
    imp("labels-count", ok, "--labels", file("labels2.txt", b"a\nb\n"))
    imp("labels-deep", ok, "--labels", file("labels.json", deep_json(200_000).encode()))
    imp("labels-binary", ok, "--labels", file("labels.bin", bytes(range(256)) * 4))
    imp("preprocess-bogus", ok, "--preprocess", "bogus")
    cases.append(Case("import:out-is-file", ["import", ok, "-o", file("afile", b"x")]))
    imp("missing-file", work / "missing.onnx")
    imp("a-directory", work)
    return cases


def _loads_package(out: Path) -> None:
    """After an exit 0: what import wrote must be a package the agent loads."""
    from device_agent.model.graph import load_package

    if out.exists():
        load_package(out)


# ============================================================================ packages (inspect, push-model)
def package_cases(work: Path, good_pkg: Path, seed: int) -> list[tuple[str, Path]]:
    """(label, package dir) pairs, each a corruption of `good_pkg`."""
    import shutil

    rng = np.random.default_rng(seed)
    doc = json.loads((good_pkg / "model.json").read_text())
    weights_raw = (good_pkg / "weights.npz").read_bytes()
    with np.load(good_pkg / "weights.npz", allow_pickle=False) as z:
        weights = {k: z[k] for k in z.files}
    out: list[tuple[str, Path]] = []

    def pkg(label: str, model_json: str | None = None, npz: bytes | None = None) -> None:
        d = work / f"pkg-{label}"
        shutil.copytree(good_pkg, d)
        if model_json is not None:
            (d / "model.json").write_text(model_json)
        if npz is not None:
            (d / "weights.npz").write_bytes(npz)
        out.append((label, d))

    def jdoc(label: str, edit) -> None:
        dd = json.loads(json.dumps(doc))
        edit(dd)
        pkg(label, json.dumps(dd))

    pkg("json-garbage", "{not json")
    pkg("json-empty", "")
    pkg("json-list", "[]")
    pkg("json-deep-list", deep_json(200_000))
    pkg("json-deep-dict", deep_json(100_000, "{"))
    pkg("json-binary", bytes(range(256)).decode("latin-1"))
    first_p = next(iter(doc["params"]))
    first_n = doc["nodes"][0]
    jdoc("no-nodes", lambda d: d.pop("nodes"))
    jdoc("nodes-not-list", lambda d: d.__setitem__("nodes", {"a": 1}))
    jdoc("no-params", lambda d: d.pop("params"))
    jdoc("no-inputs", lambda d: d.__setitem__("inputs", []))
    jdoc("no-outputs", lambda d: d.__setitem__("outputs", []))
    jdoc("unknown-output", lambda d: d.__setitem__("outputs", ["nowhere"]))
    jdoc("format-999", lambda d: d.__setitem__("format", 999))
    jdoc("format-str", lambda d: d.__setitem__("format", "one"))
    jdoc("unknown-op", lambda d: d["nodes"][0].__setitem__("op", "Frobnicate"))
    jdoc("op-not-str", lambda d: d["nodes"][0].__setitem__("op", 7))
    jdoc("attr-wrong-type", lambda d: d["nodes"][0]["attrs"].__setitem__(
        next(iter(first_n.get("attrs") or {"kernel": 0})), "big"))
    jdoc("attr-unknown", lambda d: d["nodes"][0].setdefault("attrs", {}).__setitem__("bogus", 1))
    jdoc("dup-node", lambda d: d["nodes"].append(dict(d["nodes"][0])))
    jdoc("cycle", lambda d: d["nodes"][0].__setitem__("inputs", [d["outputs"][0]] + d["nodes"][0]["inputs"][1:]))
    jdoc("input-huge", lambda d: d["inputs"][0].__setitem__("shape", [None, 3, 10**9, 10**9]))
    jdoc("input-negative", lambda d: d["inputs"][0].__setitem__("shape", [None, 3, -8, 8]))
    jdoc("input-float-dim", lambda d: d["inputs"][0].__setitem__("shape", [None, 3, 8.5, 8]))
    jdoc("input-rank2", lambda d: d["inputs"][0].__setitem__("shape", [None, 3]))
    jdoc("param-shape", lambda d: d["params"][first_p].__setitem__("shape", [7, 7]))
    jdoc("param-dtype", lambda d: d["params"][first_p].__setitem__("dtype", "object"))
    jdoc("param-missing", lambda d: d["params"].pop(first_p))
    jdoc("param-extra", lambda d: d["params"].__setitem__("ghost", dict(d["params"][first_p])))
    jdoc("labels-count", lambda d: d.__setitem__("labels", ["a"]))
    jdoc("labels-type", lambda d: d.__setitem__("labels", [1, {"a": 2}, None]))
    jdoc("preprocess-std0", lambda d: d["inputs"][0].__setitem__("preprocess", {"std": [0, 0, 0], "mean": [0, 0, 0]}))
    jdoc("preprocess-bad", lambda d: d["inputs"][0].__setitem__("preprocess", "imagenet"))
    jdoc("name-path", lambda d: d.__setitem__("name", "../../etc"))
    jdoc("inputs-not-list", lambda d: d.__setitem__("inputs", "x"))
    pkg("npz-garbage", npz=b"PK\x03\x04 garbage")
    pkg("npz-empty", npz=b"")
    pkg("npz-truncated", npz=weights_raw[: len(weights_raw) // 2])
    pkg("npz-flipped", npz=mutate(weights_raw, rng, 20))
    pkg("npz-object", npz=_npz_bytes({**weights, first_p: np.array([{"a": 1}], dtype=object)}))
    pkg("npz-huge-header", npz=_npz_raw({**{k: npy_bytes(v) for k, v in weights.items()},
                                          first_p: npy_header_bytes((10**6, 10**6))}))
    pkg("npz-missing-member", npz=_npz_bytes({k: v for k, v in weights.items() if k != first_p}))
    pkg("npz-int", npz=_npz_bytes({**weights, first_p: weights[first_p].astype(np.int64)}))
    pkg("npz-wrong-shape", npz=_npz_bytes({**weights, first_p: np.zeros((2, 2), np.float32)}))
    d = work / "pkg-no-weights"
    shutil.copytree(good_pkg, d)
    (d / "weights.npz").unlink()
    out.append(("no-weights", d))
    d = work / "pkg-weights-dir"
    shutil.copytree(good_pkg, d)
    (d / "weights.npz").unlink()
    (d / "weights.npz").mkdir()
    out.append(("weights-dir", d))
    return out


def _npz_bytes(arrays: dict) -> bytes:
    return _npz_raw({k: npy_bytes(v) for k, v in arrays.items()})


def _npz_raw(members: dict) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for k, v in members.items():
            z.writestr(k + ".npy", v)
    return b.getvalue()


# ============================================================================ push-data
def data_cases(work: Path, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    y = np.arange(12) % 3

    def npz(label, members, *extra):
        p = write_npz(work / f"{label}.npz", members)
        cases.append(Case(f"push-data:{label}", ["push-data", p, "--size", "8", "--name", f"d{len(cases)}", *extra]))

    npz("object-x", {"x": np.array([None] * 12, dtype=object), "y": y})
    npz("object-y", {"x": x, "y": np.array(["a"] * 12, dtype=object)})
    npz("pickled-dict", {"x": np.array([{"k": 1}], dtype=object), "y": y})
    npz("wrong-keys", {"images": x, "targets": y})
    npz("x-rank3", {"x": x[..., 0].reshape(12, 64), "y": y})
    npz("x-rank5", {"x": x[None], "y": y})
    npz("len-mismatch", {"x": x, "y": y[:5]})
    npz("y-float", {"x": x, "y": y + 0.5})
    npz("y-huge", {"x": x, "y": np.where(y == 0, 2**40, y)})
    npz("y-negative", {"x": x, "y": np.where(y == 0, -1, y)})
    npz("y-2d", {"x": x, "y": y[:, None]})
    npz("empty", {"x": x[:0], "y": y[:0]})
    npz("x-nan", {"x": np.full((12, 8, 8, 3), np.nan, np.float32), "y": y})
    npz("x-huge-header", {"x": npy_header_bytes((10**6, 10**6, 3)), "y": y})
    npz("y-huge-header", {"x": x, "y": npy_header_bytes((10**12,), "<i8")})
    npz("mixed-keys", {"x": x, "y": y, "x_train": x, "y_train": y, "x_val": x, "y_val": y})
    npz("train-without-val-y", {"x_train": x, "y_train": y, "x_val": x})
    npz("val-class-missing", {"x_train": x[y < 2], "y_train": y[y < 2], "x_val": x, "y_val": y})
    npz("classes-short", {"x": x, "y": y, "classes": np.array(["a"])})
    npz("classes-object", {"x": x, "y": y, "classes": np.array([{"a": 1}] * 3, dtype=object)})
    (work / "garbage.npz").write_bytes(b"PK\x03\x04 garbage")
    cases.append(Case("push-data:npz-garbage", ["push-data", work / "garbage.npz", "--size", "8"]))
    good = write_npz(work / "good.npz", {"x": x, "y": y})
    (work / "trunc.npz").write_bytes(good.read_bytes()[:300])
    cases.append(Case("push-data:npz-truncated", ["push-data", work / "trunc.npz", "--size", "8"]))
    for s in ["0", "100000", "abc", "64x", "64x0", "-3", "64x100000", "8x8x8", "1e9", ""]:
        cases.append(Case(f"push-data:size[{s}]", ["push-data", good, "--size", s, "--name", f"s{len(cases)}"]))
    for v in ["2", "-1", "nan", "1"]:
        cases.append(Case(f"push-data:val[{v}]", ["push-data", good, "--size", "8", "--val", v]))
    cases.append(Case("push-data:missing", ["push-data", work / "missing", "--size", "8"]))
    cases.append(Case("push-data:name-escape", ["push-data", good, "--size", "8", "--name", "../../evil"]))
    cases.append(Case("push-data:name-slash", ["push-data", good, "--size", "8", "--name", "a/b"]))
    cases += _folder_cases(work, rng)
    return cases


def _folder_cases(work: Path, rng) -> list[Case]:
    from PIL import Image

    cases = []

    def folder(label: str) -> Path:
        d = work / f"folder-{label}"
        d.mkdir()
        return d

    d = folder("empty")
    cases.append(Case("push-data:folder-empty", ["push-data", d, "--size", "8"]))
    d = folder("broken")
    for c in ("a", "b"):
        (d / c).mkdir()
        for i in range(3):
            (d / c / f"{i}.jpg").write_bytes(mutate(b"\xff\xd8\xff\xe0" + bytes(40), rng, 5))
    cases.append(Case("push-data:folder-all-broken", ["push-data", d, "--size", "8"]))
    d = folder("bomb")
    for c in ("a", "b"):
        (d / c).mkdir()
        Image.new("1", (1, 1)).save(d / c / "ok.png")
        Image.new("1", (20000, 12000)).save(d / c / "bomb.png")   # 240 Mpixel, a few KB on disk
    cases.append(Case("push-data:folder-bomb", ["push-data", d, "--size", "8"]))
    d = folder("split-mismatch")
    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for c in classes:
            (d / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / split / c / "0.png")
    cases.append(Case("push-data:folder-split-classes", ["push-data", d, "--size", "8"]))
    d = folder("test-mismatch")
    for split, classes in (("train", ("a", "b")), ("val", ("a", "b")), ("test", ("x",))):
        for c in classes:
            (d / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / split / c / "0.png")
    cases.append(Case("push-data:folder-test-classes", ["push-data", d, "--size", "8"]))
    return cases


# ============================================================================ job fields and job files
def job_cases(work: Path, model: str, data: str, escape: str = "/tmp/thomas-fuzz-escape") -> list[Case]:
    """`escape`: an absolute path outside the device root that no case may create (`escape`-out too)."""
    base = ["finetune", model, "--data", data, "--epochs", "1", "--batch", "4", "--backend", "cpu"]
    cases = []
    sets = [f"cache_dir={json.dumps(escape)}", f"cache_dir={json.dumps('../../../..' + escape)}",
            f"out={json.dumps(escape + '-out')}", "out=\"../../x\"", "data=\"../../../etc\"", "data=\"/etc\"",
            "model=\"/etc\"", "model=\"../../../x\"", "lr=\"abc\"", "lr=null", "lr=1e400", "epochs=0",
            "epochs=-3", "epochs=\"x\"", "epochs=1e30", "batch=0", "batch=1000000000000", "layers=999",
            "layers=\"foo\"", "layers=-1", "optimizer=\"foo\"", "backend=\"foo\"", "seed=\"x\"",
            "bogus_field=1", "noequals", "lr=", "lr={", "momentum=[1,2]", "dtype=\"float8\"",
            "select=\"nope\"", "diverge_factor=-1", "keep_checkpoints=-1", "cache_dir=7",
            "cache_dir=\"a/../../..\"", "lr=" + "[" * 5000 + "]" * 5000]
    for s in sets:
        cases.append(Case(f"job:set[{s[:40]}]", [*base, "--set", s]))
    (work / "deep.json").write_text(deep_json(200_000, "{"))
    (work / "deep-list.json").write_text(deep_json(200_000))
    (work / "notjson.json").write_text("{epochs: 1")
    (work / "list.json").write_text("[1, 2]")
    (work / "types.json").write_text(json.dumps({"epochs": "three", "lr": [1]}))
    (work / "unknown.json").write_text(json.dumps({"frobnicate": True}))
    (work / "escape.json").write_text(json.dumps({"cache_dir": escape}))
    (work / "binary.json").write_bytes(bytes(range(256)))
    for f in ("deep", "deep-list", "notjson", "list", "types", "unknown", "escape", "binary", "missing"):
        cases.append(Case(f"job:file[{f}]", [*base, "--job", work / f"{f}.json"]))
    for r in ("nope", "../../etc", "/etc", ""):
        cases.append(Case(f"job:resume[{r}]", ["finetune", "--resume", r]))
    for bad in (["--epochs", "0"], ["--batch", "-1"], ["--lr", "x"], ["--layers", "many"], ["--init", "magic"]):
        cases.append(Case(f"job:opt{bad}", [*base, *bad]))
    cases.append(Case("job:unknown-model", ["finetune", "no-such-model", "--data", data]))
    cases.append(Case("job:unknown-data", ["finetune", model, "--data", "no-such-data"]))
    return cases
