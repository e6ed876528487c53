import numpy as np
import pytest

from opcheck import fd_check, torch_check

SHAPES = [(1,), (2, 3), (2, 3, 5, 5), (1, 1, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_fd(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    fd_check("Relu", {}, [x])


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_torch(shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    torch_check("Relu", {}, [x], torch.relu)


# ----------------------------------------------------------------------------- helpers
def _away_from(x, kinks, gap=1e-2):
    """Move entries of x that sit within `gap` of a kink half a unit away (fd needs smoothness)."""
    x = np.array(x, copy=True)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + 0.5
    return x


def _grad_at(op_name, attrs, x):
    from opcheck import run_backward
    _, (g,) = run_backward(op_name, attrs, [x], [np.ones_like(x)])
    return g


CLIP_CASES = [({"min": 0.0, "max": 6.0}, (0.0, 6.0)), ({"min": -1.0}, (-1.0,)),
              ({"max": 0.5}, (0.5,)), ({}, ()), ({"min": None, "max": 1.0}, (1.0,))]


# ----------------------------------------------------------------------------- Clip
@pytest.mark.parametrize("attrs,kinks", CLIP_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_clip_fd(attrs, kinks, shape):
    x = _away_from(np.random.default_rng(3).standard_normal(shape) * 4, kinks)
    fd_check("Clip", attrs, [x])


@pytest.mark.parametrize("attrs,kinks", CLIP_CASES)
def test_clip_torch(attrs, kinks):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 5)).astype(np.float32) * 4
    lo, hi = attrs.get("min"), attrs.get("max")
    fn = (lambda t: t * 1) if lo is None and hi is None else (lambda t: torch.clamp(t, lo, hi))
    torch_check("Clip", attrs, [x], fn)


def test_clip_relu6_torch_and_kinks():
    torch = pytest.importorskip("torch")
    x = np.array([-2.0, 0.0, 1.5, 6.0, 7.0], np.float32)
    torch_check("Clip", {"min": 0, "max": 6}, [x], torch.nn.functional.relu6)
    # gradient passes strictly inside (min, max): torch relu6/hardtanh convention (torch.clamp
    # would pass it at x == min and x == max as well)
    np.testing.assert_array_equal(_grad_at("Clip", {"min": 0, "max": 6}, x), [0, 0, 1, 0, 0])


def test_clip_bad_attrs():
    from device_agent.ops import OpError, get_op, normalize_attrs
    op = get_op("Clip")
    with pytest.raises(OpError) as e:
        op.infer(normalize_attrs(op, {"min": 2.0, "max": 1.0}), [(3,)])
    assert e.value.field == "max"
    with pytest.raises(OpError) as e:
        normalize_attrs(op, {"min": "zero"})
    assert e.value.field == "min"
    assert normalize_attrs(op, {}) == {"min": None, "max": None}


# ----------------------------------------------------------------------------- HardSigmoid
HSIG_CASES = [({}, (-3.0, 3.0)), ({"alpha": 0.2, "beta": 0.5}, (-2.5, 2.5))]


@pytest.mark.parametrize("attrs,kinks", HSIG_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_hardsigmoid_fd(attrs, kinks, shape):
    x = _away_from(np.random.default_rng(5).standard_normal(shape) * 4, kinks)
    fd_check("HardSigmoid", attrs, [x])


def test_hardsigmoid_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 5)).astype(np.float32) * 4
    x = _away_from(x, (-3.0, 3.0), 1e-3)
    torch_check("HardSigmoid", {}, [x], torch.nn.functional.hardsigmoid)
    torch_check("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, [x],
                lambda t: torch.clamp(0.2 * t + 0.5, 0, 1))


def test_hardsigmoid_kinks_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([-4.0, -3.0, 0.0, 3.0, 4.0])
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.hardsigmoid(t).sum().backward()
    np.testing.assert_allclose(_grad_at("HardSigmoid", {}, x), t.grad.numpy())


# ----------------------------------------------------------------------------- HardSwish
@pytest.mark.parametrize("shape", SHAPES)
def test_hardswish_fd(shape):
    x = _away_from(np.random.default_rng(7).standard_normal(shape) * 4, (-3.0, 3.0))
    fd_check("HardSwish", {}, [x])


@pytest.mark.parametrize("shape", SHAPES)
def test_hardswish_torch(shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32) * 4
    torch_check("HardSwish", {}, [x], torch.nn.functional.hardswish)


def test_hardswish_kinks_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([-4.0, -3.0, -1.5, 0.0, 3.0, 4.0])
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.hardswish(t).sum().backward()
    g = _grad_at("HardSwish", {}, x)
    np.testing.assert_allclose(g, t.grad.numpy())
    assert g[1] == 0 and g[4] == 1   # torch: grad(-3) = 0, grad(3) = 1


# ----------------------------------------------------------------------------- Sigmoid
@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_fd(shape):
    fd_check("Sigmoid", {}, [np.random.default_rng(9).standard_normal(shape) * 3])


@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_torch(shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(10).standard_normal(shape).astype(np.float32) * 3
    torch_check("Sigmoid", {}, [x], torch.sigmoid)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_stable_for_large_inputs(dtype):
    torch = pytest.importorskip("torch")
    x = np.array([-1e4, -800.0, -100.0, -20.0, 0.0, 20.0, 100.0, 800.0, 1e4], dtype)
    from opcheck import run_forward
    y = run_forward("Sigmoid", {}, [x])[2][0]      # RuntimeWarnings are errors (pyproject)
    assert y.dtype == dtype and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6,
                               atol=1e-30)  # we keep a denormal sigmoid(-100) in float32, torch flushes it
    g = _grad_at("Sigmoid", {}, x)
    assert np.all(np.isfinite(g)) and g[0] == 0 and g[-1] == 0 and g[4] == 0.25


# ----------------------------------------------------------------------------- Identity
@pytest.mark.parametrize("shape", SHAPES)
def test_identity_fd_and_torch(shape):
    torch = pytest.importorskip("torch")
    fd_check("Identity", {}, [np.random.default_rng(11).standard_normal(shape)])
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    torch_check("Identity", {}, [x], lambda t: t * 1)


# ----------------------------------------------------------------------------- all of them
@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("Clip", {"min": 0, "max": 6}), ("HardSigmoid", {}),
                                      ("HardSwish", {}), ("Sigmoid", {}), ("Identity", {})])
def test_activation_infer_and_dtype(op, attrs):
    from device_agent.ops import get_op, normalize_attrs
    from opcheck import run_forward
    d = get_op(op)
    for shape in SHAPES + [()]:
        x = np.random.default_rng(13).standard_normal(shape).astype(np.float32)
        y = run_forward(op, attrs, [x])[2][0]
        assert d.infer(normalize_attrs(d, attrs), [shape]) == [y.shape] == [shape]
        assert y.dtype == np.float32


@pytest.mark.parametrize("op,attrs", [("Clip", {"min": 0, "max": 6}), ("HardSigmoid", {}),
                                      ("HardSwish", {}), ("Sigmoid", {}), ("Identity", {})])
def test_activation_no_grad_when_not_needed(op, attrs):
    from opcheck import run_forward
    x = np.random.default_rng(14).standard_normal((2, 3))
    o, a, ys, saved, ctx = run_forward(op, attrs, [x])
    assert o.backward(a, saved, [np.ones_like(ys[0])], [False], ctx) == [None]
