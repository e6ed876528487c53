"""OpenCL launchers vs the numpy reference: dilated MaxPool/AveragePool, LeakyRelu, PRelu (its slope
gradient's one- and two-stage sums) and LogSoftmax. Outputs and gradients are wiped to NaN before
launch (clcheck); grids as in test_ops_pool_dilation.py and test_ops_leaky_prelu_logsoftmax.py."""
import numpy as np
import pytest

from clcheck import cl_check, cl_run, needs_cl
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.activation import _dslope_direct, _dslope_segments, prelu_cl_workspace
from test_ops_conv_pool import pool_attrs, pool_input
from test_ops_leaky_prelu_logsoftmax import ALPHAS, LOGSOFTMAX, PRELU_CASES, PRELU_IDS, prelu_inputs, rnd
from test_ops_pool_dilation import DIL_GRID, DIL_IDS

pytestmark = needs_cl


# ============================================================================= pools
@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", DIL_GRID, ids=DIL_IDS)
def test_dilated_pool(op_name, cip, name, x_shape, attrs):
    cl_check(op_name, pool_attrs(op_name, attrs, cip), [pool_input(op_name, x_shape, np.float32)])



# ============================================================================= LeakyRelu
SHAPES = [(1,), (2, 3), (2, 3, 5, 5), (1, 1, 1, 1), (3, 4, 17, 9), ()]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_leaky(shape, alpha):
    cl_check("LeakyRelu", {"alpha": alpha}, [rnd(shape, 3, 4.0, np.float32)])


@pytest.mark.parametrize("alpha", [0.0, 0.1, -0.3])
def test_leaky_kinks_and_nan(alpha):
    """x == 0 takes alpha (torch), +-inf stay finite-gradient, NaN: alpha's side (not > 0) as numpy;
    with alpha >= 0 the backward reads y, with alpha < 0 it reads x (saves)."""
    x = np.array([-np.inf, -2.0, -0.0, 0.0, 1e-30, 3.0, np.inf, np.nan], np.float32)
    op = get_op("LeakyRelu")
    a = normalize_attrs(op, {"alpha": alpha})
    assert op.cl.saved(a) == (("y0",) if alpha >= 0 else ("x0",))
    with np.errstate(invalid="ignore"):                               # 0 * -inf = NaN, as torch
        (y,), saved = op.forward(a, [x], Ctx())
    g = np.arange(1, 9, dtype=np.float32)
    (ref,) = op.backward(a, saved, [g], [True], Ctx())
    (yc,), (gc,), _ = cl_run("LeakyRelu", {"alpha": alpha}, [x], gys=[g])
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(gc, ref)


# ============================================================================= PRelu
BIG_PRELU = [("segments_per_channel", (4, 3, 40, 40), (3,)),        # two-stage sum, a slope per channel
             ("segments_shared", (2, 5, 30, 31), (1,)),              # two-stage sum over every channel
             ("many_channels", (2, 300, 3, 3), (300,))]               # one segment: dslope written directly


@pytest.mark.parametrize("name,x_shape,s_shape", PRELU_CASES + BIG_PRELU, ids=PRELU_IDS + [c[0] for c in BIG_PRELU])
def test_prelu(name, x_shape, s_shape):
    cl_check("PRelu", {}, prelu_inputs(x_shape, s_shape, np.float32), rtol=1e-4, atol=1e-4)


def test_prelu_sum_paths_are_the_ones_named():
    assert _dslope_segments((4, 3, 40, 40))[0] > 1 and not _dslope_direct((4, 3, 40, 40), (3,))
    assert _dslope_direct((2, 300, 3, 3), (300,)) and prelu_cl_workspace({}, [(2, 300, 3, 3), (300,)], []) == 0
    assert not _dslope_direct((2, 3, 5, 5), (1,))        # shared: always the second stage
    segs, seg = _dslope_segments((2, 5, 30, 31))
    assert prelu_cl_workspace({}, [(2, 5, 30, 31), (1,)], []) == 4 * 5 * segs and segs * seg >= 2 * 30 * 31


@pytest.mark.parametrize("needs", [[True, False], [False, True]])
def test_prelu_needs_subsets(needs):
    x, s = prelu_inputs((2, 3, 40, 40), (1,), np.float32)
    op = get_op("PRelu")
    a = normalize_attrs(op, {})
    (y,), saved = op.forward(a, [x, s], Ctx())
    g = rnd(y.shape, 5, dtype=np.float32)
    ref = op.backward(a, saved, [g], needs, Ctx())
    _, gxs, _ = cl_run("PRelu", {}, [x, s], gys=[g], needs=needs)
    for r, c, need in zip(ref, gxs, needs):
        assert (c is None) == (not need)
        if need:
            np.testing.assert_allclose(c, r, rtol=1e-4, atol=1e-3)


def test_prelu_zero_and_nan_inputs():
    x = np.array([[[[0.0, -0.0, np.nan, -1.0, 2.0]]], [[[1.0, -3.0, 0.0, 4.0, -0.5]]]], np.float32)
    s = np.array([0.25], np.float32)
    op = get_op("PRelu")
    (y,), saved = op.forward({}, [x, s], Ctx())
    g = np.ones_like(x)
    with np.errstate(invalid="ignore"):
        rx, rs = op.backward({}, saved, [g], [True, True], Ctx())
    (yc,), (gx, gs), _ = cl_run("PRelu", {}, [x, s], gys=[g])
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(gx, rx)
    assert np.isnan(gs).all() and np.isnan(rs).all()               # a NaN x poisons dslope, as in numpy


# ============================================================================= LogSoftmax
@pytest.mark.parametrize("shape,axis", LOGSOFTMAX + [((3, 1000), -1), ((2, 300, 2, 2), 1)])
def test_logsoftmax(shape, axis):
    cl_check("LogSoftmax", {"axis": axis}, [rnd(shape, 6, 3.0, np.float32)])


def test_logsoftmax_stable():
    x = np.array([[1e4, 0.0, -1e4], [-800.0, -800.0, -799.0], [88.0, 89.0, 90.0]], np.float32)
    (y,), (g,), _ = cl_check("LogSoftmax", {}, [x], rtol=1e-5, atol=1e-3)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
