"""The ONNX forms of the mobile zoo, hand-built with onnx.helper, each imported and checked against
onnxruntime (max rel error <= 1e-4): pooling dilations / ceil_mode / count_include_pad, channel
shuffle, Split and Slice, ReduceMean/ReduceMax, swish, HardSigmoid, PRelu, LeakyRelu, GlobalMaxPool,
Flatten at any axis, Gemm forms, Resize/Upsample nearest (opsets 7-19), LogSoftmax, Pow/Neg/
Reciprocal, negative Pad; the export of every new package op back to ONNX; the one-line errors of
malformed files. Every package the tests write is checked by the round-trip property
(onnx_helpers.packages_round_trip)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from device_agent.backends.numpy import NumpyRef
from device_agent.errors import OnnxError
from device_agent.model.graph import Graph, Node, ParamSpec, TensorSpec, save_package
from onnx_helpers import init, model, node, packages_round_trip, save  # noqa: F401
from thomas_cli.onnx import export_onnx, import_onnx, onnx_parity

TOL = 1e-4
RNG = np.random.default_rng(0)


def W(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def i64(*v):
    return np.array(v, np.int64)


def f32(*v):
    return np.array(v, np.float32)


def imported(nodes, tmp_path, inits=(), opset=13, x=("x", [None, 4, 8, 8]), batch=None, name="m"):
    """Save, import, check against onnxruntime at the import batch (and `batch`), write the package."""
    path = save(model(nodes, x=x, inits=list(inits), opset=opset), tmp_path / f"{name}.onnx")
    g = import_onnx(path)
    for b in (None, batch) if batch else (None,):
        r = onnx_parity(path, g, batch=b)
        assert r["max_rel"] <= TOL, r
    save_package(g, tmp_path / f"pkg-{name}")
    return g


def ops(g):
    return [n.op for n in g.nodes]


def refused(nodes, tmp_path, match, inits=(), opset=13, x=("x", [None, 4, 8, 8])):
    path = save(model(nodes, x=x, inits=list(inits), opset=opset), tmp_path / "bad.onnx")
    with pytest.raises(OnnxError, match=match) as e:
        import_onnx(path)
    assert "\n" not in str(e.value)
    return str(e.value)


# =============================================================================== pooling
@pytest.mark.parametrize("op,opset,kw", [
    ("MaxPool", 12, dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", 10, dict(kernel_shape=[2, 3], dilations=[3, 1], strides=[1, 2])),
    ("MaxPool", 12, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),                   # SqueezeNet's
    ("AveragePool", 19, dict(kernel_shape=[3, 3], dilations=[2, 1], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", 19, dict(kernel_shape=[3, 2], dilations=[1, 2], pads=[1, 0, 2, 1], ceil_mode=1, strides=[2, 2])),
    ("AveragePool", 11, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], ceil_mode=1)),
])
def test_pools_with_dilation_ceil_mode_and_pads(op, opset, kw, tmp_path):
    g = imported([node(op, ["x"], ["y"], **kw)], tmp_path, opset=opset, x=("x", [None, 3, 11, 10]), batch=3)
    a = g.nodes[0].attrs
    assert ops(g) == [op] and a.get("dilation", [1, 1]) == kw.get("dilations", [1, 1])
    assert a["ceil_mode"] == bool(kw.get("ceil_mode", 0))


def test_global_max_pool_and_reductions(tmp_path):
    nodes = [node("GlobalMaxPool", ["x"], ["a"]), node("ReduceMean", ["x"], ["b"], axes=[2, 3], keepdims=1),
             node("ReduceMax", ["x"], ["c"], axes=[-1, -2], keepdims=0),
             node("ReduceMean", ["x"], ["d"], axes=[1], keepdims=1), node("ReduceMax", ["x"], ["e"], axes=[1, 3]),
             node("Flatten", ["a"], ["a2"]), node("Flatten", ["b"], ["b2"]), node("Flatten", ["d"], ["d2"]),
             node("Flatten", ["e"], ["e2"]), node("Concat", ["a2", "b2", "c", "d2", "e2"], ["y"], axis=1)]
    g = imported(nodes, tmp_path, opset=13, batch=3)
    # spatial reductions are the exact global pools; other axes the Reduce ops
    assert ops(g)[:6] == ["MaxPool", "GlobalAveragePool", "MaxPool", "Reshape", "ReduceMean", "ReduceMax"]
    assert g.nodes[4].attrs == {"axes": [1], "keepdims": True}


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reductions_with_axes_input_opset18(op, tmp_path):
    g = imported([node(op, ["x", "ax"], ["y"], keepdims=0)], tmp_path, inits=[init("ax", i64(1, 3))], opset=18)
    assert ops(g) == [op] and g.nodes[0].attrs == {"axes": [1, 3], "keepdims": False}
    g = imported([node(op, ["x", "ax"], ["y"])], tmp_path, inits=[init("ax", i64(2, 3))], opset=18, name="sp")
    assert ops(g) == ["GlobalAveragePool" if op == "ReduceMean" else "MaxPool"]
    refused([node(op, ["x"], ["y"], axes=[0, 1])], tmp_path, f"{op} over the batch axis")


# =============================================================================== shapes
def test_channel_shuffle_is_reshape_transpose_reshape(tmp_path):
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Reshape", ["c", "s1"], ["a"]),
             node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]), node("Reshape", ["b", "s2"], ["y"])]
    g = imported(nodes, tmp_path, inits=[init("w", W(6, 4, 1, 1)), init("s1", i64(0, 2, 3, 8, 8)),
                                          init("s2", i64(0, -1, 8, 8))], batch=3)
    assert ops(g) == ["Conv2d", "Reshape", "Transpose", "Reshape"] and g.nodes[2].attrs["perm"] == [0, 2, 1, 3, 4]
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    y = NumpyRef(g).forward({"x": x})["y"]
    conv = np.einsum("kc,nchw->nkhw", g.weights[g.nodes[0].inputs[1]][:, :, 0, 0], x)
    assert np.allclose(y, conv[:, [0, 3, 1, 4, 2, 5]], atol=1e-5)    # groups interleaved


@pytest.mark.parametrize("opset,make", [
    (11, lambda: ([node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3])], [])),
    (13, lambda: ([node("Split", ["x", "sp"], ["a", "b"], axis=-3)], [init("sp", i64(3, 1))])),
    (13, lambda: ([node("Split", ["x"], ["a", "b"], axis=1)], [])),                    # equal halves
    (18, lambda: ([node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2)], [])),
])
def test_split_becomes_one_slice_per_output(opset, make, tmp_path):
    nodes, inits = make()
    nodes += [node("Relu", ["a"], ["ra"]), node("Concat", ["b", "ra"], ["y"], axis=1)]
    g = imported(nodes, tmp_path, inits=inits, opset=opset, batch=3)
    assert ops(g) == ["Slice", "Slice", "Relu", "Concat"]
    assert [n.attrs["axis"] for n in g.nodes[:2]] == [1, 1]


def test_split_with_unused_output_and_uneven_num_outputs(tmp_path):
    nodes = [node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3), node("Concat", ["c", "a"], ["y"], axis=3)]
    g = imported(nodes, tmp_path, opset=18, x=("x", [None, 2, 3, 8]))
    assert ops(g) == ["Slice", "Slice", "Concat"]                 # 8 = 3 + 3 + 2; b unused
    assert [(n.attrs["start"], n.attrs["end"]) for n in g.nodes[:2]] == [(0, 3), (6, 8)]


@pytest.mark.parametrize("opset,make,want", [
    (13, lambda: ([node("Slice", ["x", "st", "en", "ax"], ["y"])],
                  [init("st", i64(1, -5)), init("en", i64(3, 100)), init("ax", i64(1, 3))]), [(1, 1, 3), (3, 3, 8)]),
    (9, lambda: ([node("Slice", ["x"], ["y"], starts=[1], ends=[-1], axes=[2])], []), [(2, 1, 7)]),
    (13, lambda: ([node("Slice", ["x", "st", "en"], ["y"])],                       # torch's x[:, 1:]
                  [init("st", i64(0, 1)), init("en", i64(2 ** 63 - 1, 2 ** 63 - 1))]), [(1, 1, 4)]),
    (13, lambda: ([node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                  [init("st", i64(0)), init("en", i64(8)), init("ax", i64(2)), init("sp", i64(1))]), []),
])
def test_slice_forms(opset, make, want, tmp_path):
    nodes, inits = make()
    nodes = nodes + [node("Relu", ["y"], ["out"])]
    m = model(nodes, x=("x", [None, 4, 8, 8]), y="out", inits=inits, opset=opset)
    path = save(m, tmp_path / "s.onnx")
    g = import_onnx(path)
    assert onnx_parity(path, g)["max_rel"] <= TOL
    assert [(n.attrs["axis"], n.attrs["start"], n.attrs["end"]) for n in g.nodes if n.op == "Slice"] == want


def test_slice_and_split_refusals(tmp_path):
    refused([node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], tmp_path, r"Slice with step 2",
            inits=[init("st", i64(0)), init("en", i64(8)), init("ax", i64(2)), init("sp", i64(2))])
    refused([node("Slice", ["x", "st", "en"], ["y"])], tmp_path, r"Slice of the batch axis",
            inits=[init("st", i64(0)), init("en", i64(1))])
    refused([node("Split", ["x"], ["a", "b"], axis=0)], tmp_path, "Split of the batch axis")
    refused([node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2])], tmp_path, r"Split sizes \[1, 2\]")
    refused([node("Slice", ["x", "st", "en", "ax"], ["y"])], tmp_path, r"Slice \[5:2\] of axis 1 .* is empty",
            inits=[init("st", i64(5)), init("en", i64(2)), init("ax", i64(1))])


@pytest.mark.parametrize("axis,want", [(1, (2, 256)), (2, (8, 64)), (3, (64, 8)), (-1, (64, 8)), (4, (512, 1))])
def test_flatten_at_any_axis(axis, want, tmp_path):
    g = imported([node("Flatten", ["x"], ["y"], axis=axis)], tmp_path, opset=13, x=("x", [None, 4, 8, 8]))
    assert ops(g) == ["Flatten"] and g.infer_shapes(batch=2)["y"] == want


def test_transpose_forms_and_refusals(tmp_path):
    g = imported([node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]), node("Transpose", ["a"], ["y"],
                                                                           perm=[0, 1, 2, 3])], tmp_path)
    assert ops(g) == ["Transpose", "Identity"]                  # the identity permutation is an alias
    refused([node("Transpose", ["x"], ["y"])], tmp_path, "Transpose that moves the batch axis")
    refused([node("Transpose", ["x"], ["y"], perm=[0, 1, 1, 2])], tmp_path, r"perm \[0, 1, 1, 2\] is not a permutation")


def test_negative_pad_crops_with_slices(tmp_path):
    g = imported([node("Pad", ["x", "p"], ["y"])], tmp_path, inits=[init("p", i64(0, 0, -1, 2, 0, 0, 1, -2))])
    assert ops(g) == ["Slice", "Slice", "Pad"] and g.nodes[2].attrs["pads"] == [0, 0, 0, 2, 0, 0, 1, 0]
    g = imported([node("Pad", ["x", "p"], ["y"])], tmp_path, inits=[init("p", i64(0, 0, -1, 0, 0, 0, 0, -2))],
                 name="crop")
    assert ops(g) == ["Slice", "Slice"]


# =============================================================================== activations
def test_activations(tmp_path):
    nodes = [node("LeakyRelu", ["x"], ["a"], alpha=0.2), node("PRelu", ["a", "s4"], ["b"]),
             node("PRelu", ["b", "s1"], ["c"]), node("HardSigmoid", ["c"], ["d"], alpha=0.3, beta=0.4),
             node("HardSwish", ["d"], ["e"]), node("Sigmoid", ["e"], ["sg"]), node("Mul", ["e", "sg"], ["y"])]
    g = imported(nodes, tmp_path, inits=[init("s4", W(4, 1, 1)), init("s1", f32(0.25))], opset=14, batch=3)
    assert ops(g) == ["LeakyRelu", "PRelu", "PRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Mul"]
    assert g.nodes[0].attrs == {"alpha": 0.2} and g.nodes[3].attrs == {"alpha": 0.3, "beta": 0.4}
    slopes = [g.params[n.inputs[1]] for n in g.nodes[1:3]]
    assert [p.shape for p in slopes] == [(4,), (1,)] and all(p.trainable for p in slopes)


def test_prelu_on_a_matrix_and_a_bad_slope(tmp_path):
    g = imported([node("Flatten", ["x"], ["f"]), node("PRelu", ["f", "s"], ["y"])], tmp_path,
                 inits=[init("s", W(24))], x=("x", [None, 24, 1, 1]))
    assert g.params[g.nodes[1].inputs[1]].shape == (24,)
    refused([node("PRelu", ["x", "s"], ["y"])], tmp_path, r"PRelu with a slope of shape \(8, 8\)",
            inits=[init("s", W(8, 8))])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis,want", [(11, 1, ["Flatten", "{op}", "Reshape"]), (11, 3, ["{op}"]),
                                             (13, 1, ["{op}"]), (13, -1, ["{op}"])])
def test_softmax_and_log_softmax_axes(op, opset, axis, want, tmp_path):
    g = imported([node(op, ["x"], ["y"], axis=axis)], tmp_path, opset=opset, x=("x", [None, 3, 4, 5]))
    assert ops(g) == [w.format(op=op) for w in want]


@pytest.mark.parametrize("p,want", [(1, ["Relu"]), (2, ["Mul", "Relu"]), (3, ["Mul", "Mul", "Relu"]),
                                    (4, ["Mul", "Mul", "Relu"]), (-1, ["Div", "Relu"]), (-2, ["Mul", "Div", "Relu"])])
@pytest.mark.parametrize("shape", [(), (1,)])
def test_pow_with_a_constant_exponent(p, want, shape, tmp_path):
    x = np.full(shape, p, np.float32)
    nodes = [node("Add", ["x", "one"], ["a"]), node("Pow", ["a", "e"], ["b"]), node("Relu", ["b"], ["y"])]
    inits = [init("e", x), init("one", np.full(shape, 2.0, np.float32))]
    g = imported(nodes, tmp_path, inits=inits, x=("x", [None, 3, 4, 4]))
    assert ops(g) == ["Add"] + want
    assert all(g.weights[k].shape in (shape, ()) for k in g.params)


def test_pow_refusals_and_neg_reciprocal(tmp_path):
    refused([node("Pow", ["x", "e"], ["y"])], tmp_path, r"Pow with exponent 0.5 \(square root; no device op\)",
            inits=[init("e", f32(0.5))])
    refused([node("Pow", ["e", "x"], ["y"])], tmp_path, "Pow with a computed exponent", inits=[init("e", f32(2))])
    g = imported([node("Neg", ["x"], ["a"]), node("Reciprocal", ["a"], ["b"]), node("Relu", ["b"], ["y"])], tmp_path)
    assert ops(g) == ["Mul", "Div", "Relu"]


# =============================================================================== Gemm
@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(1, 0.5, 2.0, (5,)), (0, 1.5, 0.5, (1, 5)), (1, 2.0, 1.0, ())])
def test_gemm_trans_alpha_beta(trans_b, alpha, beta, c_shape, tmp_path):
    b = W(5, 48) if trans_b else W(48, 5)
    gemm = node("Gemm", ["f", "b", "c"], ["y"], transB=trans_b, alpha=alpha, beta=beta)
    nodes = [node("Flatten", ["x"], ["f"]), gemm]
    g = imported(nodes, tmp_path, inits=[init("b", b), init("c", W(*c_shape))], x=("x", [None, 3, 4, 4]))
    assert ops(g) == ["Flatten", "Gemm"]


def test_gemm_transa_on_constants_folds_and_on_activations_is_refused(tmp_path):
    nodes = [node("Gemm", ["a", "b"], ["w"], transA=1), node("Flatten", ["x"], ["f"]),
             node("MatMul", ["f", "w"], ["y"])]                # A'B of constants: folded into the weight
    g = imported(nodes, tmp_path, inits=[init("a", W(6, 48)), init("b", W(6, 5))], x=("x", [None, 3, 4, 4]))
    assert ops(g) == ["Flatten", "Gemm"]
    refused([node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "b"], ["y"], transA=1)], tmp_path,
            r"Gemm with transA=1 on an activation", inits=[init("b", W(4, 5))], x=("x", [4, 3, 2, 2]))
    refused([node("Flatten", ["x"], ["f"]), node("Gemm", ["b", "f"], ["y"], transB=1)], tmp_path,
            r"Gemm with a constant A and a computed B", inits=[init("b", W(5, 12))], x=("x", [None, 3, 2, 2]))


# =============================================================================== Resize / Upsample
RESIZE_CASES = [
    ("up7", 7, lambda: ([node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0])], [])),
    ("up9", 9, lambda: ([node("Upsample", ["x", "s"], ["y"], mode="nearest")], [init("s", f32(1, 1, 2, 1.5))])),
    ("r10up", 10, lambda: ([node("Resize", ["x", "s"], ["y"], mode="nearest")], [init("s", f32(1, 1, 3, 2))])),
    ("r10down", 10, lambda: ([node("Resize", ["x", "s"], ["y"], mode="nearest")], [init("s", f32(1, 1, 0.6, 1))])),
    ("r11", 11, lambda: ([node("Resize", ["x", "roi", "s"], ["y"], mode="nearest")],
                         [init("roi", f32()), init("s", f32(1, 1, 2, 2))])),
    ("r11sizes", 11, lambda: ([node("Resize", ["x", "roi", "s", "z"], ["y"], mode="nearest",
                                    coordinate_transformation_mode="align_corners", nearest_mode="ceil")],
                              [init("roi", f32()), init("s", f32()), init("z", i64(2, 4, 13, 5))])),
    ("r13torch", 13, lambda: ([node("Resize", ["x", "", "s"], ["y"], mode="nearest",       # F.interpolate nearest
                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                              [init("s", f32(1, 1, 2, 2))])),
    ("r13exact", 13, lambda: ([node("Resize", ["x", "", "s"], ["y"], mode="nearest",       # nearest-exact
                                    coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")],
                              [init("s", f32(1, 1, 1.7, 0.6))])),
    ("r13pt", 13, lambda: ([node("Resize", ["x", "", "", "z"], ["y"], mode="nearest",
                                 coordinate_transformation_mode="pytorch_half_pixel",
                                 nearest_mode="round_prefer_floor")],
                           [init("z", i64(2, 4, 1, 11))])),
    ("r13tf", 13, lambda: ([node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                 coordinate_transformation_mode="tf_half_pixel_for_nn")],
                           [init("s", f32(1, 1, 1.5, 2.5))])),
    ("r18axes", 18, lambda: ([node("Resize", ["x", "", "", "z"], ["y"], mode="nearest", axes=[2, 3])],
                             [init("z", i64(5, 11))])),
    ("r19", 19, lambda: ([node("Resize", ["x", "", "s"], ["y"], mode="nearest")], [init("s", f32(1, 1, 0.5, 2))])),
]


@pytest.mark.parametrize("name,opset,make", RESIZE_CASES, ids=[c[0] for c in RESIZE_CASES])
def test_resize_and_upsample_nearest(name, opset, make, tmp_path):
    nodes, inits = make()
    # a sizes constant that names the batch (2) fixes it for onnxruntime: checked at 2 only
    batch = None if name in ("r11sizes", "r13pt") else 3
    g = imported(nodes, tmp_path, inits=inits, opset=opset, x=("x", [None, 4, 7, 6]), batch=batch)
    assert ops(g) == ["ResizeNearest"]
    x = np.arange(2 * 4 * 7 * 6, dtype=np.float32).reshape(2, 4, 7, 6)       # index-valued: exact copies
    path = tmp_path / "m.onnx"
    import onnxruntime as ort
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(NumpyRef(g).forward({"x": x})["y"], ref)


def test_resize_refusals(tmp_path):
    refused([node("Resize", ["x", "", "s"], ["y"], mode="linear")], tmp_path, "Resize mode=linear",
            inits=[init("s", f32(1, 1, 2, 2))])
    refused([node("Resize", ["x", "", "s"], ["y"], mode="nearest")], tmp_path,
            "Resize that scales the batch or channel axis", inits=[init("s", f32(1, 2, 2, 2))])
    crop = node("Resize", ["x", "", "s"], ["y"], mode="nearest", coordinate_transformation_mode="tf_crop_and_resize")
    refused([crop], tmp_path, "coordinate_transformation_mode=tf_crop_and_resize", inits=[init("s", f32(1, 1, 2, 2))])
    refused([node("Resize", ["x", "s"], ["y"], mode="nearest")], tmp_path, "enlarges one axis and shrinks the other",
            inits=[init("s", f32(1, 1, 2, 0.5))], opset=10)


# =============================================================================== export of the new ops
def _new_ops_graph(resize: dict, pool_dil=(2, 2), avg_dil=(1, 1)) -> Graph:
    """x (N,4,9,8) through every op the mobile-zoo importer added, with params; the pools keep 9x8."""
    rng = np.random.default_rng(1)
    mp_pads = [1, 1, 1, 1] if pool_dil == (2, 2) else [1, 1, 0, 0]
    ap_pads = [1, 0, 1, 1] if avg_dil == (2, 1) else [0, 0, 1, 1]
    nodes = [Node("LeakyRelu", "leaky", ["x"], ["a"], {"alpha": 0.1}),
             Node("PRelu", "prelu", ["a", "prelu.slope"], ["b"], {}),
             Node("MaxPool", "pool", ["b"], ["c"], {"kernel": [2, 2], "stride": [1, 1], "pads": mp_pads,
                                                    "dilation": list(pool_dil), "ceil_mode": pool_dil == (2, 2)}),
             Node("AveragePool", "avg", ["c"], ["c2"], {"kernel": [2, 2], "stride": [1, 1], "pads": ap_pads,
                                                         "dilation": list(avg_dil)}),
             Node("ResizeNearest", "resize", ["c2"], ["d"], resize),
             Node("Slice", "slice", ["d"], ["e"], {"axis": 1, "start": 1, "end": 4}),
             Node("Transpose", "tr", ["e"], ["f"], {"perm": [0, 2, 3, 1]}),
             Node("ReduceMax", "rmax", ["f"], ["g"], {"axes": [1], "keepdims": False}),
             Node("ReduceMean", "rmean", ["g"], ["h"], {"axes": [1], "keepdims": True}),
             Node("Flatten", "flat", ["h"], ["i"], {"axis": 1}),
             Node("LogSoftmax", "logsm", ["i"], ["y"], {"axis": -1})]
    params = {"prelu.slope": ParamSpec((4,), "float32", "prelu", True)}
    weights = {"prelu.slope": rng.uniform(-0.5, 0.5, 4).astype(np.float32)}
    return Graph("new_ops", [TensorSpec("x", (None, 4, 9, 8))], ["y"], nodes, params, weights).validate()


FLOOR_UP = {"size": [18, 12], "scale_h": 2.0, "scale_w": 1.5, "coord": "asymmetric", "nearest": "floor"}
HALF_SIZES = {"size": [13, 5], "coord": "half_pixel", "nearest": "round_prefer_ceil"}


@pytest.mark.parametrize("opset,resize", [(9, FLOOR_UP), (10, FLOOR_UP), (11, FLOOR_UP), (11, HALF_SIZES),
                                          (13, HALF_SIZES), (17, HALF_SIZES), (18, HALF_SIZES), (21, FLOOR_UP)])
def test_export_of_every_new_op(opset, resize, tmp_path):
    g = _new_ops_graph(resize, pool_dil=(1, 1) if opset < 10 else (2, 2))
    path = export_onnx(g, tmp_path / "new.onnx", opset=opset)
    for batch in (1, 3):
        assert onnx_parity(path, g, batch=batch)["max_rel"] <= TOL
    back = import_onnx(path)
    assert ops(back) == ops(g)
    assert onnx_parity(path, back, batch=2)["max_rel"] <= TOL
    assert all(back.nodes[i].attrs == g.nodes[i].attrs for i in (0, 4, 5, 6, 7, 8))


def test_export_of_new_ops_needs_the_opset(tmp_path):
    with pytest.raises(OnnxError, match="ceil_mode needs opset >= 10"):
        export_onnx(_new_ops_graph(FLOOR_UP), tmp_path / "a.onnx", opset=9)
    with pytest.raises(OnnxError, match="dilation needs opset >= 19"):
        export_onnx(_new_ops_graph(FLOOR_UP, avg_dil=(2, 1)), tmp_path / "a.onnx", opset=18)
    with pytest.raises(OnnxError, match="coord=half_pixel, nearest=round_prefer_ceil .* needs opset >= 11"):
        export_onnx(_new_ops_graph(HALF_SIZES), tmp_path / "a.onnx", opset=10)
    g = _new_ops_graph(FLOOR_UP, avg_dil=(2, 1))
    assert onnx_parity(export_onnx(g, tmp_path / "b.onnx", opset=19), g)["max_rel"] <= TOL


# =============================================================================== hostile files: one line each
MALFORMED = [
    ("no kernel", lambda: node("MaxPool", ["x"], ["y"]),
     r"attribute 'kernel_shape' must be a list of 2 integers, got nothing"),
    ("strides", lambda: node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1, 1]),
     r"attribute 'strides' must be a list of 2 integers, got \[1, 1, 1\]"),
    ("string kernel", lambda: node("AveragePool", ["x"], ["y"], kernel_shape="3x3"),
     r"attribute 'kernel_shape' must be a list of 2 integers, got '3x3'"),
    ("float group", lambda: node("Conv", ["x", "w"], ["y"], group=1.5), r"attribute 'group' must be an integer"),
    ("lrn size", lambda: node("LRN", ["x"], ["y"]), r"attribute 'size' must be an integer, got nothing"),
    ("perm", lambda: node("Transpose", ["x"], ["y"], perm=[0, 7, 1, 2]), r"perm \[0, 7, 1, 2\] is not a permutation"),
    ("axis", lambda: node("Split", ["x"], ["a", "y"], axis=9), r"axis 9 is out of range"),
    ("conv weight", lambda: node("Conv", ["x", "v"], ["y"]), r"the weight of a 2-D Conv must have rank 4"),
]


@pytest.mark.parametrize("case,make,match", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_nodes_are_one_line(case, make, match, tmp_path):
    line = refused([make()], tmp_path, match, inits=[init("w", W(4, 4, 3, 3)), init("v", W(4, 4))])
    assert "node '" in line


def test_undefined_attribute_type_is_one_line(tmp_path):
    n = node("LeakyRelu", ["x"], ["y"])
    a = n.attribute.add()
    a.name, a.type = "alpha", 0
    refused([n], tmp_path, r"attribute 'alpha' cannot be read")


def test_graph_without_outputs_and_string_tensors(tmp_path):
    m = model([node("Relu", ["x"], ["y"])])
    del m.graph.output[:]
    with pytest.raises(OnnxError, match="the graph declares no outputs"):
        import_onnx(save(m, tmp_path / "noout.onnx"))
    s = helper.make_tensor("s", TensorProto.STRING, [2], [b"a", b"b"])
    with pytest.raises(OnnxError, match="tensor 's' holds STRING data; THOMAS reads numeric tensors only"):
        import_onnx(save(model([node("Relu", ["x"], ["y"])], inits=[s]), tmp_path / "str.onnx"))
    const = helper.make_node("Constant", [], ["c"], value=s)
    with pytest.raises(OnnxError, match="tensor 's' holds STRING data"):
        import_onnx(save(model([const, node("Relu", ["x"], ["y"])]), tmp_path / "strc.onnx"))


def test_huge_inputs_are_refused_before_any_allocation(tmp_path, monkeypatch):
    big = save(model([node("Relu", ["x"], ["y"])], x=("x", [1, 3, 10 ** 9, 10 ** 9])), tmp_path / "big.onnx")
    with pytest.raises(OnnxError, match=r"an input of 1x3x1000000000x1000000000 .* needs about .* GiB of memory, "
                                        r"more than the .* available; pass a smaller --input-shape"):
        import_onnx(big)
    small = save(model([node("Relu", ["x"], ["y"])], x=("x", [None, 3, 8, 8])), tmp_path / "small.onnx")
    with pytest.raises(OnnxError, match="needs about"):
        import_onnx(small, input_shape=(1, 3, 100000, 100000))
    # activations that grow inside the graph: the parity batch's total is checked node by node
    monkeypatch.setenv("THOMAS_MEMORY_BUDGET", str(64 << 20))
    up = [node("Resize", ["x", "", "s"], ["a"], mode="nearest"), node("Relu", ["a"], ["y"])]
    path = save(model(up, x=("x", [None, 3, 64, 64]), inits=[init("s", f32(1, 1, 40, 40))]), tmp_path / "up.onnx")
    with pytest.raises(OnnxError, match=r"checking the import at input 2x3x64x64 \(the parity batch's activations\)"):
        import_onnx(path)
    nodes = [node("ConstantOfShape", ["shp"], ["z"]), node("Add", ["x", "z"], ["y"])]
    with pytest.raises(OnnxError, match=r"ConstantOfShape making a constant of 1e\+18 elements \(more than the memory"):
        import_onnx(save(model(nodes, inits=[init("shp", i64(10 ** 9, 10 ** 9))]), tmp_path / "cos.onnx"))
