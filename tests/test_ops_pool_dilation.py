"""MaxPool / AveragePool with `dilation`: float64 finite differences; a plain loop over windows and
taps (float64) as the forward reference; torch F.max_pool2d(dilation, ceil_mode) and, for
AveragePool (torch avg_pool2d has no dilation), sums and tap counts through F.unfold, both with
autograd; onnxruntime's MaxPool / AveragePool-19 for the ONNX semantics; shape inference and the
geometry it refuses."""
import numpy as np
import pytest

from device_agent.ops import OpError, ShapeError, get_op, normalize_attrs
from opcheck import fd_check, run_forward, torch_check
from test_ops_conv_pool import pool_attrs, pool_input

# id, x shape, attrs (MaxPool and AveragePool)
DIL_CASES = [
    ("d2_k3_p2", (2, 3, 7, 7), dict(kernel=[3, 3], stride=[1, 1], dilation=[2, 2], pads=[2, 2, 2, 2])),
    ("d2_k3_s2_p1_ceil", (2, 2, 8, 7), dict(kernel=[3, 3], stride=[2, 2], dilation=[2, 2], pads=[1, 1, 1, 1],
                                            ceil_mode=True)),
    ("d23_rect_asym_ceil", (1, 2, 9, 8), dict(kernel=[3, 2], stride=[2, 2], dilation=[2, 3], pads=[1, 0, 2, 1],
                                              ceil_mode=True)),
    ("d2_k2_s2_ceil", (2, 2, 6, 7), dict(kernel=[2, 2], dilation=[2, 2], ceil_mode=True)),
    ("d3_k2_s3_ceil_past_end", (1, 2, 10, 9), dict(kernel=[2, 2], stride=[3, 3], dilation=[3, 3], pads=[1, 1, 1, 1],
                                                   ceil_mode=True)),
    ("d2_k3_s3_asym_ceil", (1, 3, 10, 9), dict(kernel=[3, 3], stride=[3, 3], dilation=[2, 2], pads=[1, 0, 2, 1],
                                               ceil_mode=True)),
    ("d_h_only", (2, 2, 7, 5), dict(kernel=[2, 3], stride=[1, 2], dilation=[3, 1], pads=[1, 1, 0, 1])),
    ("d2_stride_gt_kernel", (1, 2, 11, 11), dict(kernel=[2, 2], stride=[4, 4], dilation=[2, 2])),
    ("img1x1_k3_d2_p2", (2, 3, 1, 1), dict(kernel=[3, 3], stride=[1, 1], dilation=[2, 2], pads=[2, 2, 2, 2])),
    ("k1_d3", (1, 2, 5, 4), dict(kernel=[1, 1], stride=[2, 1], dilation=[3, 3])),
    ("batch1_odd_d2", (1, 1, 5, 3), dict(kernel=[2, 2], stride=[1, 1], dilation=[2, 2], pads=[0, 1, 0, 1])),
    ("d4_wide_pad", (1, 2, 9, 9), dict(kernel=[2, 2], stride=[2, 2], dilation=[4, 4], pads=[3, 3, 3, 3],
                                       ceil_mode=True)),
]
DIL_GRID = ([("MaxPool", None) + c for c in DIL_CASES]
            + [("AveragePool", cip) + c for cip in (False, True) for c in DIL_CASES])
DIL_IDS = [f"{op}-{'' if cip is None else ('cip-' if cip else 'nocip-')}{c[0]}" for op, cip, *c in DIL_GRID]


def geometry(attrs, x_shape):
    a = normalize_attrs(get_op("MaxPool"), {k: v for k, v in attrs.items() if k != "count_include_pad"})
    k, d = a["kernel"], a["dilation"]
    s = a["stride"] or k
    out = get_op("MaxPool").infer(a, [x_shape])[0][2:]
    return k, s, d, a["pads"], out


def loop_pool(op_name, attrs, x):
    """Window by window, tap by tap: the definition in ops/pool.py's docstring (float64)."""
    k, s, d, (pt, pl, pb, pr), (oh, ow) = geometry(attrs, x.shape)
    cip = attrs.get("count_include_pad", False)
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            vals, inside = [], 0
            for a in range(k[0]):
                for b in range(k[1]):
                    r, q = i * s[0] - pt + a * d[0], j * s[1] - pl + b * d[1]
                    inside += -pt <= r < h + pb and -pl <= q < w + pr
                    if 0 <= r < h and 0 <= q < w:
                        vals.append(x[:, :, r, q])
            if op_name == "MaxPool":
                y[:, :, i, j] = np.max(vals, axis=0)
            else:
                y[:, :, i, j] = np.sum(vals, axis=0) / (inside if cip else len(vals))
    return y


def torch_dilated_pool(op_name, attrs, x_shape):
    """torch with autograd. MaxPool: F.max_pool2d(dilation, ceil_mode) directly where torch accepts
    the pads (symmetric, <= kernel // 2), else on an input -inf-padded to cover every window.
    AveragePool: window sums and tap counts of the zero-padded input through F.unfold(dilation)."""
    import torch
    import torch.nn.functional as F

    k, s, d, (pt, pl, pb, pr), (oh, ow) = geometry(attrs, x_shape)
    h, w = x_shape[2:]
    ceil = attrs.get("ceil_mode", False)
    # pads after x that make room for every window, ceil mode's last one included
    eb = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1 - pt - h
    er = (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1 - pl - w

    def cover(t, value):
        t = F.pad(t, (pl, max(er, 0), pt, max(eb, 0)), value=value)
        return t[:, :, :pt + h + eb, :pl + w + er]

    if op_name == "MaxPool":
        if pt == pb and pl == pr and pt <= k[0] // 2 and pl <= k[1] // 2:
            return lambda t: F.max_pool2d(t, k, s, (pt, pl), dilation=d, ceil_mode=ceil)
        return lambda t: F.max_pool2d(cover(t, float("-inf")), k, s, 0, dilation=d)

    cip = attrs["count_include_pad"]
    mask = cover(torch.ones((1, 1, h, w), dtype=torch.float64), 0.0)     # ones on the input
    if cip:   # ones over the padded input [-p0, size + p1), zeros past it (ceil mode's overhang)
        mask[:, :, :pt + h + pb, :pl + w + pr] = 1.0
    count = F.unfold(mask, k, dilation=d, stride=s).sum(1).reshape(1, 1, oh, ow)

    def fn(t):
        cols = F.unfold(cover(t, 0.0), k, dilation=d, stride=s)            # (N, C*kh*kw, L)
        n, c = t.shape[:2]
        total = cols.reshape(n, c, k[0] * k[1], oh * ow).sum(2).reshape(n, c, oh, ow)
        return total / count.to(t.dtype)
    return fn


def onnx_pool(op_name, attrs, x):
    """onnxruntime's MaxPool / AveragePool (opset 19: the first with AveragePool dilations)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    a = normalize_attrs(get_op(op_name), attrs)
    k = list(a["kernel"])
    kw = dict(kernel_shape=k, strides=list(a["stride"] or k), dilations=list(a["dilation"]),
              pads=[a["pads"][0], a["pads"][1], a["pads"][2], a["pads"][3]], ceil_mode=int(a["ceil_mode"]))
    if op_name == "AveragePool":
        kw["count_include_pad"] = int(a["count_include_pad"])
    g = helper.make_graph([helper.make_node(op_name, ["x"], ["y"], **kw)], "pool",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = min(m.ir_version, 9)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


# ============================================================================= references
@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", DIL_GRID, ids=DIL_IDS)
def test_dilated_pool_fd(op_name, cip, name, x_shape, attrs):
    fd_check(op_name, pool_attrs(op_name, attrs, cip), [pool_input(op_name, x_shape, np.float64)])


@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", DIL_GRID, ids=DIL_IDS)
def test_dilated_pool_matches_loop(op_name, cip, name, x_shape, attrs):
    a = pool_attrs(op_name, attrs, cip)
    x = pool_input(op_name, x_shape, np.float64)
    (y,) = run_forward(op_name, a, [x])[2]
    np.testing.assert_allclose(y, loop_pool(op_name, a, x), rtol=1e-13, atol=1e-13)


@pytest.mark.torch
@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", DIL_GRID, ids=DIL_IDS)
def test_dilated_pool_torch(op_name, cip, name, x_shape, attrs):
    pytest.importorskip("torch")
    a = pool_attrs(op_name, attrs, cip)
    torch_check(op_name, a, [pool_input(op_name, x_shape, np.float32)], torch_dilated_pool(op_name, a, x_shape))


@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", DIL_GRID, ids=DIL_IDS)
def test_dilated_pool_onnxruntime(op_name, cip, name, x_shape, attrs):
    a = pool_attrs(op_name, attrs, cip)
    pads, k = attrs.get("pads", [0] * 4), attrs["kernel"]
    if any(p >= k[i % 2] for i, p in enumerate(pads)):
        pytest.skip("onnxruntime refuses a pad >= the (undilated) kernel; THOMAS allows up to the dilated one")
    x = pool_input(op_name, x_shape, np.float32)
    (y,) = run_forward(op_name, a, [x])[2]
    np.testing.assert_allclose(y, onnx_pool(op_name, a, x), rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_output_size_matches_torch_over_a_grid():
    """Every (size, kernel, stride, dilation, pad <= k // 2, ceil) torch accepts: same output size."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    checked = 0
    for h in (1, 2, 5, 8, 9):
        for k in (1, 2, 3):
            for s in (1, 2, 3):
                for d in (1, 2, 3):
                    for p in range(k // 2 + 1):
                        for ceil in (False, True):
                            attrs = dict(kernel=[k, 1], stride=[s, 1], dilation=[d, 1], pads=[p, 0, p, 0],
                                         ceil_mode=ceil)
                            try:
                                want = F.max_pool2d(torch.zeros(1, 1, h, 1), (k, 1), (s, 1), (p, 0),
                                                    dilation=(d, 1), ceil_mode=ceil).shape[2]
                            except RuntimeError:
                                want = None            # torch: output too small
                            try:
                                got = get_op("MaxPool").infer(normalize_attrs(get_op("MaxPool"), attrs),
                                                              [(1, 1, h, 1)])[0][2]
                            except OpError:
                                got = None
                            if want is not None and got is not None:
                                assert got == want, attrs
                                checked += 1
                            else:                        # we refuse only what torch refuses, or a
                                assert got is None       # window that reads nothing but padding
    assert checked > 150


# ============================================================================= schema and errors
def test_dilation_defaults_and_schema():
    for name in ("MaxPool", "AveragePool"):
        a = normalize_attrs(get_op(name), dict(kernel=[2, 2]))
        assert a["dilation"] == (1, 1)
        with pytest.raises(OpError) as e:
            normalize_attrs(get_op(name), dict(kernel=[2, 2], dilation=[0, 1]))
        assert e.value.field == "dilation"
        with pytest.raises(OpError) as e:
            normalize_attrs(get_op(name), dict(kernel=[2, 2], dilation=[2]))
        assert e.value.field == "dilation"


@pytest.mark.parametrize("attrs,shape,err,field,words", [
    # taps -1 and 1 of a 1-pixel input: the window holds only padding
    (dict(kernel=[2, 2], dilation=[2, 2], pads=[1, 1, 1, 1]), (1, 1, 1, 1), OpError, "dilation", "only padding"),
    (dict(kernel=[2, 2], stride=[1, 1], dilation=[3, 1], pads=[1, 0, 1, 0]), (1, 1, 2, 3), OpError, "dilation",
     "along H"),
    (dict(kernel=[2, 2], dilation=[2, 2], pads=[3, 0, 0, 0]), (1, 1, 9, 9), OpError, "pads", "effective"),
    (dict(kernel=[3, 3], dilation=[2, 2]), (1, 1, 4, 9), ShapeError, "x", "smaller than the pooling kernel 5x5"),
])
def test_dilated_pool_infer_rejects(attrs, shape, err, field, words):
    for name in ("MaxPool", "AveragePool"):
        op = get_op(name)
        with pytest.raises(err) as e:
            op.infer(normalize_attrs(op, attrs), [shape])
        assert e.value.field == field
        assert words in str(e.value)


def test_dilation_one_is_the_undilated_pool():
    x = pool_input("MaxPool", (2, 3, 7, 6), np.float64)
    base = dict(kernel=[3, 2], stride=[2, 1], pads=[1, 0, 1, 1], ceil_mode=True)
    for name in ("MaxPool", "AveragePool"):
        (y0,) = run_forward(name, base, [x])[2]
        (y1,) = run_forward(name, dict(base, dilation=[1, 1]), [x])[2]
        np.testing.assert_array_equal(y0, y1)
