"""OpenCL launchers vs the numpy reference: Slice, Transpose, ReduceMean, ReduceMax, ResizeNearest.
Outputs and gradients wiped to NaN before launch (clcheck); grids as in test_ops_layout.py plus
the shapes that pick each kernel path (work-group rows vs one work-item per output)."""
import numpy as np
import pytest

from clcheck import cl_check, cl_run, needs_cl
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.reduce import ROWS_MIN, _groups
from device_agent.ops.resize import COORDS, NEAREST
from device_agent.ops.shape import _transpose_axes
from test_ops_layout import PERMS, REDUCES, SIZES, SLICES, rnd

pytestmark = needs_cl


def _exact(op_name, attrs, x, g):
    """forward and backward equal to the reference bit for bit (pure copies / single sums)"""
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    (y,), saved = op.forward(a, [x], Ctx())
    (ref,) = op.backward(a, saved, [g], [True], Ctx())
    (yc,), (gc,), _ = cl_run(op_name, attrs, [x], gys=[g])
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(gc, ref)


# ============================================================================= Slice / Transpose
@pytest.mark.parametrize("shape,axis,start,end", SLICES + [((3, 40, 9, 7), 1, 13, -11), ((2, 5, 33), 2, 1, 32)])
def test_slice(shape, axis, start, end):
    x = rnd(shape, 0, np.float32)
    y = x[(slice(None),) * (axis % len(shape)) + (slice(start, end),)]
    _exact("Slice", {"axis": axis, "start": start, "end": end}, x, rnd(y.shape, 1, np.float32))


@pytest.mark.parametrize("shape,perm", PERMS + [((2, 4, 3, 9, 7), (0, 2, 1, 3, 4)), ((3, 16, 7, 5), (0, 2, 3, 1)),
                                                ((2, 3, 2, 4, 5, 3), (0, 4, 2, 5, 1, 3))])
def test_transpose(shape, perm):
    x = rnd(shape, 0, np.float32)
    y = np.transpose(x, perm)
    _exact("Transpose", {"perm": list(perm)}, x, rnd(y.shape, 1, np.float32))


def test_transpose_merges_axes():
    """Channel shuffle (N,g,C/g,H,W) -> (N,C/g,g,H,W) is a rank-4 gather (H,W merged); size-1
    axes vanish; an identity permutation is one flat run."""
    assert _transpose_axes((8, 3, 4, 5, 6), (0, 2, 1, 3, 4)) == ((1, 1, 8, 4, 3, 30), (0, 0, 360, 30, 120, 1))
    assert _transpose_axes((2, 1, 3, 4), (0, 2, 3, 1)) == ((1,) * 5 + (24,), (0,) * 5 + (1,))
    assert _transpose_axes((1, 1, 1), (0, 2, 1)) == ((1,) * 6, (0,) * 6)


# ============================================================================= ReduceMean / ReduceMax
ROWS = [((2, 8, 17, 19), (2, 3), True), ((3, 5, 1, 300), (3,), False), ((2, 3, ROWS_MIN), (2,), True),
        ((1, 2, 4, 8), (2, 3), False)]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("shape,axes,keep", REDUCES + ROWS + [((4, 33, 6, 6), (1,), True)])
def test_reduce(op, shape, axes, keep):
    _, _, st = cl_check(op, {"axes": list(axes), "keepdims": keep}, [rnd(shape, 0, np.float32)])
    if op == "ReduceMax":
        assert st["argmax"].dtype == np.int32


def test_reduce_layouts():
    """The (K0, R0, K1, R1, K2, R2) view the kernels walk"""
    assert _groups((2, 8, 17, 19), (2, 3)) == ((16, 1, 1), (323, 1, 1))          # rows path
    assert _groups((2, 3, 4, 5), (1,)) == ((2, 20, 1), (3, 1, 1))
    assert _groups((2, 1, 3, 1, 2, 2), (1, 2, 4)) == ((2, 2, 1), (6, 1, 1))     # size-1 axes dropped
    assert _groups((2, 2, 3, 2, 3, 2), (1, 3, 5)) == ((2, 3, 3), (2, 2, 2))
    assert _groups((1, 4, 1, 1), (1, 2, 3)) == ((1, 1, 1), (4, 1, 1))


@pytest.mark.parametrize("shape,axes", [((2, 3, 7, 6), (2, 3)), ((2, 3, 40, 5), (2, 3)), ((2, 6, 4, 5), (1, 3))])
def test_reducemax_ties_and_nan_follow_numpy_argmax(shape, axes):
    """Ties go to the first maximum (row-major over the axes) and NaN wins, on both kernel paths."""
    x = np.random.default_rng(0).integers(0, 3, shape).astype(np.float32)      # many ties
    attrs = {"axes": list(axes)}
    g = np.ones(cl_check("ReduceMax", attrs, [x])[0][0].shape, np.float32)
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 3, 1] = -np.inf
    _exact("ReduceMax", attrs, x, g)


# ============================================================================= ResizeNearest
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("shape,size", SIZES + [((2, 3, 9, 4), (2, 13)), ((1, 2, 16, 16), (32, 32))])
def test_resize(shape, size, coord):
    x = rnd(shape, 0, np.float32)
    for nearest in NEAREST:
        attrs = {"size": list(size), "coord": coord, "nearest": nearest}
        cl_check("ResizeNearest", attrs, [x])


def test_resize_scales_and_exact_copies():
    x = rnd((2, 3, 9, 7), 0, np.float32)
    attrs = {"size": [15, 4], "scale_h": 1.7, "scale_w": 0.6, "coord": "half_pixel", "nearest": "round_prefer_floor"}
    _exact("ResizeNearest", attrs, x, rnd((2, 3, 15, 4), 1, np.float32))
