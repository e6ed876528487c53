"""Conv2d, MaxPool, AveragePool, GlobalAveragePool and LRN: finite differences (float64),
PyTorch forward/backward (float32), shape inference and its error reporting."""
import numpy as np
import pytest

from device_agent.ops import Ctx, OpError, ShapeError, get_op, normalize_attrs
from device_agent.ops import conv2d as conv_mod
from opcheck import fd_check, run_backward, run_forward, torch_check

# ----------------------------------------------------------------------------- grids
# id, x shape, attrs, with bias
CONV_CASES = [
    ("k1x1", (2, 3, 5, 5), dict(out_channels=4, kernel=[1, 1]), True),
    ("img1x1", (2, 3, 1, 1), dict(out_channels=2, kernel=[1, 1]), True),
    ("img1x1_k3_pad1", (2, 3, 1, 1), dict(out_channels=2, kernel=[3, 3], pads=[1, 1, 1, 1]), False),
    ("odd7x5", (2, 3, 7, 5), dict(out_channels=4, kernel=[3, 3]), True),
    ("rect_kernel", (2, 3, 7, 5), dict(out_channels=2, kernel=[3, 2]), False),
    ("one_channel", (2, 1, 4, 4), dict(out_channels=1, kernel=[3, 3], pads=[1, 1, 1, 1]), True),
    ("stride2_pad1", (2, 3, 7, 5), dict(out_channels=4, kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1]), True),
    ("stride_gt_kernel", (1, 2, 7, 7), dict(out_channels=2, kernel=[2, 2], stride=[3, 3]), True),
    ("asym_pads", (2, 3, 6, 5), dict(out_channels=3, kernel=[3, 3], pads=[0, 2, 1, 1]), True),
    ("dilation2", (1, 2, 7, 7), dict(out_channels=3, kernel=[3, 3], dilation=[2, 2], pads=[2, 2, 2, 2]), True),
    ("mixed_groups2", (2, 4, 7, 5), dict(out_channels=6, kernel=[3, 2], stride=[2, 1], pads=[1, 0, 2, 1],
                                         dilation=[1, 2], groups=2), True),
    ("groups2", (2, 4, 5, 5), dict(out_channels=6, kernel=[3, 3], pads=[1, 1, 1, 1], groups=2), False),
    ("depthwise", (2, 3, 7, 5), dict(out_channels=3, kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1],
                                     groups=3), True),
    ("depthwise_mult2", (2, 3, 6, 5), dict(out_channels=6, kernel=[3, 3], pads=[1, 1, 1, 1], groups=3), False),
    ("depthwise_dil_asym", (1, 4, 7, 6), dict(out_channels=4, kernel=[3, 3], pads=[2, 0, 1, 2],
                                              dilation=[2, 1], groups=4), True),
    ("depthwise_mult2_k5s2", (1, 2, 5, 5), dict(out_channels=4, kernel=[5, 5], stride=[2, 2],
                                                pads=[2, 2, 2, 2], groups=2), True),
    ("batch1_nobias", (1, 3, 5, 4), dict(out_channels=2, kernel=[2, 2], stride=[2, 2]), False),
]

# id, x shape, attrs (shared by MaxPool and AveragePool)
POOL_CASES = [
    ("k2s2", (2, 3, 4, 6), dict(kernel=[2, 2])),
    ("k3s2_overlap", (2, 2, 7, 5), dict(kernel=[3, 3], stride=[2, 2])),
    ("k3s2_pad1", (2, 2, 7, 5), dict(kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1])),
    ("k3s1_pad1", (1, 2, 5, 5), dict(kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1])),
    ("ceil", (2, 2, 6, 6), dict(kernel=[3, 3], stride=[2, 2], ceil_mode=True)),
    ("ceil_pad_last_dropped", (1, 2, 5, 5), dict(kernel=[2, 2], stride=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ("ceil_pad_past_end", (1, 2, 6, 7), dict(kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ("ceil_stride_gt_kernel", (1, 2, 7, 8), dict(kernel=[2, 2], stride=[3, 3], ceil_mode=True)),
    ("rect", (2, 2, 7, 5), dict(kernel=[3, 2], stride=[2, 1], pads=[1, 0, 1, 1])),
    ("asym", (1, 2, 6, 6), dict(kernel=[3, 3], stride=[2, 2], pads=[0, 1, 1, 0])),
    ("asym_ceil", (1, 2, 7, 6), dict(kernel=[3, 3], stride=[2, 2], pads=[1, 0, 0, 1], ceil_mode=True)),
    ("asym_ceil_drop", (1, 2, 4, 5), dict(kernel=[2, 2], stride=[2, 2], pads=[0, 0, 1, 1], ceil_mode=True)),
    ("img1x1", (2, 3, 1, 1), dict(kernel=[1, 1])),
    ("img1x1_k3_pad1", (2, 3, 1, 1), dict(kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1])),
    ("whole_image", (2, 3, 5, 7), dict(kernel=[5, 7])),
    ("pad_over_half_kernel", (1, 2, 5, 6), dict(kernel=[3, 2], stride=[2, 1], pads=[2, 1, 2, 1])),
]

GAP_SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (1, 4, 3, 3)]

# id, x shape, attrs
LRN_CASES = [
    ("size5", (2, 7, 3, 4), dict(size=5, alpha=0.5, beta=0.75, bias=1.0)),
    ("size2_even", (2, 4, 3, 3), dict(size=2, alpha=0.3, beta=0.6, bias=2.0)),
    ("size4_even", (1, 6, 2, 3), dict(size=4, alpha=1.0, beta=0.75, bias=1.0)),
    ("size5_C3", (2, 3, 2, 2), dict(size=5, alpha=1.0)),
    ("size7_C2", (1, 2, 2, 2), dict(size=7, alpha=2.0, beta=0.5)),
    ("size3_C1", (2, 1, 3, 3), dict(size=3, alpha=1.0)),
    ("size1", (1, 3, 2, 2), dict(size=1, alpha=0.5)),
    ("defaults", (2, 5, 3, 3), dict(size=5)),
]


def _ids(cases):
    return [c[0] for c in cases]


def conv_inputs(x_shape, attrs, bias, dtype, seed=0):
    op = get_op("Conv2d")
    rng = np.random.default_rng(seed)
    shapes = op.param_shapes(normalize_attrs(op, attrs), x_shape)
    xs = [rng.standard_normal(x_shape), rng.standard_normal(shapes["weight"]) * 0.5]
    if bias:
        xs.append(rng.standard_normal(shapes["bias"]))
    return [v.astype(dtype) for v in xs]


def tie_free(shape, dtype, seed=0):
    """Distinct values (spacing >= 0.05): max-pool argmaxes are unambiguous under +-eps."""
    n = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(n)
    return ((perm - n / 2) * 0.05).reshape(shape).astype(dtype)


def pool_attrs(op_name, attrs, cip):
    return dict(attrs, count_include_pad=cip) if op_name == "AveragePool" else dict(attrs)


POOL_GRID = ([("MaxPool", None) + c for c in POOL_CASES]
             + [("AveragePool", cip) + c for cip in (False, True) for c in POOL_CASES])
POOL_IDS = [f"{op}-{'' if cip is None else ('cip-' if cip else 'nocip-')}{c[0]}" for op, cip, *c in POOL_GRID]


def pool_input(op_name, shape, dtype):
    if op_name == "MaxPool":
        return tie_free(shape, dtype)
    return np.random.default_rng(3).standard_normal(shape).astype(dtype)


def infer_shape(op_name, attrs, shapes):
    op = get_op(op_name)
    return tuple(op.infer(normalize_attrs(op, attrs), shapes)[0])


# ----------------------------------------------------------------------------- torch references
def torch_conv(attrs):
    import torch.nn.functional as F

    a = normalize_attrs(get_op("Conv2d"), attrs)
    pt, pl, pb, pr = a["pads"]

    def fn(x, w, b=None):
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=a["stride"], padding=0,
                        dilation=a["dilation"], groups=a["groups"])
    return fn


def torch_pool(op_name, attrs, x_shape):
    """torch max_pool2d / avg_pool2d. Symmetric pads <= kernel // 2 go to torch directly; other
    pads are applied with F.pad first (then torch's ceil-mode rule sees the padded size, so its
    output may have one more row/col than ours, cropped here to our inferred shape)."""
    import torch
    import torch.nn.functional as F

    a = normalize_attrs(get_op(op_name), attrs)
    k, ceil = a["kernel"], a["ceil_mode"]
    s = a["stride"] or k
    pt, pl, pb, pr = a["pads"]
    oh, ow = infer_shape(op_name, attrs, [x_shape])[2:]
    symmetric = pt == pb and pl == pr and pt <= k[0] // 2 and pl <= k[1] // 2

    if op_name == "MaxPool":
        def fn(x):
            if symmetric:
                return F.max_pool2d(x, k, s, (pt, pl), ceil_mode=ceil)
            xp = F.pad(x, (pl, pr, pt, pb), value=float("-inf"))
            return F.max_pool2d(xp, k, s, 0, ceil_mode=ceil)[:, :, :oh, :ow]
        return fn

    cip = a["count_include_pad"]

    def fn(x):
        if symmetric:
            return F.avg_pool2d(x, k, s, (pt, pl), ceil_mode=ceil, count_include_pad=cip)
        xp = F.pad(x, (pl, pr, pt, pb))
        if cip:   # divisor = window clipped to the padded input = torch's rule on the pre-padded input
            y = F.avg_pool2d(xp, k, s, 0, ceil_mode=ceil, count_include_pad=True)
        else:     # window sum / number of real input elements in the window
            ones = F.pad(torch.ones_like(x[:1, :1]), (pl, pr, pt, pb))
            total = F.avg_pool2d(xp, k, s, 0, ceil_mode=ceil, divisor_override=1)
            count = F.avg_pool2d(ones, k, s, 0, ceil_mode=ceil, divisor_override=1)
            y = total / count
        return y[:, :, :oh, :ow]
    return fn


# ----------------------------------------------------------------------------- Conv2d
@pytest.mark.parametrize("name,x_shape,attrs,bias", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_fd(name, x_shape, attrs, bias):
    fd_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float64))


@pytest.mark.parametrize("name,x_shape,attrs,bias", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_torch(name, x_shape, attrs, bias):
    pytest.importorskip("torch")
    inputs = conv_inputs(x_shape, attrs, bias, np.float32)
    ys, grads = torch_check("Conv2d", attrs, inputs, torch_conv(attrs))
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("name,x_shape,attrs,bias", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv_infer_matches_forward(name, x_shape, attrs, bias):
    inputs = conv_inputs(x_shape, attrs, bias, np.float64)
    op, a, ys, _, _ = run_forward("Conv2d", attrs, inputs)
    assert tuple(op.infer(a, [x.shape for x in inputs])) == (ys[0].shape,)
    assert ys[0].dtype == np.float64
    n, c = x_shape[:2]
    k, p, q = ys[0].shape[1:]
    r, s = a["kernel"]
    assert op.flops(a, [x.shape for x in inputs], [ys[0].shape]) == 2 * n * k * p * q * (c // a["groups"]) * r * s


def test_conv_param_shapes_and_flops():
    op = get_op("Conv2d")
    a = normalize_attrs(op, dict(out_channels=6, kernel=[3, 2], groups=2))
    assert op.param_shapes(a, (2, 4, 7, 5)) == {"weight": (6, 2, 3, 2), "bias": (6,)}
    assert op.infer(a, [(2, 4, 7, 5), (6, 2, 3, 2), (6,)]) == [(2, 6, 5, 4)]
    assert op.flops(a, [(2, 4, 7, 5), (6, 2, 3, 2)], [(2, 6, 5, 4)]) == 2 * 2 * 6 * 5 * 4 * 2 * 3 * 2
    assert a == {"out_channels": 6, "kernel": (3, 2), "stride": (1, 1), "pads": (0, 0, 0, 0),
                 "dilation": (1, 1), "groups": 2}


@pytest.mark.parametrize("case", ["stride2_pad1", "groups2", "depthwise_mult2", "mixed_groups2"])
def test_conv_needs_subsets(case):
    """Backward returns None exactly where needs[i] is False and the same gradients otherwise."""
    _, x_shape, attrs, _ = next(c for c in CONV_CASES if c[0] == case)
    inputs = conv_inputs(x_shape, attrs, True, np.float64)
    op, a, ys, saved, ctx = run_forward("Conv2d", attrs, inputs)
    gy = np.random.default_rng(5).standard_normal(ys[0].shape)
    full = op.backward(a, saved, [gy], [True, True, True], ctx)
    for needs in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
        got = op.backward(a, saved, [gy], needs, ctx)
        assert len(got) == 3
        for g, f, need in zip(got, full, needs):
            if need:
                np.testing.assert_array_equal(g, f)
            else:
                assert g is None
    # no bias input at all: two gradients
    op, a, ys, saved, ctx = run_forward("Conv2d", attrs, inputs[:2])
    got = op.backward(a, saved, [gy], [True, True], ctx)
    assert len(got) == 2
    np.testing.assert_allclose(got[0], full[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], full[1], rtol=1e-12, atol=1e-12)


def test_conv_batch_chunking(monkeypatch):
    """A tiny column budget splits the batch into one image per chunk: same results."""
    _, x_shape, attrs, _ = next(c for c in CONV_CASES if c[0] == "mixed_groups2")
    x_shape = (5,) + x_shape[1:]
    inputs = conv_inputs(x_shape, attrs, True, np.float64)
    gy = np.random.default_rng(7).standard_normal(infer_shape("Conv2d", attrs, [x.shape for x in inputs]))
    ys, grads = run_backward("Conv2d", attrs, inputs, [gy])
    monkeypatch.setattr(conv_mod, "_COLS_BUDGET", 1)
    ys2, grads2 = run_backward("Conv2d", attrs, inputs, [gy])
    np.testing.assert_allclose(ys2[0], ys[0], rtol=1e-12, atol=1e-12)
    for g2, g in zip(grads2, grads):
        np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c[0] for c in CONV_CASES if c[0].startswith("depthwise")])
def test_conv_depthwise_fast_path_matches_grouped_gemm(case, monkeypatch):
    _, x_shape, attrs, bias = next(c for c in CONV_CASES if c[0] == case)
    inputs = conv_inputs(x_shape, attrs, bias, np.float64)
    gy = np.random.default_rng(8).standard_normal(infer_shape("Conv2d", attrs, [x.shape for x in inputs]))
    ys, grads = run_backward("Conv2d", attrs, inputs, [gy])
    monkeypatch.setattr(conv_mod, "_is_depthwise", lambda c, g: False)
    ys2, grads2 = run_backward("Conv2d", attrs, inputs, [gy])
    np.testing.assert_allclose(ys[0], ys2[0], rtol=1e-12, atol=1e-12)
    for g, g2 in zip(grads, grads2):
        np.testing.assert_allclose(g, g2, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- MaxPool / AveragePool
@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", POOL_GRID, ids=POOL_IDS)
def test_pool_fd(op_name, cip, name, x_shape, attrs):
    fd_check(op_name, pool_attrs(op_name, attrs, cip), [pool_input(op_name, x_shape, np.float64)])


@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", POOL_GRID, ids=POOL_IDS)
def test_pool_torch(op_name, cip, name, x_shape, attrs):
    pytest.importorskip("torch")
    a = pool_attrs(op_name, attrs, cip)
    ys, grads = torch_check(op_name, a, [pool_input(op_name, x_shape, np.float32)],
                            torch_pool(op_name, a, x_shape))
    assert grads[0].dtype == np.float32


@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", POOL_GRID, ids=POOL_IDS)
def test_pool_infer_matches_forward(op_name, cip, name, x_shape, attrs):
    a = pool_attrs(op_name, attrs, cip)
    _, _, ys, _, _ = run_forward(op_name, a, [pool_input(op_name, x_shape, np.float64)])
    assert infer_shape(op_name, a, [x_shape]) == ys[0].shape


@pytest.mark.parametrize("h,k,s,pads,ceil,want", [
    (6, 3, 2, (0, 0), False, 2), (6, 3, 2, (0, 0), True, 3),     # ceil adds a partial window
    (5, 2, 2, (1, 1), False, 3), (5, 2, 2, (1, 1), True, 3),     # ceil window would start in the end pad
    (6, 3, 2, (1, 1), True, 4),                                  # last window runs past the padded end
    (4, 2, 2, (0, 1), True, 2),                                  # window starting in the end pad dropped
    (7, 3, 3, (0, 0), False, 2), (7, 3, 3, (0, 0), True, 3),
    (1, 1, 1, (0, 0), False, 1), (3, 3, 2, (0, 0), True, 1),
])
def test_pool_output_size(h, k, s, pads, ceil, want):
    attrs = dict(kernel=[k, k], stride=[s, s], pads=[pads[0], 0, pads[1], 0], ceil_mode=ceil)
    assert infer_shape("MaxPool", attrs, [(1, 1, h, 4 + k)])[2] == want


def test_pool_stride_defaults_to_kernel():
    for name in ("MaxPool", "AveragePool"):
        a = normalize_attrs(get_op(name), dict(kernel=[2, 3]))
        assert a["stride"] is None and a["pads"] == (0, 0, 0, 0) and a["ceil_mode"] is False
        assert get_op(name).infer(a, [(1, 1, 8, 9)]) == [(1, 1, 4, 3)]
        assert normalize_attrs(get_op(name), dict(kernel=[2, 3], stride=None))["stride"] is None
    assert normalize_attrs(get_op("AveragePool"), dict(kernel=[2, 2]))["count_include_pad"] is False


def test_maxpool_ties_go_to_first_max():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 1.0     # tie in window (0:2, 0:2): row-major first is (1, 0)
    ys, (dx,) = run_backward("MaxPool", dict(kernel=[2, 2]), [x], [np.ones((1, 1, 2, 2))])
    np.testing.assert_array_equal(ys[0][0, 0], [[1, 0], [0, 0]])
    want = np.zeros((4, 4))
    want[1, 0] = 1.0                          # the tied (1, 1) gets nothing
    want[0, 2] = want[2, 0] = want[2, 2] = 1.0  # all-zero windows: their first element
    np.testing.assert_array_equal(dx[0, 0], want)


def test_avgpool_count_include_pad_divisors():
    """4x4 ones, k3 s2 pad1 ceil: windows start at -1, 1, 3; the last runs past the padded end (5)."""
    x = np.ones((1, 1, 4, 4))
    a = dict(kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)
    (y_in,) = run_forward("AveragePool", dict(a, count_include_pad=True), [x])[2]
    (y_ex,) = run_forward("AveragePool", dict(a, count_include_pad=False), [x])[2]
    rows_in = np.array([3, 3, 2])            # min(start + 3, 4 + 1) - start
    rows_real = np.array([2, 3, 1])          # real input rows in the window
    np.testing.assert_allclose(y_in[0, 0], np.outer(rows_real, rows_real) / np.outer(rows_in, rows_in))
    np.testing.assert_allclose(y_ex[0, 0], np.ones((3, 3)))


# ----------------------------------------------------------------------------- GlobalAveragePool
@pytest.mark.parametrize("shape", GAP_SHAPES)
def test_gap_fd(shape):
    fd_check("GlobalAveragePool", {}, [np.random.default_rng(0).standard_normal(shape)])


@pytest.mark.parametrize("shape", GAP_SHAPES)
def test_gap_torch(shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    torch_check("GlobalAveragePool", {}, [x], lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1))


@pytest.mark.parametrize("shape", GAP_SHAPES)
def test_gap_infer_matches_forward(shape):
    _, _, ys, _, _ = run_forward("GlobalAveragePool", {}, [np.ones(shape)])
    assert infer_shape("GlobalAveragePool", {}, [shape]) == ys[0].shape == shape[:2] + (1, 1)


# ----------------------------------------------------------------------------- LRN
@pytest.mark.parametrize("name,x_shape,attrs", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_fd(name, x_shape, attrs):
    fd_check("LRN", attrs, [np.random.default_rng(0).standard_normal(x_shape) * 1.5])


@pytest.mark.parametrize("name,x_shape,attrs", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_torch(name, x_shape, attrs):
    torch = pytest.importorskip("torch")
    a = normalize_attrs(get_op("LRN"), attrs)
    x = (np.random.default_rng(1).standard_normal(x_shape) * 1.5).astype(np.float32)
    def lrn(t):
        return torch.nn.functional.local_response_norm(t, a["size"], alpha=a["alpha"], beta=a["beta"], k=a["bias"])

    if a["size"] % 2:
        ref = lrn
    else:   # torch's even window is OPS.md's mirrored across channels (see test_lrn_window_is_ops_md)
        def ref(t):
            return lrn(t.flip(1)).flip(1)
    ys, grads = torch_check("LRN", attrs, [x], ref)
    assert grads[0].dtype == np.float32


@pytest.mark.parametrize("name,x_shape,attrs", LRN_CASES, ids=_ids(LRN_CASES))
def test_lrn_infer_matches_forward(name, x_shape, attrs):
    _, _, ys, _, _ = run_forward("LRN", attrs, [np.ones(x_shape)])
    assert infer_shape("LRN", attrs, [x_shape]) == ys[0].shape


def test_lrn_window_is_ops_md():
    """size 2: channel c normalises over c and c+1 (OPS.md/ONNX: c-floor(1/2) .. c+ceil(1/2))."""
    x = np.zeros((1, 3, 1, 1))
    x[0, 1] = 2.0
    attrs = dict(size=2, alpha=2.0, beta=1.0, bias=1.0)
    op, a, (y,), saved, ctx = run_forward("LRN", attrs, [x])
    # S = [4, 4, 0]: channel 0 sees channel 1; channel 2 does not
    np.testing.assert_allclose(y[0, :, 0, 0], [0.0, 2.0 / (1 + 4.0), 0.0])
    (dx,) = op.backward(a, saved, [np.array([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)], [True], ctx)
    # y0 = x0 / (1 + x0² + x1²): d y0 / d x0 = 1 / 5 at x0 = 0; d y0 / d x1 = -x0·2·x1 / d² = 0
    np.testing.assert_allclose(dx[0, :, 0, 0], [0.2, 0.0, 0.0])
    x = np.zeros((1, 3, 1, 1))
    x[0, 0] = 2.0
    (y,) = run_forward("LRN", attrs, [x])[2]
    np.testing.assert_allclose(y[0, :, 0, 0], [2.0 / 5.0, 0.0, 0.0])


def test_lrn_even_size_differs_from_torch():
    """Documents the one known gap: torch's even-size window is one channel lower."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((1, 4, 2, 2))
    (y,) = run_forward("LRN", dict(size=2, alpha=1.0), [x])[2]
    t = torch.nn.functional.local_response_norm(torch.from_numpy(x), 2, alpha=1.0).numpy()
    assert not np.allclose(y, t)
    t_mirrored = torch.nn.functional.local_response_norm(torch.from_numpy(x).flip(1), 2, alpha=1.0).flip(1)
    np.testing.assert_allclose(y, t_mirrored.numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- bad nodes
def _infer_error(op_name, attrs, shapes):
    op = get_op(op_name)
    with pytest.raises(OpError) as ei:
        op.infer(normalize_attrs(op, attrs), shapes)
    return ei.value


CONV = dict(out_channels=4, kernel=[3, 3])


@pytest.mark.parametrize("attrs,shapes,field,words", [
    (CONV, [(1, 3, 5, 5), (4, 3, 3, 2)], "weight", "(4, 3, 3, 3)"),
    (CONV, [(1, 3, 5, 5), (4, 3, 3, 3), (3,)], "bias", "(4,)"),
    (dict(CONV, groups=2), [(1, 4, 5, 5), (4, 4, 3, 3)], "weight", "(4, 2, 3, 3)"),
    (dict(CONV, groups=2), [(1, 3, 5, 5), (4, 1, 3, 3)], "x", "groups"),
    (dict(CONV, out_channels=3, groups=2), [(1, 4, 5, 5), (3, 2, 3, 3)], "out_channels", "groups"),
    (CONV, [(1, 3, 2, 2), (4, 3, 3, 3)], "x", "output would be 0x0"),
    (dict(CONV, dilation=[2, 1]), [(1, 3, 4, 5), (4, 3, 3, 3)], "x", "kernel 5x3"),
    (CONV, [(3, 5, 5), (4, 3, 3, 3)], "x", "rank 4"),
])
def test_conv_infer_rejects(attrs, shapes, field, words):
    err = _infer_error("Conv2d", attrs, shapes)
    assert err.field == field
    assert words in str(err)
    if field != "out_channels":
        assert isinstance(err, ShapeError)


def test_conv_padding_rescues_small_input():
    assert infer_shape("Conv2d", dict(CONV, pads=[1, 0, 0, 1]), [(1, 3, 2, 2), (4, 3, 3, 3)]) == (1, 4, 1, 1)


def test_conv_forward_rejects_misshaped_weight():
    """forward validates too: a wrong weight never reaches the strided views."""
    op = get_op("Conv2d")
    with pytest.raises(ShapeError) as ei:
        op.forward(normalize_attrs(op, CONV), [np.ones((1, 3, 5, 5)), np.ones((4, 3, 3, 2))], Ctx())
    assert ei.value.field == "weight"


@pytest.mark.parametrize("op_name,attrs,field", [
    ("Conv2d", dict(CONV, stride=[0, 1]), "stride"),
    ("Conv2d", dict(CONV, kernel=[3, 3, 3]), "kernel"),
    ("Conv2d", dict(CONV, groups=0), "groups"),
    ("Conv2d", dict(CONV, pads=[1, 1, -1, 1]), "pads"),
    ("Conv2d", dict(CONV, pads=[1, 1]), "pads"),
    ("Conv2d", dict(CONV, dilation=[1, 0]), "dilation"),
    ("Conv2d", dict(kernel=[3, 3]), "out_channels"),
    ("Conv2d", dict(CONV, padding=[1, 1]), "padding"),
    ("MaxPool", dict(kernel=[2, 2], stride=[0, 2]), "stride"),
    ("MaxPool", dict(kernel=[0, 2]), "kernel"),
    ("MaxPool", dict(kernel=[2, 2], ceil_mode=1), "ceil_mode"),
    ("AveragePool", dict(kernel=[2, 2], count_include_pad="yes"), "count_include_pad"),
    ("AveragePool", dict(stride=[2, 2]), "kernel"),
    ("LRN", dict(size=0), "size"),
    ("LRN", dict(size=5, alpha="big"), "alpha"),
    ("GlobalAveragePool", dict(kernel=[2, 2]), "kernel"),
])
def test_bad_attributes(op_name, attrs, field):
    with pytest.raises(OpError) as ei:
        normalize_attrs(get_op(op_name), attrs)
    assert ei.value.field == field
    assert field in str(ei.value)


@pytest.mark.parametrize("op_name,attrs,shape,field,words", [
    ("MaxPool", dict(kernel=[3, 3]), (1, 2, 2, 5), "x", "smaller than the pooling kernel"),
    ("AveragePool", dict(kernel=[3, 3], pads=[0, 0, 1, 0]), (1, 2, 1, 5), "x", "smaller than the pooling kernel"),
    ("MaxPool", dict(kernel=[3, 3], pads=[3, 0, 0, 0]), (1, 2, 9, 9), "pads", "smaller than the kernel"),
    ("AveragePool", dict(kernel=[2, 2], pads=[0, 0, 0, 2]), (1, 2, 9, 9), "pads", "smaller than the kernel"),
    ("AveragePool", dict(kernel=[1, 1], pads=[0, 1, 0, 0]), (1, 2, 9, 9), "pads", "smaller than the kernel"),
    ("MaxPool", dict(kernel=[2, 2]), (2, 9, 9), "x", "rank 4"),
    ("GlobalAveragePool", {}, (2, 9), "x", "rank 4"),
    ("LRN", dict(size=3), (2, 9), "x", "rank 4"),
])
def test_pool_lrn_infer_rejects(op_name, attrs, shape, field, words):
    err = _infer_error(op_name, attrs, [shape])
    assert err.field == field
    assert words in str(err)
