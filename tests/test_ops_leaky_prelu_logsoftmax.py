"""LeakyRelu, PRelu and LogSoftmax numpy references: float64 finite differences, PyTorch
(F.leaky_relu, F.prelu, F.log_softmax) forward and backward in float32, the kinks at x == 0,
shape inference and its errors."""
import numpy as np
import pytest

from device_agent.ops import Ctx, OpError, ShapeError, get_op, normalize_attrs
from opcheck import fd_check, run_backward, run_forward, torch_check

SHAPES = [(1,), (2, 3), (2, 3, 5, 5), (1, 1, 1, 1), (2, 4, 7), (1, 2, 3, 2, 2)]
ALPHAS = [0.01, 0.2, 0.0, -0.5, 1.5]


def rnd(shape, seed=0, scale=1.0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def away_from_zero(x, gap=1e-2):
    """fd needs smoothness: move entries within `gap` of the kink at 0 half a unit away."""
    x = np.array(x, copy=True)
    x[np.abs(x) < gap] = 0.5
    return x


# ============================================================================= LeakyRelu
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_leaky_fd(shape, alpha):
    fd_check("LeakyRelu", {"alpha": alpha}, [away_from_zero(rnd(shape, 1))])


@pytest.mark.torch
@pytest.mark.parametrize("alpha", ALPHAS)
def test_leaky_torch(alpha):
    torch = pytest.importorskip("torch")
    x = rnd((2, 3, 5, 5), 2, dtype=np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-30]
    torch_check("LeakyRelu", {"alpha": alpha}, [x],
                lambda t: torch.nn.functional.leaky_relu(t, negative_slope=alpha), atol=0, rtol=0)


def test_leaky_kink_and_defaults():
    a = normalize_attrs(get_op("LeakyRelu"), {})
    assert a == {"alpha": 0.01}
    x = np.array([-2.0, -0.0, 0.0, 3.0])
    ys, (g,) = run_backward("LeakyRelu", {"alpha": 0.1}, [x], [np.ones(4)])
    np.testing.assert_array_equal(ys[0], [-0.2, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(g, [0.1, 0.1, 0.1, 1.0])      # alpha at x == 0 (torch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaky_keeps_dtype(dtype):
    x = rnd((2, 3), 3, dtype=dtype)
    ys, (g,) = run_backward("LeakyRelu", {"alpha": 0.3}, [x], [np.ones_like(x)])
    assert ys[0].dtype == dtype and g.dtype == dtype
    np.testing.assert_allclose(ys[0], np.where(x > 0, x, 0.3 * x), rtol=1e-6)


def test_leaky_bad_alpha():
    with pytest.raises(OpError) as e:
        normalize_attrs(get_op("LeakyRelu"), {"alpha": "small"})
    assert e.value.field == "alpha"


# ============================================================================= PRelu
# id, x shape, slope shape
PRELU_CASES = [
    ("per_channel", (2, 3, 5, 5), (3,)),
    ("shared", (2, 3, 5, 5), (1,)),
    ("one_channel", (2, 1, 4, 4), (1,)),
    ("img1x1", (2, 4, 1, 1), (4,)),
    ("batch1_odd", (1, 3, 7, 5), (3,)),
    ("rank2", (3, 5), (5,)),
    ("rank2_shared", (3, 5), (1,)),
    ("rank3", (2, 4, 7), (4,)),
    ("rank5", (1, 2, 3, 2, 2), (2,)),
    ("rank1_shared", (6,), (1,)),
]
PRELU_IDS = [c[0] for c in PRELU_CASES]


def prelu_inputs(x_shape, s_shape, dtype=np.float64, seed=4):
    x = away_from_zero(rnd(x_shape, seed))
    slope = np.random.default_rng(seed + 1).uniform(-0.5, 0.8, s_shape)
    return [x.astype(dtype), slope.astype(dtype)]


@pytest.mark.parametrize("name,x_shape,s_shape", PRELU_CASES, ids=PRELU_IDS)
def test_prelu_fd(name, x_shape, s_shape):
    grads = fd_check("PRelu", {}, prelu_inputs(x_shape, s_shape))
    assert grads[1].shape == s_shape


@pytest.mark.torch
@pytest.mark.parametrize("name,x_shape,s_shape", PRELU_CASES, ids=PRELU_IDS)
def test_prelu_torch(name, x_shape, s_shape):
    torch = pytest.importorskip("torch")
    x, slope = prelu_inputs(x_shape, s_shape, np.float32)
    x.reshape(-1)[:2] = 0.0                                        # the kink: slope's side, as torch
    torch_check("PRelu", {}, [x, slope], torch.nn.functional.prelu)


def test_prelu_module_matches_torch_nn_prelu():
    """torch.nn.PReLU(num_parameters=C, init=0.25): the parameter gradient sums over N, H, W."""
    torch = pytest.importorskip("torch")
    m = torch.nn.PReLU(3, init=0.25).double()
    x = rnd((4, 3, 6, 5), 9)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    gy = rnd((4, 3, 6, 5), 10)
    m(t).backward(torch.from_numpy(gy))
    ys, (gx, gs) = run_backward("PRelu", {}, [x, np.full(3, 0.25)], [gy])
    np.testing.assert_allclose(ys[0], m(t).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(gx, t.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gs, m.weight.grad.numpy(), rtol=1e-12)


def test_prelu_shared_slope_gradient_sums_every_channel():
    x = np.array([[[[-1.0, 2.0]], [[-3.0, 0.0]]]])              # (1,2,1,2)
    ys, (gx, gs) = run_backward("PRelu", {}, [x, np.array([0.5])], [np.ones_like(x)])
    np.testing.assert_array_equal(ys[0].reshape(-1), [-0.5, 2.0, -1.5, 0.0])
    np.testing.assert_array_equal(gx.reshape(-1), [0.5, 1.0, 0.5, 0.5])
    np.testing.assert_array_equal(gs, [-4.0])                    # Σ x over x <= 0
    _, (_, gc) = run_backward("PRelu", {}, [x, np.array([0.5, 0.1])], [np.ones_like(x)])
    np.testing.assert_array_equal(gc, [-1.0, -3.0])


def test_prelu_needs_subsets():
    x, s = prelu_inputs((2, 3, 4, 4), (3,))
    op = get_op("PRelu")
    a = normalize_attrs(op, {})
    (y,), saved = op.forward(a, [x, s], Ctx())
    gy = rnd(y.shape, 7)
    full = op.backward(a, saved, [gy], [True, True], Ctx())
    only_s = op.backward(a, saved, [gy], [False, True], Ctx())
    only_x = op.backward(a, saved, [gy], [True, False], Ctx())
    assert only_s[0] is None and only_x[1] is None
    np.testing.assert_array_equal(only_s[1], full[1])
    np.testing.assert_array_equal(only_x[0], full[0])


def test_prelu_param_shapes_and_schema():
    op = get_op("PRelu")
    assert op.params == ("slope",)
    assert op.param_shapes({}, (None, 16, 7, 7)) == {"slope": (16,)}
    assert op.param_shapes({}, (None, 10)) == {"slope": (10,)}
    assert op.infer({}, [(2, 16, 7, 7), (1,)]) == [(2, 16, 7, 7)]


@pytest.mark.parametrize("x_shape,s_shape", [((2, 3, 4, 4), (2,)), ((2, 3, 4, 4), (3, 1, 1)),
                                             ((2, 3, 4, 4), ()), ((6,), (6,)), ((), (1,))])
def test_prelu_rejects_misshaped_slope(x_shape, s_shape):
    op = get_op("PRelu")
    with pytest.raises(ShapeError) as e:
        op.infer({}, [x_shape, s_shape])
    assert e.value.field in ("slope", "x")
    if x_shape:
        assert e.value.field == "slope" and str(s_shape) in str(e.value)


# ============================================================================= LogSoftmax
LOGSOFTMAX = [((2, 5), -1), ((2, 5), 1), ((2, 5), 0), ((3, 4, 2, 2), 1), ((2, 3, 4), -2), ((1, 1), -1),
              ((4, 1, 3, 3), 1), ((2, 7, 1, 1), 1), ((2, 3, 2), 2)]


@pytest.mark.parametrize("shape,axis", LOGSOFTMAX)
def test_logsoftmax_fd(shape, axis):
    fd_check("LogSoftmax", {"axis": axis}, [rnd(shape, 5, 2.0)])


@pytest.mark.torch
@pytest.mark.parametrize("shape,axis", LOGSOFTMAX)
def test_logsoftmax_torch(shape, axis):
    torch = pytest.importorskip("torch")
    torch_check("LogSoftmax", {"axis": axis}, [rnd(shape, 6, 3.0, np.float32)],
                lambda t: torch.nn.functional.log_softmax(t, dim=axis))


def test_logsoftmax_stable_and_consistent_with_softmax():
    x = np.array([[1e4, 0.0, -1e4], [-800.0, -800.0, -799.0], [88.0, 89.0, 90.0]], np.float32)
    (y,) = run_forward("LogSoftmax", {}, [x])[2]
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], [0.0, -1e4, -2e4], rtol=1e-6)
    (p,) = run_forward("Softmax", {}, [x.astype(np.float64)])[2]
    np.testing.assert_allclose(np.exp(y[1:]), p[1:], rtol=1e-6)
    _, (g,) = run_backward("LogSoftmax", {}, [x], [np.ones_like(x)])
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-5)      # Σ_k (1 - 3 p_k) = 1·3 - 3


def test_logsoftmax_axis_errors_and_infer():
    op = get_op("LogSoftmax")
    assert op.infer(normalize_attrs(op, {"axis": 1}), [(2, 3, 4)]) == [(2, 3, 4)]
    with pytest.raises(ShapeError) as e:
        op.infer(normalize_attrs(op, {"axis": 3}), [(2, 3, 4)])
    assert e.value.field == "axis"
    with pytest.raises(OpError) as e:
        normalize_attrs(op, {"axis": 1.5})
    assert e.value.field == "axis"
