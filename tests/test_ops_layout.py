"""Slice, Transpose, ReduceMean, ReduceMax, ResizeNearest: the numpy references.

(a) fd_check in float64, (b) torch in float32 (tensor slicing, permute, mean/amax, F.interpolate
nearest / nearest-exact), (c) onnxruntime for the ONNX Resize coordinate and rounding modes torch
lacks (one-node models), (d) error cases, (e) infer() shapes == forward shapes and dtypes kept.
"""
import numpy as np
import pytest

from device_agent.ops import OpError, ShapeError, get_op, normalize_attrs
from device_agent.ops.resize import COORDS, NEAREST
from opcheck import fd_check, infer, raises, run_backward, run_forward, torch_check


def rnd(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def check_infer_and_dtypes(op_name, attrs, shape):
    """infer() agrees with forward's shapes; float32 stays float32 forward and backward"""
    for dt in (np.float32, np.float64):
        x = rnd(shape, 5, dt)
        ys, grads = run_backward(op_name, attrs, [x], [np.ones(infer(op_name, attrs, [shape])[0], dt)])
        assert ys[0].shape == tuple(infer(op_name, attrs, [shape])[0])
        assert ys[0].dtype == dt and grads[0].dtype == dt and grads[0].shape == shape


# ============================================================================= Slice
SLICES = [((2, 5, 4, 3), 1, 1, -1), ((2, 5, 4, 3), -1, -2, 100), ((2, 5, 4, 3), 2, -100, 2),
          ((2, 5, 4, 3), 3, 0, 1), ((3, 7), 1, 2, 5), ((1, 4, 2, 3, 2), 2, 1, 2), ((2, 6, 1, 1), 1, 3, 2 ** 62)]


@pytest.mark.parametrize("shape,axis,start,end", SLICES)
def test_slice_fd(shape, axis, start, end):
    attrs = {"axis": axis, "start": start, "end": end}
    fd_check("Slice", attrs, [rnd(shape)])
    check_infer_and_dtypes("Slice", attrs, shape)


@pytest.mark.torch
@pytest.mark.parametrize("shape,axis,start,end", SLICES)
def test_slice_torch(shape, axis, start, end):
    pytest.importorskip("torch")
    a = axis % len(shape)
    torch_check("Slice", {"axis": axis, "start": start, "end": end}, [rnd(shape, 1, np.float32)],
                lambda t: t[(slice(None),) * a + (slice(start, end),)])


def test_slice_errors():
    raises(ShapeError, "axis", infer, "Slice", {"axis": 0, "start": 0, "end": 1}, [(2, 3)])
    raises(ShapeError, "axis", infer, "Slice", {"axis": -2, "start": 0, "end": 1}, [(2, 3)])
    raises(ShapeError, "axis", infer, "Slice", {"axis": 2, "start": 0, "end": 1}, [(2, 3)])
    e = raises(ShapeError, "x", infer, "Slice", {"axis": 1, "start": 2, "end": 1}, [(2, 3)])
    assert "empty" in str(e)
    raises(ShapeError, "x", infer, "Slice", {"axis": 1, "start": 5, "end": 9}, [(2, 3)])
    raises(OpError, "end", normalize_attrs, get_op("Slice"), {"axis": 1, "start": 0})
    # ONNX's "to the end" (INT64_MAX) is fine; past int64 (hand-written JSON) is one OpError, not a TypeError
    assert normalize_attrs(get_op("Slice"), {"axis": 1, "start": -2 ** 63, "end": 2 ** 63 - 1})["end"] == 2 ** 63 - 1
    raises(OpError, "end", normalize_attrs, get_op("Slice"), {"axis": 1, "start": 0, "end": 2 ** 70})
    raises(OpError, "start", normalize_attrs, get_op("Slice"), {"axis": 1, "start": 1e300, "end": 2})


# ============================================================================= Transpose
PERMS = [((3, 4), (0, 1)), ((2, 3, 4), (0, 2, 1)), ((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 4, 5), (0, 3, 1, 2)),
         ((2, 2, 3, 2, 2), (0, 2, 1, 3, 4)), ((1, 2, 3, 1, 2, 2), (0, 5, 3, 1, 4, 2)),
         ((2, 1, 3, 2), (0, 2, 1, 3))]


@pytest.mark.parametrize("shape,perm", PERMS)
def test_transpose_fd(shape, perm):
    fd_check("Transpose", {"perm": list(perm)}, [rnd(shape)])
    check_infer_and_dtypes("Transpose", {"perm": list(perm)}, shape)


@pytest.mark.torch
@pytest.mark.parametrize("shape,perm", PERMS)
def test_transpose_torch(shape, perm):
    pytest.importorskip("torch")
    torch_check("Transpose", {"perm": list(perm)}, [rnd(shape, 1, np.float32)], lambda t: t.permute(*perm))


def test_transpose_errors():
    raises(ShapeError, "perm", infer, "Transpose", {"perm": [1, 0, 2]}, [(2, 3, 4)])
    raises(ShapeError, "perm", infer, "Transpose", {"perm": [0, 1, 1]}, [(2, 3, 4)])
    raises(ShapeError, "perm", infer, "Transpose", {"perm": [0, 2, 1]}, [(2, 3, 4, 5)])
    raises(ShapeError, "x", infer, "Transpose", {"perm": list(range(7))}, [(1,) * 7])
    raises(ShapeError, "x", infer, "Transpose", {"perm": [0]}, [(3,)])


@pytest.mark.torch
def test_channel_shuffle_graph_matches_torch():
    """Reshape (N,g,C/g,H,W) -> Transpose 0,2,1,3,4 -> Reshape (N,C,H,W): rank-5 shape inference,
    forward and backward through the numpy engine vs torch's channel_shuffle."""
    torch = pytest.importorskip("torch")
    from device_agent.backends.numpy import NumpyRef
    from device_agent.model.graph import Graph, Node, TensorSpec

    n, c, h, w, g = 2, 6, 3, 2, 3
    nodes = [Node("Reshape", "r1", ["x"], ["t0"], {"shape": [0, g, c // g, h, w]}),
             Node("Transpose", "tr", ["t0"], ["t1"], {"perm": [0, 2, 1, 3, 4]}),
             Node("Reshape", "r2", ["t1"], ["y"], {"shape": [0, c, h, w]})]
    graph = Graph("shuffle", [TensorSpec("x", (None, c, h, w))], ["y"], nodes, {}, {}).validate()
    assert graph.infer_shapes(batch=n)["t1"] == (n, c // g, g, h, w)
    x = rnd((n, c, h, w), 3, np.float32)
    ref = NumpyRef(graph)
    y = ref.forward(x, grad=True, input_grad=True)["y"]
    expect = torch.nn.functional.channel_shuffle(torch.from_numpy(x), g).numpy()
    np.testing.assert_array_equal(y, expect)
    # the same permutation undone: channel j of y came from channel src[j] of x
    src = np.arange(c).reshape(g, c // g).T.reshape(-1)
    np.testing.assert_array_equal(y, x[:, src])


# ============================================================================= ReduceMean / ReduceMax
REDUCES = [((2, 3, 4, 5), (2, 3), True), ((2, 3, 4, 5), (1,), False), ((2, 3, 4, 5), (1, 3), True),
           ((2, 3, 4, 5), (-1, -3), False), ((3, 7), (1,), True), ((2, 2, 3, 2, 3), (1, 3, 4), False),
           ((2, 1, 3, 1, 2, 2), (1, 2, 4), True), ((1, 4, 1, 1), (1, 2, 3), False)]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("shape,axes,keep", REDUCES)
def test_reduce_fd(op, shape, axes, keep):
    attrs = {"axes": list(axes), "keepdims": keep}
    fd_check(op, attrs, [rnd(shape)])
    check_infer_and_dtypes(op, attrs, shape)


@pytest.mark.torch
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("shape,axes,keep", REDUCES)
def test_reduce_torch(op, shape, axes, keep):
    pytest.importorskip("torch")
    fn = (lambda t: t.mean(dim=axes, keepdim=keep)) if op == "ReduceMean" else \
        (lambda t: t.amax(dim=axes, keepdim=keep))
    torch_check(op, {"axes": list(axes), "keepdims": keep}, [rnd(shape, 2, np.float32)], fn)


def test_reducemax_gradient_goes_to_the_first_max_row_major():
    x = np.zeros((1, 2, 2, 3))
    x[0, 0, 1, 0] = x[0, 0, 1, 2] = x[0, 1, 1, 1] = 5.0     # channel 0: (1,0) and (1,2) tie; then (1,1)
    ys, (gx,) = run_backward("ReduceMax", {"axes": [1, 2, 3]}, [x], [np.full((1, 1, 1, 1), 2.0)])
    assert ys[0].item() == 5.0
    expect = np.zeros_like(x)
    expect[0, 0, 1, 0] = 2.0                                  # row-major over (C, H, W): the first of three
    np.testing.assert_array_equal(gx, expect)
    # over (1, 3) only: each h row picks its own first max
    ys, (gx,) = run_backward("ReduceMax", {"axes": [1, 3]}, [x], [np.array([[[[1.0], [1.0]]]])])
    np.testing.assert_array_equal(ys[0].ravel(), [0.0, 5.0])
    assert gx[0, 0, 0, 0] == 1.0 and gx[0, 0, 1, 0] == 1.0 and gx.sum() == 2.0


def test_reducemax_nan_wins():
    x = np.array([[1.0, np.nan, 3.0, np.nan]])
    ys, (gx,) = run_backward("ReduceMax", {"axes": [1], "keepdims": False}, [x], [np.array([1.0])])
    assert np.isnan(ys[0][0])
    np.testing.assert_array_equal(gx, [[0.0, 1.0, 0.0, 0.0]])


def test_reduce_errors():
    for op in ("ReduceMean", "ReduceMax"):
        raises(ShapeError, "axes", infer, op, {"axes": []}, [(2, 3)])
        raises(ShapeError, "axes", infer, op, {"axes": [0]}, [(2, 3)])
        raises(ShapeError, "axes", infer, op, {"axes": [-2]}, [(2, 3)])
        raises(ShapeError, "axes", infer, op, {"axes": [1, -1]}, [(2, 3)])
        raises(ShapeError, "axes", infer, op, {"axes": [2]}, [(2, 3)])
        raises(ShapeError, "x", infer, op, {"axes": [1]}, [(2, 0)])
        raises(OpError, "axes", normalize_attrs, get_op(op), {})


# ============================================================================= ResizeNearest
SIZES = [((1, 2, 4, 4), (8, 8)), ((2, 1, 5, 7), (7, 5)), ((1, 2, 8, 6), (4, 3)), ((1, 1, 3, 10), (10, 3)),
         ((1, 2, 1, 4), (4, 1)), ((2, 2, 6, 6), (6, 6)), ((1, 1, 7, 3), (13, 11))]


@pytest.mark.parametrize("coord,nearest", [("asymmetric", "floor"), ("half_pixel", "round_prefer_ceil"),
                                           ("align_corners", "round_prefer_floor"),
                                           ("tf_half_pixel_for_nn", "ceil")])
@pytest.mark.parametrize("shape,size", SIZES[:4])
def test_resize_fd(shape, size, coord, nearest):
    attrs = {"size": list(size), "coord": coord, "nearest": nearest}
    fd_check("ResizeNearest", attrs, [rnd(shape)])
    check_infer_and_dtypes("ResizeNearest", attrs, shape)


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("shape,size", SIZES)
def test_resize_torch(shape, size, mode):
    torch = pytest.importorskip("torch")
    attrs = {"size": list(size)}
    if mode == "nearest-exact":
        attrs.update(coord="half_pixel", nearest="round_prefer_ceil")
    torch_check("ResizeNearest", attrs, [rnd(shape, 4, np.float32)],
                lambda t: torch.nn.functional.interpolate(t, size=size, mode=mode))


@pytest.mark.torch
@pytest.mark.parametrize("factor", [2.0, 3.0, 0.5])
def test_resize_torch_scale_factor(factor):
    """F.interpolate(scale_factor=f) maps with 1/f, not size/input: the scale attrs carry f."""
    torch = pytest.importorskip("torch")
    shape = (1, 2, 6, 5)
    size = [int(np.floor(shape[2] * factor)), int(np.floor(shape[3] * factor))]
    torch_check("ResizeNearest", {"size": size, "scale_h": factor, "scale_w": factor}, [rnd(shape, 6, np.float32)],
                lambda t: torch.nn.functional.interpolate(t, scale_factor=factor, mode="nearest"))


def _ort_resize(x, size=None, scales=None, coord="asymmetric", nearest="floor"):
    """onnxruntime's Resize (opset 13, mode nearest) on x, with output sizes or scales."""
    ort = pytest.importorskip("onnxruntime")
    from onnx_helpers import init, model, node

    extra = [init("sizes", np.array(x.shape[:2] + tuple(size), np.int64))] if size is not None else \
        [init("scales", np.array([1, 1] + list(scales), np.float32))]
    ins = ["x", "", ""] + ["sizes"] if size is not None else ["x", "", "scales"]
    m = model([node("Resize", ins, ["y"], mode="nearest", coordinate_transformation_mode=coord,
                    nearest_mode=nearest)], x=("x", list(x.shape)), inits=extra, opset=13)
    so = ort.SessionOptions()
    so.log_severity_level = 3          # tf_half_pixel_for_nn's deprecation warning, once per session
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("coord", COORDS)
def test_resize_matches_onnxruntime_every_mode(coord):
    """Every coord x nearest pair over a grid of sizes: the same pixels as onnxruntime, bit for bit
    (the index tables follow its float32 maths). x holds distinct values, so any index shows."""
    for (n, c, h, w), (oh, ow) in SIZES + [((1, 1, 9, 4), (2, 13)), ((1, 1, 2, 2), (1, 1)),
                                           ((1, 1, 10, 6), (15, 9))]:
        x = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
        for nearest in NEAREST:
            y = run_forward("ResizeNearest", {"size": [oh, ow], "coord": coord, "nearest": nearest}, [x])[2][0]
            np.testing.assert_array_equal(y, _ort_resize(x, size=(oh, ow), coord=coord, nearest=nearest),
                                          err_msg=f"{coord}/{nearest} {h}x{w} -> {oh}x{ow}")


@pytest.mark.parametrize("scales", [(2.0, 3.0), (0.5, 0.75), (1.7, 0.6), (2.5, 1.25)])
def test_resize_scales_match_onnxruntime(scales):
    """Resize given scales: size = floor(input * scale) (onnxruntime), the transform uses the scales."""
    x = np.arange(2 * 9 * 7, dtype=np.float32).reshape(1, 2, 9, 7)
    size = [int(np.float32(9) * np.float32(scales[0])), int(np.float32(7) * np.float32(scales[1]))]
    for coord in ("asymmetric", "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn"):
        for nearest in NEAREST:
            attrs = {"size": size, "scale_h": scales[0], "scale_w": scales[1], "coord": coord, "nearest": nearest}
            y = run_forward("ResizeNearest", attrs, [x])[2][0]
            np.testing.assert_array_equal(y, _ort_resize(x, scales=scales, coord=coord, nearest=nearest),
                                          err_msg=f"{coord}/{nearest} scales {scales}")


def test_resize_backward_sums_the_copies():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    g = np.random.default_rng(0).standard_normal((1, 1, 5, 7))
    attrs = {"size": [5, 7], "coord": "half_pixel", "nearest": "round_prefer_floor"}
    _, (gx,) = run_backward("ResizeNearest", attrs, [x], [g])
    # the same scatter by brute force from the forward's own picks
    y = run_forward("ResizeNearest", attrs, [x])[2][0]
    expect = np.zeros_like(x)
    for i in range(5):
        for j in range(7):
            expect.flat[int(y[0, 0, i, j])] += g[0, 0, i, j]
    np.testing.assert_allclose(gx, expect, rtol=1e-12)
    assert gx.sum() == pytest.approx(g.sum())


def test_resize_errors():
    raises(ShapeError, "x", infer, "ResizeNearest", {"size": [4, 4]}, [(2, 3, 4)])
    raises(ShapeError, "scale_h", infer, "ResizeNearest", {"size": [4, 4], "scale_h": 0.0}, [(1, 1, 2, 2)])
    raises(ShapeError, "scale_w", infer, "ResizeNearest", {"size": [4, 4], "scale_w": -2.0}, [(1, 1, 2, 2)])
    raises(OpError, "size", normalize_attrs, get_op("ResizeNearest"), {})
    raises(OpError, "size", normalize_attrs, get_op("ResizeNearest"), {"size": [0, 3]})
    raises(OpError, "coord", normalize_attrs, get_op("ResizeNearest"), {"size": [2, 2], "coord": "tf_crop_and_resize"})
    raises(OpError, "nearest", normalize_attrs, get_op("ResizeNearest"), {"size": [2, 2], "nearest": "round"})
