"""Gemm, BatchNorm, Add/Sub/Mul/Div, Dropout, Flatten/Reshape/Concat/Pad, Softmax, SoftmaxCrossEntropy.

(a) fd_check in float64, (b) torch in float32, (c) BN running statistics vs torch,
(d) error cases, (e) infer() shapes == forward shapes.
"""
import numpy as np

from device_agent.ops.dropout import draw_seed, hash_uniform
import pytest

from device_agent.ops import Ctx, OpError, ShapeError, get_op, normalize_attrs
from device_agent.ops.elementwise import unbroadcast
from opcheck import fd_check, infer, raises, run_backward, run_forward, torch_check


def rnd(shape, seed=0, dtype=np.float64, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ============================================================================= Gemm
GEMM_CASES = [((1, 3), 2, True), ((4, 5), 3, True), ((3, 7), 1, False), ((2, 1), 4, True)]


@pytest.mark.parametrize("xs,m,bias", GEMM_CASES)
def test_gemm_fd(xs, m, bias):
    ins = [rnd(xs, 1), rnd((m, xs[1]), 2)] + ([rnd((m,), 3)] if bias else [])
    fd_check("Gemm", {"out_features": m}, ins)


@pytest.mark.parametrize("xs,m,bias", GEMM_CASES)
def test_gemm_torch(xs, m, bias):
    torch = pytest.importorskip("torch")
    ins = [rnd(xs, 1, np.float32), rnd((m, xs[1]), 2, np.float32)]
    ins += [rnd((m,), 3, np.float32)] if bias else []
    torch_check("Gemm", {"out_features": m}, ins, torch.nn.functional.linear)


def test_gemm_shapes_flops_and_errors():
    op = get_op("Gemm")
    a = normalize_attrs(op, {"out_features": 3})
    assert op.param_shapes(a, (8, 5)) == {"weight": (3, 5), "bias": (3,)}
    assert op.infer(a, [(8, 5), (3, 5), (3,)]) == [(8, 3)]
    assert op.infer(a, [(8, 5), (3, 5)]) == [(8, 3)]
    assert op.flops(a, [(8, 5), (3, 5), (3,)], [(8, 3)]) == 2 * 8 * 3 * 5
    raises(ShapeError, "weight", op.infer, a, [(8, 5), (3, 4), (3,)])
    raises(ShapeError, "weight", op.infer, a, [(8, 5), (5, 3)])
    raises(ShapeError, "bias", op.infer, a, [(8, 5), (3, 5), (4,)])
    raises(ShapeError, "x", op.infer, a, [(8, 5, 1), (3, 5)])
    raises(ShapeError, "weight", run_forward, "Gemm", {"out_features": 3}, [rnd((8, 5)), rnd((3, 4))])
    raises(OpError, "out_features", normalize_attrs, op, {"out_features": 0})
    raises(OpError, "out_features", normalize_attrs, op, {})


def test_gemm_needs():
    op, a, _, saved, ctx = run_forward("Gemm", {"out_features": 2}, [rnd((3, 4)), rnd((2, 4)), rnd((2,))])
    g = op.backward(a, saved, [rnd((3, 2))], [True, False, False], ctx)
    assert g[0].shape == (3, 4) and g[1] is None and g[2] is None


# ============================================================================= BatchNorm
def bn_inputs(xshape, seed=0, dtype=np.float64):
    c = xshape[1]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(xshape) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (rng.standard_normal(c) * 0.3).astype(dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    return [x, w, b, rm, rv]


def bn_ctx(batch):
    return lambda: Ctx(bn_batch_stats=batch)


def fd_partial(op_name, attrs, inputs, check, ctx_factory=Ctx, eps=1e-6, rtol=1e-5, atol=1e-8,
               max_points=40, seed=0):
    """fd_check restricted to the input indices in `check` (BN: the buffers get no gradient)."""
    inputs = [np.array(x, copy=True) for x in inputs]
    rng = np.random.default_rng(seed)
    ys = run_forward(op_name, attrs, inputs, ctx_factory())[2]
    rs = [rng.standard_normal(y.shape) for y in ys]
    _, grads = run_backward(op_name, attrs, inputs, rs, ctx_factory)

    def loss():
        out = run_forward(op_name, attrs, inputs, ctx_factory())[2]
        return sum(float(np.sum(y * r)) for y, r in zip(out, rs))

    for i in check:
        x, g = inputs[i], grads[i]
        assert g is not None and g.shape == x.shape
        flat = x.reshape(-1)
        idx = np.arange(x.size) if x.size <= max_points else rng.choice(x.size, max_points, replace=False)
        for j in idx:
            old = flat[j]
            flat[j] = old + eps
            lp = loss()
            flat[j] = old - eps
            lm = loss()
            flat[j] = old
            num, ana = (lp - lm) / (2 * eps), g.reshape(-1)[j]
            assert abs(num - ana) <= atol + rtol * max(abs(num), abs(ana), 1.0), (
                f"{op_name} input {i} element {j}: analytic {ana:.10g} vs numeric {num:.10g}")
    return grads


BN_SHAPES = [(4, 3), (2, 1), (1, 3, 2, 3), (2, 3, 4, 5), (3, 2, 1, 1)]


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("xshape", BN_SHAPES)
def test_bn_fd(xshape, batch):
    attrs = {"eps": 1e-3, "momentum": 0.2}
    grads = fd_partial("BatchNorm", attrs, bn_inputs(xshape, 1), [0, 1, 2], bn_ctx(batch))
    assert grads[3] is None and grads[4] is None


def _torch_bn(ins, attrs, batch):
    """(y, grads of x/w/b, running_mean, running_var after the call) from torch, float32."""
    import torch
    rs = np.random.default_rng(5).standard_normal(ins[0].shape).astype(ins[0].dtype)
    x, w, b = (torch.from_numpy(a.copy()).requires_grad_(True) for a in ins[:3])
    rm, rv = (torch.from_numpy(a.copy()) for a in ins[3:])
    y = torch.nn.functional.batch_norm(x, rm, rv, w, b, training=batch, momentum=attrs["momentum"],
                                       eps=attrs["eps"])
    y.backward(torch.from_numpy(rs))
    return rs, y.detach().numpy(), [t.grad.numpy() for t in (x, w, b)], rm.numpy(), rv.numpy()


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("xshape", BN_SHAPES)
def test_bn_torch(xshape, batch):
    pytest.importorskip("torch")
    attrs = {"eps": 1e-5, "momentum": 0.1}
    ins = bn_inputs(xshape, 2, np.float32)
    rs, ty, tgrads, trm, trv = _torch_bn(ins, attrs, batch)
    op, a, (y,), saved, ctx = run_forward("BatchNorm", attrs, ins, Ctx(bn_batch_stats=batch))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ty, rtol=1e-4, atol=1e-5)
    grads = op.backward(a, saved, [rs], [True] * 5, ctx)
    for g, tg in zip(grads[:3], tgrads):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, tg, rtol=1e-4, atol=1e-4)
    assert grads[3] is None and grads[4] is None
    # (c) the running statistics torch mutated in place
    if batch:
        assert set(ctx.updates) == {"running_mean", "running_var"}
        for k, t in (("running_mean", trm), ("running_var", trv)):
            assert ctx.updates[k].dtype == np.float32 and ctx.updates[k].shape == t.shape
            np.testing.assert_allclose(ctx.updates[k], t, rtol=1e-5, atol=1e-6)
    else:
        assert ctx.updates == {}
        np.testing.assert_array_equal(trm, ins[3])   # torch leaves them alone too
    np.testing.assert_array_equal(ins[3], bn_inputs(xshape, 2, np.float32)[3])  # inputs untouched


def test_bn_running_stats_default_attrs_exact():
    """The update rule itself, in float64: (1-m) r + m stat, unbiased variance."""
    ins = bn_inputs((3, 2, 2, 2), 3)
    ctx = run_forward("BatchNorm", {}, ins, Ctx(bn_batch_stats=True))[4]
    x, rm, rv = ins[0], ins[3], ins[4]
    np.testing.assert_allclose(ctx.updates["running_mean"], 0.9 * rm + 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(ctx.updates["running_var"], 0.9 * rv + 0.1 * x.var(axis=(0, 2, 3), ddof=1))


def test_bn_shapes_and_errors():
    op = get_op("BatchNorm")
    a = normalize_attrs(op, {})
    assert a == {"eps": 1e-5, "momentum": 0.1}
    assert op.params == ("weight", "bias") and op.buffers == ("running_mean", "running_var")
    assert op.param_shapes(a, (2, 3, 4, 4)) == {k: (3,) for k in
                                                ("weight", "bias", "running_mean", "running_var")}
    c3 = [(3,)] * 4
    assert op.infer(a, [(2, 3, 4, 4)] + c3) == [(2, 3, 4, 4)]
    assert op.infer(a, [(1, 3)] + c3) == [(1, 3)]          # batch 1 is fine for shape inference
    raises(ShapeError, "weight", op.infer, a, [(2, 3, 4, 4), (4,), (3,), (3,), (3,)])
    raises(ShapeError, "running_var", op.infer, a, [(2, 3), (3,), (3,), (3,), (3, 1)])
    raises(ShapeError, "x", op.infer, a, [(2, 3, 4)] + c3)
    raises(OpError, "momentum", op.infer, normalize_attrs(op, {"momentum": 1.5}), [(2, 3)] + c3)
    raises(OpError, "eps", normalize_attrs, op, {"eps": -1e-5})
    # one value per channel: torch refuses batch statistics too
    raises(ShapeError, "x", run_forward, "BatchNorm", {}, bn_inputs((1, 3), 0), Ctx(bn_batch_stats=True))
    run_forward("BatchNorm", {}, bn_inputs((1, 3), 0), Ctx(bn_batch_stats=False))


# ============================================================================= Add Sub Mul Div
BCAST = [((2, 3), (2, 3)), ((2, 3, 4, 5), (2, 3, 1, 1)), ((3, 1, 1), (2, 3, 4, 5)), ((1,), (2, 3)),
         ((2, 3), (1,)), ((4, 1), (1, 5)), ((), (2, 3)), ((1, 1, 1, 1), (1, 1, 1, 1))]
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}


def _binary_inputs(op, sa, sb, seed, dtype):
    a, b = rnd(sa, seed, dtype), rnd(sb, seed + 1, dtype)
    if op == "Div":   # keep the divisor away from 0
        b = (np.sign(b) + (b == 0)) * (np.abs(b) + 0.5)
    return [np.asarray(a, dtype), np.asarray(b, dtype)]


@pytest.mark.parametrize("sa,sb", BCAST)
@pytest.mark.parametrize("op", BINARY)
def test_binary_fd(op, sa, sb):
    fd_check(op, {}, _binary_inputs(op, sa, sb, 1, np.float64))


@pytest.mark.parametrize("sa,sb", BCAST)
@pytest.mark.parametrize("op", BINARY)
def test_binary_torch(op, sa, sb):
    torch = pytest.importorskip("torch")
    torch_check(op, {}, _binary_inputs(op, sa, sb, 2, np.float32), getattr(torch, BINARY[op]))


def test_unbroadcast():
    g = np.ones((2, 3, 4, 5))
    assert unbroadcast(g, (2, 3, 1, 1)).shape == (2, 3, 1, 1)
    assert np.all(unbroadcast(g, (2, 3, 1, 1)) == 20)
    assert np.all(unbroadcast(g, (3, 1, 1)) == 40)
    assert unbroadcast(g, ()).shape == () and float(unbroadcast(g, ())) == 120
    assert np.all(unbroadcast(g, (1,)) == 120)
    assert unbroadcast(g, (2, 3, 4, 5)) is g


def test_binary_errors_and_needs():
    for op in BINARY:
        raises(ShapeError, "b", infer, op, {}, [(2, 3), (4,)])
        raises(ShapeError, "b", infer, op, {}, [(2, 3, 4, 5), (2, 4, 1, 1)])
        raises(ShapeError, "b", run_forward, op, {}, [rnd((2, 3)), rnd((2,))])
    o, a, _, saved, ctx = run_forward("Mul", {}, [rnd((2, 3, 4, 4)), rnd((2, 3, 1, 1))])
    g = o.backward(a, saved, [rnd((2, 3, 4, 4))], [False, True], ctx)
    assert g[0] is None and g[1].shape == (2, 3, 1, 1)


# ============================================================================= Dropout
def train_ctx(seed=7):
    return lambda: Ctx(training=True, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.0])
@pytest.mark.parametrize("shape", [(1,), (2, 3), (2, 3, 5, 5)])
def test_dropout_fd(ratio, shape):
    fd_check("Dropout", {"ratio": ratio}, [rnd(shape, 1)], ctx_factory=train_ctx())
    fd_check("Dropout", {"ratio": ratio}, [rnd(shape, 1)])        # eval: identity


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.0])
def test_dropout_vs_mask_formula(ratio):
    torch = pytest.importorskip("torch")
    x = rnd((2, 3, 5, 5), 2, np.float32)
    seed = draw_seed(np.random.default_rng(7))
    mask = (hash_uniform(seed, x.size) >= ratio).reshape(x.shape)   # the mask our op draws
    m = torch.from_numpy(mask)
    torch_check("Dropout", {"ratio": ratio}, [x], lambda t: t * m / (1 - ratio), ctx_factory=train_ctx())
    torch_check("Dropout", {"ratio": ratio}, [x], lambda t: t * 1)  # not training: identity


def test_dropout_mask_statistics_and_determinism():
    x = np.ones((200, 1000), np.float32)
    for ratio in (0.1, 0.5, 0.8):
        y1 = run_forward("Dropout", {"ratio": ratio}, [x], train_ctx(7)())[2][0]
        y2 = run_forward("Dropout", {"ratio": ratio}, [x], train_ctx(7)())[2][0]
        y3 = run_forward("Dropout", {"ratio": ratio}, [x], train_ctx(8)())[2][0]
        assert y1.dtype == np.float32
        np.testing.assert_array_equal(y1, y2)                      # same seed, same mask
        assert not np.array_equal(y1, y3)
        kept = y1 != 0
        assert abs(kept.mean() - (1 - ratio)) < 0.005              # 200k draws: sd ~ 0.001
        np.testing.assert_allclose(y1[kept], 1 / (1 - ratio), rtol=1e-6)
        assert abs(y1.mean() - 1) < 0.03                            # inverted dropout keeps E[y]
    # successive calls on one ctx draw fresh masks
    ctx = train_ctx(7)()
    a = run_forward("Dropout", {}, [x], ctx)[2][0]
    b = run_forward("Dropout", {}, [x], ctx)[2][0]
    assert not np.array_equal(a, b)
    # eval mode is the identity and draws nothing
    ctx = Ctx(training=False, rng=np.random.default_rng(7))
    y = run_forward("Dropout", {"ratio": 0.9}, [x], ctx)[2][0]
    np.testing.assert_array_equal(y, x)
    assert ctx.rng.random() == np.random.default_rng(7).random()


def test_hash_uniform_is_uniform_and_seeded():
    u = hash_uniform(123, 1 << 20)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.001
    hist = np.bincount((u * 16).astype(int), minlength=16) / u.size
    assert np.abs(hist - 1 / 16).max() < 0.002
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.005              # neighbours uncorrelated
    assert not np.array_equal(hash_uniform(124, 100), hash_uniform(123, 100))
    # pinned values: the OpenCL kernel must reproduce exactly these
    np.testing.assert_array_equal(hash_uniform(0, 3), hash_uniform(0, 5)[:3])
    assert (hash_uniform(0, 3) * 2 ** 24).astype(int).tolist() == [3194371, 15280721, 7999372]
    assert (hash_uniform(12345, 3) * 2 ** 24).astype(int).tolist() == [11756266, 1338, 8886360]


def test_dropout_attr_errors():
    op = get_op("Dropout")
    assert normalize_attrs(op, {}) == {"ratio": 0.5}
    raises(OpError, "ratio", normalize_attrs, op, {"ratio": -0.1})
    raises(OpError, "ratio", normalize_attrs, op, {"ratio": "half"})
    # ratio < 1 is beyond what the Attr schema can say (no upper bound): infer and forward check it
    raises(OpError, "ratio", op.infer, normalize_attrs(op, {"ratio": 1.0}), [(2, 3)])
    raises(OpError, "ratio", run_forward, "Dropout", {"ratio": 1.0}, [rnd((2, 3))], train_ctx()())


# ============================================================================= Flatten, Reshape
FLATTEN = [((2, 3, 4), 1), ((2, 3, 4), 0), ((2, 3, 4), -1), ((2, 3, 4), 3), ((1, 3, 1, 1), 1),
           ((2, 3, 4, 5), 2)]


@pytest.mark.parametrize("shape,axis", FLATTEN)
def test_flatten(shape, axis):
    torch = pytest.importorskip("torch")
    fd_check("Flatten", {"axis": axis}, [rnd(shape, 1)])
    (out,) = infer("Flatten", {"axis": axis}, [shape])
    a = axis + len(shape) if axis < 0 else axis               # ONNX: -1 = last axis
    assert out == (int(np.prod(shape[:a])), int(np.prod(shape[a:])))
    torch_check("Flatten", {"axis": axis}, [rnd(shape, 2, np.float32)], lambda t: t.reshape(out))
    if axis == 1:
        torch_check("Flatten", {}, [rnd(shape, 2, np.float32)], lambda t: torch.flatten(t, 1))


RESHAPE = [((2, 3, 4), (0, -1), (2, 12)), ((2, 3, 4), (-1,), (24,)), ((2, 3, 4), (0, 4, -1), (2, 4, 3)),
           ((2, 3, 4), (4, 0, 2), (4, 3, 2)), ((1, 6), (3, 1, 2), (3, 1, 2)), ((2, 3, 1, 1), (0, 0), (2, 3))]


@pytest.mark.parametrize("shape,spec,want", RESHAPE)
def test_reshape(shape, spec, want):
    pytest.importorskip("torch")
    assert infer("Reshape", {"shape": spec}, [shape]) == [want]
    fd_check("Reshape", {"shape": spec}, [rnd(shape, 1)])
    torch_check("Reshape", {"shape": spec}, [rnd(shape, 2, np.float32)], lambda t: t.reshape(want))


def test_reshape_and_flatten_errors():
    raises(ShapeError, "shape", infer, "Reshape", {"shape": [-1, -1]}, [(2, 3)])
    raises(ShapeError, "shape", infer, "Reshape", {"shape": [5, -1]}, [(2, 3)])
    raises(ShapeError, "shape", infer, "Reshape", {"shape": [4, 2]}, [(2, 3)])
    raises(ShapeError, "shape", infer, "Reshape", {"shape": [2, 3, 0]}, [(2, 3)])
    raises(ShapeError, "shape", run_forward, "Reshape", {"shape": [7]}, [rnd((2, 3))])
    raises(OpError, "shape", normalize_attrs, get_op("Reshape"), {"shape": [-2, 3]})
    raises(OpError, "shape", normalize_attrs, get_op("Reshape"), {})
    raises(ShapeError, "axis", infer, "Flatten", {"axis": 4}, [(2, 3, 4)])
    raises(ShapeError, "axis", infer, "Flatten", {"axis": -4}, [(2, 3, 4)])


# ============================================================================= Concat
CONCAT = [([(2, 1, 3), (2, 4, 3), (2, 2, 3)], 1), ([(2, 3, 1), (2, 3, 2), (2, 3, 4)], -1),
          ([(1, 2, 2, 2), (1, 3, 2, 2), (1, 1, 2, 2)], 1), ([(2, 3)], 0), ([(1, 3), (2, 3)], -2)]


@pytest.mark.parametrize("shapes,axis", CONCAT)
def test_concat(shapes, axis):
    torch = pytest.importorskip("torch")
    fd_check("Concat", {"axis": axis}, [rnd(s, i) for i, s in enumerate(shapes)])
    ins = [rnd(s, 10 + i, np.float32) for i, s in enumerate(shapes)]
    torch_check("Concat", {"axis": axis}, ins, lambda *ts: torch.cat(ts, dim=axis))


def test_concat_errors_and_needs():
    op = get_op("Concat")
    assert op.variadic and op.slot_names(3) == ["input0", "input1", "input2"]
    raises(ShapeError, "input2", infer, "Concat", {}, [(2, 1, 3), (2, 4, 3), (2, 2, 4)])
    raises(ShapeError, "input1", infer, "Concat", {"axis": -1}, [(2, 3), (2, 3, 1)])
    raises(ShapeError, "axis", infer, "Concat", {"axis": 2}, [(2, 3), (2, 3)])
    o, a, _, saved, ctx = run_forward("Concat", {}, [rnd((2, 1)), rnd((2, 2)), rnd((2, 3))])
    g = o.backward(a, saved, [rnd((2, 6))], [True, False, True], ctx)
    assert g[0].shape == (2, 1) and g[1] is None and g[2].shape == (2, 3)


# ============================================================================= Pad
PAD = [((2, 3, 4, 5), [0, 1, 2, 0, 1, 0, 1, 3]), ((3, 4), [2, 0, 1, 3]), ((1, 1, 3, 3), [0, 0, 2, 1, 0, 0, 0, 2]),
       ((5,), [3, 1])]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("shape,pads", PAD)
def test_pad_fd(shape, pads, mode):
    attrs = {"pads": pads, "mode": mode, "value": 0.7}
    fd_check("Pad", attrs, [rnd(shape, 1)])
    assert infer("Pad", attrs, [shape]) == [run_forward("Pad", attrs, [rnd(shape, 1)])[2][0].shape]


TORCH_MODE = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_torch(mode):
    torch = pytest.importorskip("torch")
    x = rnd((2, 3, 4, 5), 3, np.float32)
    t, l, b, r = 2, 1, 0, 3                                  # asymmetric, on H and W
    pads = [0, 0, t, l, 0, 0, b, r]                          # ONNX: begins (N,C,H,W), ends (N,C,H,W)
    kw = {"value": -1.5} if mode == "constant" else {}
    torch_check("Pad", {"pads": pads, "mode": mode, "value": -1.5}, [x],
                lambda u: torch.nn.functional.pad(u, (l, r, t, b), mode=TORCH_MODE[mode], **kw))
    if mode == "constant":                                   # all four axes, only torch's constant mode can
        pads = [1, 0, 2, 1, 0, 2, 0, 1]
        torch_check("Pad", {"pads": pads}, [x],
                    lambda u: torch.nn.functional.pad(u, (1, 1, 2, 0, 0, 2, 1, 0)))


def test_pad_backward_counts_copies():
    """Every input position's gradient = how many output positions copy it (g = 1)."""
    x = np.arange(4.0)
    _, (g,) = run_backward("Pad", {"pads": [3, 2], "mode": "reflect"}, [x], [np.ones(9)])
    np.testing.assert_array_equal(g, [1, 3, 3, 2])          # y = x[3 2 1 0 1 2 3 2 1]
    _, (g,) = run_backward("Pad", {"pads": [3, 2], "mode": "edge"}, [x], [np.ones(9)])
    np.testing.assert_array_equal(g, [4, 1, 1, 3])
    _, (g,) = run_backward("Pad", {"pads": [3, 2], "mode": "constant"}, [x], [np.ones(9)])
    np.testing.assert_array_equal(g, [1, 1, 1, 1])


def test_pad_errors():
    raises(ShapeError, "pads", infer, "Pad", {"pads": [0, 3, 0, 0], "mode": "reflect"}, [(2, 3)])
    raises(ShapeError, "pads", infer, "Pad", {"pads": [0, 0, 0, 4], "mode": "reflect"}, [(2, 3)])
    assert infer("Pad", {"pads": [0, 2, 0, 2], "mode": "reflect"}, [(2, 3)]) == [(2, 7)]
    assert infer("Pad", {"pads": [0, 3, 0, 0], "mode": "edge"}, [(2, 3)]) == [(2, 6)]
    raises(ShapeError, "pads", infer, "Pad", {"pads": [1, 1]}, [(2, 3)])
    raises(ShapeError, "pads", run_forward, "Pad", {"pads": [0, 3, 0, 0], "mode": "reflect"}, [rnd((2, 3))])
    op = get_op("Pad")
    raises(OpError, "pads", normalize_attrs, op, {"pads": [0, -1, 0, 0]})
    raises(OpError, "mode", normalize_attrs, op, {"pads": [0, 0], "mode": "wrap"})
    assert normalize_attrs(op, {"pads": [1, 2]}) == {"pads": (1, 2), "mode": "constant", "value": 0.0}


# ============================================================================= Softmax
SOFTMAX = [((2, 5), -1), ((2, 3, 4), 1), ((1, 1), -1), ((3, 4), 0), ((2, 3, 2, 2), -3)]


@pytest.mark.parametrize("shape,axis", SOFTMAX)
def test_softmax(shape, axis):
    torch = pytest.importorskip("torch")
    fd_check("Softmax", {"axis": axis}, [rnd(shape, 1, scale=2)])
    torch_check("Softmax", {"axis": axis}, [rnd(shape, 2, np.float32, 2)], lambda t: torch.softmax(t, axis))


def test_softmax_stable_and_errors():
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], np.float32)
    y = run_forward("Softmax", {}, [x])[2][0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    raises(ShapeError, "axis", infer, "Softmax", {"axis": 2}, [(2, 3)])


# ============================================================================= SoftmaxCrossEntropy
SCE = [(3, 5), (1, 4), (6, 2), (2, 1)]


def labels_for(n, k, seed=0):
    return np.random.default_rng(seed).integers(0, k, n).astype(np.int64)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,k", SCE)
def test_sce_fd(n, k, eps):
    fd_check("SoftmaxCrossEntropy", {"label_smoothing": eps}, [rnd((n, k), 1, scale=2), labels_for(n, k)])


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,k", SCE)
def test_sce_torch(n, k, eps):
    torch = pytest.importorskip("torch")
    ins = [rnd((n, k), 2, np.float32, 3), labels_for(n, k, 1)]
    ys, _ = torch_check("SoftmaxCrossEntropy", {"label_smoothing": eps}, ins,
                        lambda lg, lb: torch.nn.functional.cross_entropy(lg, lb, label_smoothing=eps))
    assert ys[0].shape == () and ys[0].dtype == np.float32 and isinstance(ys[0], np.ndarray)


def test_sce_large_logits_and_labels_untouched():
    torch = pytest.importorskip("torch")
    lg = np.array([[1000.0, -1000.0, 0.0], [50.0, 60.0, -80.0]], np.float32)
    lb = np.array([1, 1])
    ys, grads = run_backward("SoftmaxCrossEntropy", {"label_smoothing": 0.1}, [lg, lb], [np.float32(1)])
    want = torch.nn.functional.cross_entropy(torch.from_numpy(lg), torch.from_numpy(lb), label_smoothing=0.1)
    np.testing.assert_allclose(ys[0], want.numpy(), rtol=1e-6)
    assert np.all(np.isfinite(grads[0])) and grads[1] is None


def test_sce_errors():
    op = get_op("SoftmaxCrossEntropy")
    assert op.nondiff == ("labels",)
    a = normalize_attrs(op, {})
    assert a == {"label_smoothing": 0.0}
    assert op.infer(a, [(4, 10), (4,)]) == [()]
    raises(ShapeError, "labels", op.infer, a, [(4, 10), (3,)])
    raises(ShapeError, "labels", op.infer, a, [(4, 10), (4, 1)])
    raises(ShapeError, "logits", op.infer, a, [(4, 10, 1), (4,)])
    lg = rnd((3, 4))
    for bad in ([0, 4, 1], [0, -1, 1]):
        e = raises(ShapeError, "labels", run_forward, "SoftmaxCrossEntropy", {}, [lg, np.array(bad)])
        assert "outside [0, 4)" in str(e)
    raises(ShapeError, "labels", run_forward, "SoftmaxCrossEntropy", {}, [lg, np.array([0.0, 1.0, 2.0])])
    raises(OpError, "label_smoothing", normalize_attrs, op, {"label_smoothing": -0.1})
    raises(OpError, "label_smoothing", op.infer, normalize_attrs(op, {"label_smoothing": 1.0}), [(4, 10), (4,)])


# ============================================================================= (e) infer == forward
INFER_CASES = [
    ("Gemm", {"out_features": 3}, [(4, 5), (3, 5), (3,)]),
    ("Gemm", {"out_features": 2}, [(1, 7), (2, 7)]),
    ("BatchNorm", {}, [(2, 3, 4, 5), (3,), (3,), (3,), (3,)]),
    ("BatchNorm", {}, [(4, 6), (6,), (6,), (6,), (6,)]),
    ("Add", {}, [(2, 3, 4, 5), (2, 3, 1, 1)]), ("Sub", {}, [(3, 1, 1), (2, 3, 4, 5)]),
    ("Mul", {}, [(1,), (2, 3)]), ("Div", {}, [(4, 1), (1, 5)]), ("Add", {}, [(), (2,)]),
    ("Dropout", {"ratio": 0.3}, [(2, 3, 4)]),
    ("Flatten", {"axis": 1}, [(2, 3, 4, 5)]), ("Flatten", {"axis": 0}, [(2, 3)]),
    ("Reshape", {"shape": [0, -1]}, [(2, 3, 4, 5)]),
    ("Concat", {"axis": 1}, [(2, 1, 3), (2, 4, 3), (2, 2, 3)]), ("Concat", {"axis": -1}, [(2, 1), (2, 5)]),
    ("Pad", {"pads": [0, 0, 1, 2, 0, 0, 3, 0], "mode": "edge"}, [(1, 2, 4, 4)]),
    ("Softmax", {"axis": 1}, [(2, 3, 4)]),
    ("SoftmaxCrossEntropy", {}, [(3, 5), "labels"]),
]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("op,attrs,shapes", INFER_CASES)
def test_infer_matches_forward(op, attrs, shapes, training):
    ins = []
    for i, s in enumerate(shapes):
        if s == "labels":
            ins.append(labels_for(shapes[0][0], shapes[0][1]))
        else:
            ins.append(np.abs(rnd(s, i, np.float32)) + 0.5)    # positive: Div, BN running_var
    ctx = Ctx(training=training, bn_batch_stats=training, rng=np.random.default_rng(0))
    ys = run_forward(op, attrs, ins, ctx)[2]
    assert infer(op, attrs, [np.shape(x) for x in ins]) == [y.shape for y in ys]
    assert all(y.dtype == np.float32 for y in ys)


@pytest.mark.parametrize("op,attrs,shapes", INFER_CASES)
def test_no_grads_when_not_needed(op, attrs, shapes):
    ins = [labels_for(shapes[0][0], shapes[0][1]) if s == "labels" else np.abs(rnd(s, i)) + 0.5
           for i, s in enumerate(shapes)]
    ctx = Ctx(training=True, bn_batch_stats=True, rng=np.random.default_rng(0))
    o, a, ys, saved, ctx = run_forward(op, attrs, ins, ctx)
    grads = o.backward(a, saved, [np.ones_like(y) for y in ys], [False] * len(ins), ctx)
    assert len(grads) == len(ins) and all(g is None for g in grads)
