"""Hand-built ONNX graphs (onnx.helper): every import form real files use, every export mapping,
each checked against onnxruntime (max rel error <= 1e-4), and the one-line errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from device_agent.backends.numpy import NumpyRef
from device_agent.model.builder import GraphBuilder
from device_agent.errors import OnnxError
from device_agent.model.graph import save_package
from onnx_helpers import init, model, node, packages_round_trip, save  # noqa: F401
from thomas_cli.onnx import export_onnx, import_onnx, onnx_parity, parse_shape

TOL = 1e-4
RNG = np.random.default_rng(0)


def W(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def imported(m, tmp_path, batch=None, input_shape=None, name="m.onnx"):
    """Save, import, check against onnxruntime; return the graph."""
    path = save(m, tmp_path / name)
    g = import_onnx(path, input_shape=input_shape)
    r = onnx_parity(path, g, input_shape=input_shape, batch=batch)
    assert r["max_rel"] <= TOL, r
    save_package(g, tmp_path / f"pkg-{name}")            # round-tripped by packages_round_trip
    return g


def ops(g):
    return [n.op for n in g.nodes]


# =============================================================================== weights
def test_constant_node_weights(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["w"], value=helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                                                                          W(4, 3, 3, 3).ravel())),
        helper.make_node("Constant", [], ["b"], value_floats=[0.1, -0.2, 0.3, 0.0]),
        node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("Flatten", ["r"], ["f"]),
        helper.make_node("Constant", [], ["fw"], value=helper.make_tensor("fw", TensorProto.FLOAT, [5, 256],
                                                                           W(5, 256, scale=0.05).ravel())),
        node("Gemm", ["f", "fw"], ["y"], transB=1),
    ]
    g = imported(model(nodes, x=("x", [None, 3, 8, 8])), tmp_path)
    assert ops(g) == ["Conv2d", "Relu", "Flatten", "Gemm"]
    conv = g.nodes[0]
    assert g.params[conv.inputs[1]].trainable and g.params[conv.inputs[2]].group == conv.name
    assert np.allclose(g.weights[conv.inputs[2]], [0.1, -0.2, 0.3, 0.0])


def _external_model():
    nodes = [node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    return model(nodes, x=("x", [1, 3, 6, 6]), inits=[init("w", W(8, 3, 3, 3)), init("b", W(8))])


def test_external_data(tmp_path, monkeypatch):
    d = tmp_path / "model"
    d.mkdir()
    m = _external_model()
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    onnx.save(m, str(d / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (d / "weights.bin").stat().st_size == (8 * 27 + 8) * 4
    monkeypatch.chdir(tmp_path)              # relative to the model's folder, not the working directory
    g = import_onnx("model/m.onnx")
    assert onnx_parity("model/m.onnx", g)["max_rel"] <= TOL
    assert np.array_equal(g.weights[g.nodes[0].inputs[1]], w)


def _with_location(tmp_path, location):
    m = _external_model()
    t = m.graph.initializer[0]
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(8 * 27 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return save(m, tmp_path / "m" / "m.onnx")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 1000)
    path = _with_location(tmp_path, location)
    with pytest.raises(OnnxError, match="escapes the model's folder"):
        import_onnx(path)


def test_external_data_missing_or_truncated(tmp_path):
    path = _with_location(tmp_path, "w.bin")
    with pytest.raises(OnnxError, match="'w.bin' is missing"):
        import_onnx(path)
    (path.parent / "w.bin").write_bytes(b"\0" * 100)
    with pytest.raises(OnnxError, match="truncated"):
        import_onnx(path)


# =============================================================================== shape sub-graphs, batch
def _flatten_by_shape_subgraph(opset):
    axes13 = opset >= 13
    nodes = [
        node("Conv", ["x", "w"], ["c"]),
        node("Shape", ["c"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=helper.make_tensor("i0", TensorProto.INT64, [], [0])),
        node("Gather", ["s", "i0"], ["n"], axis=0),
        (node("Unsqueeze", ["n", "ax"], ["n1"]) if axes13 else node("Unsqueeze", ["n"], ["n1"], axes=[0])),
        helper.make_node("Constant", [], ["m1"], value=helper.make_tensor("m1", TensorProto.INT64, [1], [-1])),
        node("Concat", ["n1", "m1"], ["shape"], axis=0),
        node("Reshape", ["c", "shape"], ["r"]),
        node("Gemm", ["r", "fw", "fb"], ["y"], transB=1),
    ]
    inits = [init("w", W(4, 3, 3, 3)), init("fw", W(6, 4 * 6 * 6, scale=0.05)), init("fb", W(6))]
    if axes13:
        inits.append(init("ax", np.array([0], np.int64)))
    return model(nodes, x=("x", [None, 3, 8, 8]), opset=opset, inits=inits)


@pytest.mark.parametrize("opset", [11, 13])
def test_shape_subgraph_folds_away(opset, tmp_path):
    g = imported(_flatten_by_shape_subgraph(opset), tmp_path, batch=3)
    assert ops(g) == ["Conv2d", "Reshape", "Gemm"]
    assert g.nodes[1].attrs["shape"] == [0, 144]          # the batch stays free
    assert g.inputs[0].shape == (None, 3, 8, 8) and g.meta["folded_nodes"] >= 3
    assert NumpyRef(g).forward({"x": np.zeros((5, 3, 8, 8), np.float32)})["y"].shape == (5, 6)


def test_shape_subgraph_with_slice_squeeze_cast_constantofshape(tmp_path):
    i64 = TensorProto.INT64
    nodes = [
        node("Conv", ["x", "w"], ["c"]),
        node("Shape", ["c"], ["s"]),
        node("Slice", ["s", "st", "en"], ["s01"]),                              # [N, 4]
        node("Cast", ["s01"], ["sf"], to=TensorProto.FLOAT), node("Cast", ["sf"], ["si"], to=i64),
        node("Identity", ["si"], ["sq"]),
        helper.make_node("ConstantOfShape", ["one"], ["neg"],
                         value=helper.make_tensor("v", i64, [1], [-1])),         # [-1]
        node("Slice", ["sq", "st", "one_end"], ["n"]),                          # [N]
        node("Squeeze", ["n", "st"], ["n0"]), node("Unsqueeze", ["n0", "st"], ["n1"]),   # N, [N]
        node("Concat", ["n1", "neg"], ["shape"], axis=0),
        node("Reshape", ["c", "shape"], ["r"]),
        node("Unsqueeze", ["r", "ax23"], ["u"]), node("Squeeze", ["u", "ax23"], ["y"]),
    ]
    inits = [init("w", W(4, 3, 3, 3)), init("st", np.array([0], np.int64)), init("en", np.array([2], np.int64)),
             init("one", np.array([1], np.int64)), init("one_end", np.array([1], np.int64)),
             init("ax23", np.array([2, 3], np.int64))]
    g = imported(model(nodes, x=("x", [None, 3, 8, 8]), inits=inits), tmp_path, batch=3)
    assert ops(g) == ["Conv2d", "Reshape", "Reshape", "Reshape"]
    assert [n.attrs["shape"] for n in g.nodes[1:]] == [[0, 144], [0, 144, 1, 1], [0, 144]]


@pytest.mark.parametrize("dims", [[None, 3, 8, 8], [-1, 3, 8, 8], [1, 3, 8, 8]])
def test_batch_dims(dims, tmp_path):
    nodes = [node("Conv", ["x", "w"], ["c"]), node("GlobalAveragePool", ["c"], ["p"]),
             node("Flatten", ["p"], ["y"])]
    m = model(nodes, x=("x", dims), inits=[init("w", W(4, 3, 3, 3))])
    g = imported(m, tmp_path)
    assert g.inputs[0].shape == (None, 3, 8, 8)           # symbolic, -1 or fixed: free in the package
    assert g.meta["dynamic_batch_in_file"] == (dims[0] != 1)


def test_input_shape_override_and_errors(tmp_path):
    nodes = [node("Conv", ["x", "w"], ["c"]), node("GlobalAveragePool", ["c"], ["y"])]
    m = model(nodes, x=("x", [None, 3, -1, -1]), inits=[init("w", W(4, 3, 3, 3))])
    path = save(m, tmp_path / "m.onnx")
    with pytest.raises(OnnxError, match=r"free dimensions \(Nx3xNxN\); pass --input-shape"):
        import_onnx(path)
    g = import_onnx(path, input_shape=(2, 3, 16, 12))
    assert g.inputs[0].shape == (None, 3, 16, 12)
    assert onnx_parity(path, g, input_shape=(2, 3, 16, 12))["max_rel"] <= TOL
    with pytest.raises(OnnxError, match=r"node 'conv_c' \(Conv\) does not fit input shape 2x4x16x12: "
                                        r"input 'weight' has shape \(4, 3, 3, 3\), expected \(4, 4, 3, 3\)"):
        import_onnx(path, input_shape=(2, 4, 16, 12))
    with pytest.raises(OnnxError, match="has rank 3, but input 'x'"):
        import_onnx(path, input_shape=(3, 16, 12))
    with pytest.raises(OnnxError, match="--input-shape"):
        parse_shape("1,3,a,224")
    assert parse_shape("-1,3,224,224") == (None, 3, 224, 224) and parse_shape("1x3x8x8") == (1, 3, 8, 8)


def test_unsorted_nodes_are_sorted(tmp_path):
    nodes = [node("Relu", ["c"], ["y"]), node("Conv", ["x", "w"], ["c"])]
    g = imported(model(nodes, inits=[init("w", W(4, 3, 3, 3))]), tmp_path)
    assert ops(g) == ["Conv2d", "Relu"]


# =============================================================================== attribute vs input forms
@pytest.mark.parametrize("opset,lo,hi", [(6, 0.0, 6.0), (13, 0.0, 6.0), (6, None, 1.0), (13, None, 1.0),
                                         (13, -0.5, None), (11, None, None)])
def test_clip_forms(opset, lo, hi, tmp_path):
    if opset < 11:
        kw = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        nodes, inits = [node("Clip", ["x"], ["y"], **kw)], []
    else:
        ins = ["x", "" if lo is None else "lo", "" if hi is None else "hi"]
        inits = [init(n, np.array(v, np.float32)) for n, v in (("lo", lo), ("hi", hi)) if v is not None]
        nodes = [node("Clip", ins, ["c"]), node("Relu", ["c"], ["y"])] if lo is hi is None else \
            [node("Clip", ins, ["y"])]
    g = imported(model(nodes, opset=opset, inits=inits), tmp_path)
    if lo is None and hi is None:
        assert ops(g) == ["Relu"]
    else:
        assert ops(g) == ["Clip"] and g.nodes[0].attrs == {"min": lo, "max": hi}


@pytest.mark.parametrize("opset,mode", [(2, "constant"), (2, "reflect"), (2, "edge"), (11, "constant"),
                                        (13, "reflect"), (18, "edge")])
def test_pad_forms(opset, mode, tmp_path):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset < 11:
        nodes, inits = [node("Pad", ["x"], ["y"], mode=mode, pads=pads, value=0.5)], []
    elif opset >= 18:       # with an axes input: only H and W listed
        nodes = [node("Pad", ["x", "p", "", "ax"], ["y"], mode=mode)]
        inits = [init("p", np.array([1, 2, 2, 1], np.int64)), init("ax", np.array([2, -1], np.int64))]
    else:
        nodes = [node("Pad", ["x", "p", "v"], ["y"], mode=mode)]
        inits = [init("p", np.array(pads, np.int64)), init("v", np.array(0.5, np.float32))]
    g = imported(model(nodes, opset=opset, inits=inits), tmp_path)
    assert ops(g) == ["Pad"] and g.nodes[0].attrs["pads"] == pads and g.nodes[0].attrs["mode"] == mode


@pytest.mark.parametrize("opset", [7, 12, 13])
def test_dropout_forms(opset, tmp_path):
    if opset < 12:
        d = node("Dropout", ["x"], ["d", "mask"], ratio=0.3)
        inits = []
    else:
        d = node("Dropout", ["x", "r"], ["d"])
        inits = [init("r", np.array(0.3, np.float32))]
    g = imported(model([d, node("Relu", ["d"], ["y"])], opset=opset, inits=inits), tmp_path)
    assert ops(g) == ["Dropout", "Relu"] and g.nodes[0].attrs["ratio"] == pytest.approx(0.3)


@pytest.mark.parametrize("opset,axis,rank", [(11, 1, 4), (11, -1, 4), (13, 1, 4), (11, 1, 2)])
def test_softmax_axis_semantics(opset, axis, rank, tmp_path):
    if rank == 2:
        nodes = [node("Flatten", ["x"], ["f"]), node("Softmax", ["f"], ["y"], axis=axis)]
    else:
        nodes = [node("Softmax", ["x"], ["y"], axis=axis)]
    g = imported(model(nodes, opset=opset, x=("x", [None, 3, 4, 5])), tmp_path)
    if opset < 13 and rank == 4 and axis == 1:        # old softmax: over C*H*W as one vector
        assert ops(g) == ["Flatten", "Softmax", "Reshape"]
    else:
        assert ops(g)[-1] == "Softmax"


# =============================================================================== padding and pooling
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size", [11, 12])
def test_auto_pad(auto_pad, size, tmp_path):
    nodes = [node("Conv", ["x", "w"], ["c"], auto_pad=auto_pad, strides=[2, 2], kernel_shape=[4, 3]),
             node("MaxPool", ["c"], ["m"], auto_pad=auto_pad, kernel_shape=[2, 3], strides=[1, 2]),
             node("AveragePool", ["m"], ["y"], auto_pad=auto_pad, kernel_shape=[3, 2], count_include_pad=1)]
    g = imported(model(nodes, x=("x", [None, 3, size, size]), inits=[init("w", W(4, 3, 4, 3))]), tmp_path)
    conv = g.nodes[0]
    if auto_pad == "VALID":
        assert conv.attrs["pads"] == [0, 0, 0, 0]
    else:
        t, l, b, r = conv.attrs["pads"]
        assert (t <= b if auto_pad == "SAME_UPPER" else t >= b) and t + b > 0


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("opset", [10, 19])
def test_pools_ceil_mode_and_count_include_pad(cip, opset, tmp_path):
    nodes = [node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1],
                  ceil_mode=1, count_include_pad=cip),
             node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             node("GlobalMaxPool", ["m"], ["y"])]
    g = imported(model(nodes, x=("x", [None, 3, 9, 10]), opset=opset), tmp_path)
    assert ops(g) == ["AveragePool", "MaxPool", "MaxPool"]


# =============================================================================== Gemm / MatMul / BN / elementwise
def test_matmul_add_becomes_one_gemm(tmp_path):
    nodes = [node("Flatten", ["x"], ["f"]), node("MatMul", ["f", "w"], ["mm"]), node("Add", ["mm", "b"], ["y"])]
    g = imported(model(nodes, x=("x", [None, 2, 3, 4]), inits=[init("w", W(24, 5)), init("b", W(1, 5))]), tmp_path)
    assert ops(g) == ["Flatten", "Gemm"]
    gemm = g.nodes[1]
    assert g.params[gemm.inputs[1]].shape == (5, 24) and g.params[gemm.inputs[2]].trainable


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(0, 1.0, 1.0, (5,)), (1, 0.5, 2.0, (1, 5)),
                                                        (0, 2.0, 0.5, ()), (1, 1.0, 0.0, (5,))])
def test_gemm_forms(trans_b, alpha, beta, c_shape, tmp_path):
    b = W(5, 12) if trans_b else W(12, 5)
    nodes = [node("Flatten", ["x"], ["f"]),
             node("Gemm", ["f", "b", "c"], ["y"], transB=trans_b, alpha=alpha, beta=beta)]
    g = imported(model(nodes, x=("x", [None, 3, 2, 2]), inits=[init("b", b), init("c", W(*c_shape))]), tmp_path)
    assert ops(g) == ["Flatten", "Gemm"] and len(g.nodes[1].inputs) == (2 if beta == 0 else 3)


def test_batchnorm_momentum_buffers_and_folded_affine(tmp_path):
    c = 4
    nodes = [node("Conv", ["x", "w"], ["c"]),
             node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=1e-3, momentum=0.99),
             node("Mul", ["bn", "k"], ["mul"]), node("Add", ["mul", "t"], ["add"]),
             node("Relu", ["add"], ["y"])]
    inits = [init("w", W(c, 3, 3, 3)), init("s", RNG.uniform(0.5, 1.5, c).astype(np.float32)), init("b", W(c)),
             init("m", W(c)), init("v", RNG.uniform(0.5, 1.5, c).astype(np.float32)),
             init("k", W(c, 1, 1)), init("t", W(1, c, 1, 1))]
    g = imported(model(nodes, opset=9, inits=inits), tmp_path)
    assert ops(g) == ["Conv2d", "BatchNorm", "Relu"]          # Mul and Add folded into BN's affine
    bn = g.nodes[1]
    assert bn.attrs == {"eps": 1e-3, "momentum": 0.01}        # ONNX 0.99 -> PyTorch 0.01
    w, b, rm, rv = bn.inputs[1:]
    assert g.params[w].trainable and g.params[b].trainable
    assert not g.params[rm].trainable and not g.params[rv].trainable
    assert g.param_groups() == [g.nodes[0].name, bn.name]


def test_elementwise_with_constants_and_broadcasting(tmp_path):
    nodes = [node("Sub", ["mean", "x"], ["a"]), node("Div", ["a", "std"], ["b"]),
             node("Conv", ["b", "w"], ["c"]), node("Sigmoid", ["c"], ["s"]), node("Mul", ["c", "s"], ["d"]),
             node("Add", ["d", "c"], ["e"]), node("Sum", ["e", "d", "one"], ["f"]), node("Relu", ["f"], ["y"])]
    inits = [init("mean", W(1, 3, 1, 1)), init("std", RNG.uniform(0.5, 1, (3, 1, 1)).astype(np.float32)),
             init("w", W(4, 3, 1, 1)), init("one", np.array(1.0, np.float32))]
    g = imported(model(nodes, inits=inits), tmp_path)
    assert ops(g) == ["Sub", "Div", "Conv2d", "Sigmoid", "Mul", "Add", "Add", "Add", "Relu"]
    sub = g.nodes[0]
    assert sub.inputs[1] == "x" and not g.params[sub.inputs[0]].trainable   # the constant stays on the left
    assert g.param_groups() == [g.nodes[2].name]                            # only the conv trains


def test_misc_ops(tmp_path):
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Add", ["c", "bias2"], ["cb"]),
             node("HardSigmoid", ["cb"], ["hs"]), node("HardSwish", ["hs"], ["hw"]),
             node("LRN", ["hw"], ["l"], size=3), node("Cast", ["l"], ["cast"], to=TensorProto.FLOAT),
             node("Identity", ["cast"], ["id"]), node("Concat", ["id", "extra"], ["cat"], axis=1),
             node("GlobalAveragePool", ["cat"], ["p"]), node("Squeeze", ["p", "sq"], ["sq2"]),
             node("Unsqueeze", ["sq2", "uq"], ["u"]), node("Flatten", ["u"], ["y"], axis=1)]
    inits = [init("w", W(4, 3, 3, 3)), init("b", W(4)), init("bias2", W(4, 1, 1)),
             init("extra", W(1, 2, 8, 8)), init("sq", np.array([2, 3], np.int64)),
             init("uq", np.array([-1], np.int64))]
    g = imported(model(nodes, x=("x", [1, 3, 8, 8]), opset=14, inits=inits), tmp_path)
    assert ops(g) == ["Conv2d", "HardSigmoid", "HardSwish", "LRN", "Concat", "GlobalAveragePool",
                      "Reshape", "Reshape", "Flatten"]
    assert g.nodes[1].attrs == {"alpha": 0.2, "beta": 0.5}               # ONNX's defaults, not torch's
    # the constant Add became the conv's bias; the constant Concat piece is a buffer
    assert g.inputs[0].shape[0] == 1                       # a (1, 2, 8, 8) constant piece fixes the batch
    assert "fixed" in g.meta["batch"]


def test_unsupported_ops_are_listed_once_each(tmp_path):
    nodes = [node("Transpose", ["x"], ["a"], name="tr", perm=[1, 0, 2, 3]), node("Tanh", ["a"], ["b"], name="tanh1"),
             node("Tanh", ["b"], ["c"], name="tanh2"), node("Relu", ["c"], ["d"]),
             node("Flatten", ["d"], ["f"]), node("Gemm", ["f", "w"], ["e"], name="g1", transA=1),
             node("Erf", ["x"], ["z"], name="erf"), node("Add", ["e", "z"], ["y"])]
    path = save(model(nodes, x=("x", [None, 3, 4, 4]), inits=[init("w", W(48, 2))]), tmp_path / "u.onnx")
    with pytest.raises(OnnxError) as e:
        import_onnx(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "Tanh ×2 (first: 'tanh1')" in msg and "Transpose that moves the batch axis ×1 (first: 'tr')" in msg
    assert "Erf ×1 (first: 'erf')" in msg
    assert "Relu" not in msg and "Gemm" not in msg          # supported ops downstream are not listed


def test_custom_domain_op_is_unsupported(tmp_path):
    n = helper.make_node("FusedConv", ["x"], ["y"], domain="com.microsoft", name="fc")
    m = model([n])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(OnnxError, match=r"com.microsoft.FusedConv ×1 \(first: 'fc'\)"):
        import_onnx(save(m, tmp_path / "c.onnx"))


def test_bad_files(tmp_path):
    with pytest.raises(OnnxError, match="no such file"):
        import_onnx(tmp_path / "nope.onnx")
    (tmp_path / "garbage.onnx").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(OnnxError, match="garbage.onnx: not"):
        import_onnx(tmp_path / "garbage.onnx")
    good = save(_flatten_by_shape_subgraph(13), tmp_path / "good.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(OnnxError, match="trunc.onnx"):
        import_onnx(tmp_path / "trunc.onnx")


# =============================================================================== export of every op
def _all_ops_graph(seed=0):
    b = GraphBuilder("all_ops", input_shape=(None, 3, 12, 12), seed=seed)
    x = b.pad(b.input, [0, 0, 1, 0, 0, 0, 0, 1], mode="reflect", name="pad")
    x = b.conv(x, 8, 3, stride=1, pad=(1, 0, 0, 1), bias=True, name="conv")
    x = b.bn(x, name="bn")
    b.weights["bn.running_var"][:] = np.linspace(0.5, 1.5, 8)
    b.weights["bn.running_mean"][:] = np.linspace(-0.2, 0.2, 8)
    x = b.relu6(x, name="relu6")
    y = b.clip(x, None, 2.0, name="clip_hi")
    y = b.hardswish(y, name="hswish")
    z = b.hardsigmoid(x, name="hsig")
    x = b.mul(y, z, name="mul")
    x = b.lrn(x, 3, name="lrn")
    x = b.maxpool(x, 3, 2, pad=1, ceil_mode=True, name="maxpool")
    a = b.avgpool(x, 2, 1, pad=(0, 0, 1, 1), count_include_pad=True, name="avgpool")
    s = b.sigmoid(a, name="sig")
    x = b.concat([a, s], axis=1, name="concat")
    den = b.add(b.sigmoid(x, name="sig2"), b.relu(x, name="r2"), name="add")      # > 0
    x = b.sub(x, b.div(x, den, name="div"), name="sub")
    g = b.gap(x, name="gap")
    x = b.identity(b.reshape(g, [0, -1], name="reshape"), name="identity")
    x = b.dropout(x, 0.3, name="drop")
    x = b.linear(x, 6, name="fc")
    x = b.flatten(b.reshape(x, [0, 2, 3], name="r3"), axis=1, name="flat")
    return b.finish({"probs": b.softmax(x, name="softmax")})


@pytest.mark.parametrize("opset", [10, 11, 13, 17, 21])
def test_export_every_op_matches_onnxruntime(opset, tmp_path):
    g = _all_ops_graph()
    path = export_onnx(g, tmp_path / "all.onnx", opset=opset)
    r = onnx_parity(path, g, batch=3)
    assert r["max_rel"] <= TOL and r["batch"] == 3
    back = import_onnx(path)
    assert onnx_parity(path, back, batch=2)["max_rel"] <= TOL
    want = [o for o in ops(g) if o not in ("Identity", "Dropout")]
    assert ops(back) == want


def test_export_errors(tmp_path):
    g = _all_ops_graph()
    with pytest.raises(OnnxError, match="ceil_mode needs opset >= 10"):
        export_onnx(g, tmp_path / "x.onnx", opset=9 - 1)
    with pytest.raises(OnnxError, match="exports opsets 7..21"):
        export_onnx(g, tmp_path / "x.onnx", opset=22)
    b = GraphBuilder("sm", input_shape=(None, 3, 4, 4))
    g2 = b.finish(b.softmax(b.input, axis=1))
    with pytest.raises(OnnxError, match="needs opset >= 13"):
        export_onnx(g2, tmp_path / "x.onnx", opset=12)
    assert onnx_parity(export_onnx(g2, tmp_path / "x.onnx", opset=13), g2)["max_rel"] <= TOL


def test_onnxruntime_failure_is_one_clean_error(tmp_path):
    # the file fixes batch 1 in a Reshape constant: THOMAS keeps the batch free, onnxruntime cannot
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Reshape", ["c", "s"], ["y"])]
    m = model(nodes, x=("x", [1, 3, 4, 4]), inits=[init("w", W(2, 3, 3, 3)), init("s", np.array([1, 8], np.int64))])
    path = save(m, tmp_path / "fixed.onnx")
    g = import_onnx(path)
    assert g.nodes[1].attrs["shape"] == [0, 8] and g.inputs[0].shape[0] is None
    with pytest.raises(OnnxError, match=r"does not fit input shape 2x3x4x4: cannot reshape"):
        import_onnx(path, input_shape=(2, 3, 4, 4))
    with pytest.raises(OnnxError, match=r"onnxruntime failed to run the model at input shape 2x3x4x4 \("):
        onnx_parity(path, g, input_shape=(2, 3, 4, 4))
    assert onnx_parity(path, g)["max_rel"] <= TOL           # at the file's own batch it matches
