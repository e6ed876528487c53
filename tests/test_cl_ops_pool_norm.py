"""OpenCL launchers vs the numpy reference: MaxPool/AveragePool/GlobalAveragePool, BatchNorm
(frozen and batch statistics, running-stat updates), LRN, Softmax, SoftmaxCrossEntropy and the
Plan's fused ce_fwd_bwd. Outputs and gradients wiped to NaN before launch (clcheck); grids as in
test_ops_conv_pool.py and test_ops_misc.py."""
import numpy as np
import pytest

from clcheck import cl_check, cl_run, download, empty, needs_cl, runtime, upload
from device_agent.ops import Ctx, get_op, normalize_attrs
from test_ops_conv_pool import GAP_SHAPES, LRN_CASES, POOL_GRID, POOL_IDS, pool_attrs, pool_input
from test_ops_misc import BN_SHAPES, SCE, SOFTMAX, bn_inputs, labels_for, rnd

pytestmark = needs_cl


# ============================================================================= pools
@pytest.mark.parametrize("op_name,cip,name,x_shape,attrs", POOL_GRID, ids=POOL_IDS)
def test_pool(op_name, cip, name, x_shape, attrs):
    _, _, st = cl_check(op_name, pool_attrs(op_name, attrs, cip), [pool_input(op_name, x_shape, np.float32)])
    if op_name == "MaxPool":
        assert st["argmax"].dtype == np.int32


@pytest.mark.parametrize("attrs", [dict(kernel=[2, 2]), dict(kernel=[3, 3], stride=[2, 2]),
                                   dict(kernel=[3, 3], stride=[1, 1], pads=[1, 1, 1, 1], ceil_mode=True),
                                   dict(kernel=[2, 2], dilation=[2, 2], ceil_mode=True),
                                   dict(kernel=[3, 3], stride=[1, 1], dilation=[2, 1], pads=[2, 1, 2, 1])])
def test_maxpool_ties_and_nan_follow_numpy_argmax(attrs):
    """Ties go to the first maximum (row-major) and NaN wins its windows, as the reference's argmax."""
    x = np.random.default_rng(0).integers(0, 3, (2, 3, 7, 6)).astype(np.float32)   # many ties
    cl_check("MaxPool", attrs, [x])
    x[0, 1, 2, 3] = np.nan
    op = get_op("MaxPool")
    a = normalize_attrs(op, attrs)
    (y,), saved = op.forward(a, [x], Ctx())
    g = np.ones(y.shape, np.float32)
    (ref,) = op.backward(a, saved, [g], [True], Ctx())
    (yc,), (gc,), _ = cl_run("MaxPool", attrs, [x], gys=[g])
    np.testing.assert_array_equal(yc, y)        # NaN in the same places
    np.testing.assert_array_equal(gc, ref)


@pytest.mark.parametrize("shape", GAP_SHAPES + [(2, 8, 17, 19), (3, 5, 1, 300)])
def test_gap(shape):
    cl_check("GlobalAveragePool", {}, [rnd(shape, 0, np.float32)])


# ============================================================================= BatchNorm
def _bn_check(xshape, batch, attrs, needs=None):
    ins = bn_inputs(xshape, 2, np.float32)
    ctx = Ctx(bn_batch_stats=batch)
    op = get_op("BatchNorm")
    a = normalize_attrs(op, attrs)
    (y,), saved = op.forward(a, [v.copy() for v in ins], ctx)
    g = rnd(xshape, 5, np.float32)
    needs = needs or [True, True, True, False, False]
    ref = op.backward(a, saved, [g], needs, ctx)
    (yc,), gxs, st = cl_run("BatchNorm", attrs, ins, bn_batch_stats=batch, gys=[g], needs=needs)
    np.testing.assert_allclose(yc, y, rtol=1e-4, atol=1e-5)
    for r, c, need in zip(ref, gxs, needs):
        assert (c is None) == (not need)
        if need:
            np.testing.assert_allclose(c, r, rtol=1e-4, atol=1e-4)
    if batch:   # running statistics updated in place in their input buffers
        np.testing.assert_allclose(st["x3"], ctx.updates["running_mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st["x4"], ctx.updates["running_var"], rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(st["x3"], ins[3])
        np.testing.assert_array_equal(st["x4"], ins[4])


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("xshape", BN_SHAPES + [(8, 16, 9, 9), (300, 4)])
def test_bn(xshape, batch):
    _bn_check(xshape, batch, {"eps": 1e-3, "momentum": 0.2})
    _bn_check(xshape, batch, {})


@pytest.mark.parametrize("tun", [{"planes": True, "channel": False}, {"planes": False, "channel": False},
                                 {"channel": True}], ids=["planes", "groups", "channel"])
@pytest.mark.parametrize("xshape", [(3, 2, 20, 21), (5, 3, 4, 4), (2, 3, 3, 5), (2, 3, 1, 7), (4, 5, 17, 19)])
def test_bn_plane_reductions(xshape, tun):
    """per-plane segments (one work-item per image and channel, used from L >= 16), the work-group
    segments, or one work-item per channel doing statistics + apply and sums + dx in one launch each (the
    CPU default; 8-wide sums and a scalar tail), on the test device: same statistics and sums"""
    from clcheck import runtime

    rt = runtime()
    rt.tuning.override["batchnorm"] = tun
    try:
        for batch in (True, False):
            _bn_check(xshape, batch, {"eps": 1e-3, "momentum": 0.2})
    finally:
        rt.tuning.override.pop("batchnorm")


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("xshape", [(2, 3, 4, 5), (8, 16, 9, 9), (300, 4), (3, 4, 8, 8)])
def test_bn_fused_activation(xshape, act, batch):
    """io.act (the Plan's BN + ReLU/ReLU6 fusion): y = act(BN(x)); the backward masks the incoming
    gradient where the activation cut (mask from y, as relu_bwd / clip_bwd take it)"""
    ins = bn_inputs(xshape, 2, np.float32)
    ins[1] = ins[1] * 4                     # gamma: outputs reach past 6 and below 0
    ctx = Ctx(bn_batch_stats=batch)
    op = get_op("BatchNorm")
    a = normalize_attrs(op, {})
    (y,), saved = op.forward(a, [v.copy() for v in ins], ctx)
    hi = 6.0 if act == "relu6" else np.inf
    ya = np.clip(y, 0, hi)
    g = rnd(xshape, 5, np.float32)
    ref = op.backward(a, saved, [g * ((y > 0) & (y < hi))], [True, True, True, False, False], ctx)
    (yc,), gxs, _ = cl_run("BatchNorm", {}, ins, bn_batch_stats=batch, gys=[g], needs=[True, True, True, False, False],
                           act=act)
    assert (yc == 0).any() and (act == "relu" or (yc == 6).any())
    np.testing.assert_allclose(yc, ya, rtol=1e-4, atol=1e-5)
    for r, c in zip(ref[:3], gxs[:3]):
        np.testing.assert_allclose(c, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wg", [1, 8, 1024])
@pytest.mark.parametrize("seg", [1, 5, 7, 64, 100_000])
@pytest.mark.parametrize("xshape", [(8, 16, 9, 9), (300, 4), (3, 2, 1, 1), (3, 2, 20, 21)])
def test_bn_segmented_reductions(xshape, seg, wg):
    """Channels cut in many segments (a remainder segment, the MAX_SEGS cap at seg=1), with work-groups
    of 1, 8 and the full reduce width (the GPU's): the merged statistics and backward sums still match
    the reference."""
    from clcheck import runtime

    rt = runtime()
    rt.tuning.override["batchnorm"] = {"seg": seg, "wg": wg, "planes": False, "channel": False}
    try:
        for batch in (True, False):
            _bn_check(xshape, batch, {"eps": 1e-3, "momentum": 0.2})
    finally:
        rt.tuning.override.pop("batchnorm")


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("needs", [[True, False, False, False, False], [False, True, False, False, False],
                                   [False, False, True, False, False]])
def test_bn_needs_subsets(needs, batch):
    _bn_check((2, 3, 4, 5), batch, {}, needs)


def test_bn_cl_matches_torch_running_stats():
    torch = pytest.importorskip("torch")
    ins = bn_inputs((4, 3, 5, 5), 7, np.float32)
    _, _, st = cl_run("BatchNorm", {"momentum": 0.1}, ins, bn_batch_stats=True)
    rm, rv = torch.from_numpy(ins[3].copy()), torch.from_numpy(ins[4].copy())
    torch.nn.functional.batch_norm(torch.from_numpy(ins[0]), rm, rv, training=True, momentum=0.1)
    np.testing.assert_allclose(st["x3"], rm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["x4"], rv.numpy(), rtol=1e-5, atol=1e-6)


# ============================================================================= LRN
LRN_GRID = LRN_CASES + [("alexnet", (2, 96, 3, 3), dict(size=5, alpha=1e-4, beta=0.75, bias=2.0))]


@pytest.mark.parametrize("name,x_shape,attrs", LRN_GRID, ids=[c[0] for c in LRN_GRID])
def test_lrn(name, x_shape, attrs):
    cl_check("LRN", attrs, [rnd(x_shape, 0, np.float32)])


# ============================================================================= Softmax
@pytest.mark.parametrize("shape,axis", SOFTMAX + [((4, 1000), -1), ((3, 300, 2), 1)])
def test_softmax(shape, axis):
    cl_check("Softmax", {"axis": axis}, [rnd(shape, 2, np.float32, 2)])


def test_softmax_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]], np.float32)
    cl_check("Softmax", {}, [x])


# ============================================================================= SoftmaxCrossEntropy
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,k", SCE + [(32, 1000), (5, 300)])
def test_sce(n, k, eps, label_dtype):
    ys, gxs, _ = cl_check("SoftmaxCrossEntropy", {"label_smoothing": eps},
                          [rnd((n, k), 2, np.float32, 3), labels_for(n, k, 1).astype(label_dtype)])
    assert ys[0].size == 1 and gxs[1] is None


def test_sce_large_logits():
    lg = np.array([[1000.0, -1000.0, 0.0], [50.0, 60.0, -80.0]], np.float32)
    ys, gxs, _ = cl_check("SoftmaxCrossEntropy", {"label_smoothing": 0.1}, [lg, np.array([1, 1], np.int32)])
    assert np.all(np.isfinite(gxs[0]))


def _ce_fwd_bwd(logits, labels, eps):
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    from device_agent.ops.softmax import ce_scratch_bytes, cl_ce_fwd_bwd
    rt = runtime()
    n, k = logits.shape
    lg, lb = upload(rt, "logits", logits), upload(rt, "labels", labels.astype(np.int32))
    loss, correct, dx = empty(rt, "loss", (1,)), empty(rt, "correct", (1,)), empty(rt, "dx", (n, k))
    scratch = empty(rt, "scratch", (ce_scratch_bytes(n) // 4,))
    b = LaunchBuilder(rt)
    cl_ce_fwd_bwd(b, lg, lb, loss, correct, dx, scratch, eps)
    replay(rt.queue, b.launches)
    return download(rt, loss)[0], download(rt, correct)[0], download(rt, dx)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,k", [(3, 5), (1, 4), (6, 2), (32, 1000), (300, 10)])
def test_ce_fwd_bwd(n, k, eps):
    logits = rnd((n, k), 4, np.float32, 3)
    logits[0, :] = 1.0                                   # a tie: numpy argmax takes class 0
    labels = labels_for(n, k, 2)
    op = get_op("SoftmaxCrossEntropy")
    a = normalize_attrs(op, {"label_smoothing": eps})
    (ref_loss,), saved = op.forward(a, [logits, labels], Ctx())
    ref_dx, _ = op.backward(a, saved, [np.float32(1)], [True, False], Ctx())
    loss, correct, dx = _ce_fwd_bwd(logits, labels, eps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert correct == float(np.sum(np.argmax(logits, axis=1) == labels))
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-7)
