"""OpenCL launchers vs the numpy reference: activations, Add/Sub/Mul/Div with broadcasting,
Dropout (bit-identical masks), Flatten/Reshape/Concat/Pad. Outputs and gradients are wiped to NaN
before launch (clcheck); grids as in test_ops_activation.py and test_ops_misc.py."""
import numpy as np
import pytest

from clcheck import cl_check, cl_run, needs_cl
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.dropout import draw_seed, hash_uniform, keep_threshold

pytestmark = needs_cl

SHAPES = [(1,), (2, 3), (2, 3, 5, 5), (1, 1, 1, 1), ()]


def rnd(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ============================================================================= activations
ACTIVATIONS = [("Clip", {"min": 0.0, "max": 6.0}), ("Clip", {"min": -1.0}), ("Clip", {"max": 0.5}),
               ("Clip", {}), ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
               ("HardSwish", {}), ("Sigmoid", {}), ("Identity", {})]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op,attrs", ACTIVATIONS)
def test_activation(op, attrs, shape):
    cl_check(op, attrs, [rnd(shape, 3, 4.0)])


@pytest.mark.parametrize("op,attrs,x", [
    ("Clip", {"min": 0, "max": 6}, [-2.0, 0.0, 1.5, 6.0, 7.0]),             # kinks: gradient 0 at both
    ("HardSigmoid", {}, [-4.0, -3.0, 0.0, 3.0, 4.0]),
    ("HardSwish", {}, [-4.0, -3.0, -1.5, 0.0, 3.0, 4.0]),                   # grad(-3) = 0, grad(3) = 1
    ("Sigmoid", {}, [-1e4, -800.0, -100.0, -20.0, 0.0, 20.0, 100.0, 800.0, 1e4]),
    ("Relu", {}, [-1.0, 0.0, 2.0]),
])
def test_activation_kinks_and_extremes(op, attrs, x):
    _, (g,), _ = cl_check(op, attrs, [np.array(x, np.float32)])
    assert np.all(np.isfinite(g))


# ============================================================================= Add Sub Mul Div
BCAST = [((2, 3), (2, 3)), ((2, 3, 4, 5), (2, 3, 1, 1)), ((3, 1, 1), (2, 3, 4, 5)), ((1,), (2, 3)),
         ((2, 3), (1,)), ((4, 1), (1, 5)), ((), (2, 3)), ((1, 1, 1, 1), (1, 1, 1, 1)),
         ((4, 16, 7, 7), (4, 16, 1, 1)), ((1, 5, 1, 1), (3, 5, 9, 9)), ((2, 300), (300,))]


def binary_inputs(op, sa, sb, seed=1):
    a, b = rnd(sa, seed), rnd(sb, seed + 1)
    if op == "Div":   # keep the divisor away from 0
        b = (np.sign(b) + (b == 0)) * (np.abs(b) + 0.5)
    return [a, b.astype(np.float32)]


@pytest.mark.parametrize("sa,sb", BCAST)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary(op, sa, sb):
    cl_check(op, {}, binary_inputs(op, sa, sb))


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
@pytest.mark.parametrize("op", ["Sub", "Mul", "Div"])
def test_binary_needs_subset(op, needs):
    """SE block: only one input wants a gradient; the other stays None and nothing writes it."""
    ins = binary_inputs(op, (2, 4, 3, 3), (2, 4, 1, 1))
    o = get_op(op)
    a = normalize_attrs(o, {})
    ctx = Ctx()
    (y,), saved = o.forward(a, [x.copy() for x in ins], ctx)
    g = rnd(y.shape, 5)
    ref = o.backward(a, saved, [g], list(needs), ctx)
    _, gxs, _ = cl_run(op, {}, ins, gys=[g], needs=list(needs))
    for r, c, need in zip(ref, gxs, needs):
        assert (c is None) == (not need)
        if need:
            np.testing.assert_allclose(c, r, rtol=1e-4, atol=1e-5)


# ============================================================================= Dropout
@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.0, 0.9])
@pytest.mark.parametrize("shape", [(1,), (2, 3), (2, 3, 5, 5), (3, 1000)])
def test_dropout_masks_bit_identical(ratio, shape):
    x = rnd(shape, 1)
    ys, gxs, st = cl_check("Dropout", {"ratio": ratio}, [x], training=True, rtol=0, atol=0, seed=11)
    assert int(st["seed"][0]) == draw_seed(np.random.default_rng(11))   # the forward kept the step's seed
    mask = (hash_uniform(int(st["seed"][0]), x.size) >= ratio).reshape(shape)
    np.testing.assert_array_equal(ys[0] != 0, mask & (x != 0))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5, 5)])
def test_dropout_eval_is_identity(shape):
    ys, gxs, st = cl_check("Dropout", {"ratio": 0.5}, [rnd(shape, 2)], training=False, rtol=0, atol=0)
    assert "seed" not in st


def test_dropout_seeds_differ():
    x = np.ones((50, 100), np.float32)
    y1 = cl_run("Dropout", {"ratio": 0.5}, [x], training=True, seed=1)[0][0]
    y2 = cl_run("Dropout", {"ratio": 0.5}, [x], training=True, seed=2)[0][0]
    assert not np.array_equal(y1, y2) and abs((y1 != 0).mean() - 0.5) < 0.03


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.2, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.999])
def test_keep_threshold_matches_reference_comparison(ratio):
    t = keep_threshold(ratio)
    k = np.arange(max(t - 4096, 0), min(t + 4096, 1 << 24), dtype=np.uint32)
    u = k.astype(np.float32) * np.float32(2.0 ** -24)      # hash_uniform's expression
    np.testing.assert_array_equal(u >= ratio, k >= t)


# ============================================================================= Flatten, Reshape
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), 1), ((2, 3, 4), 0), ((2, 3, 4), -1), ((2, 3, 4), 3),
                                        ((1, 3, 1, 1), 1), ((2, 3, 4, 5), 2)])
def test_flatten(shape, axis):
    cl_check("Flatten", {"axis": axis}, [rnd(shape, 1)], rtol=0, atol=0)


@pytest.mark.parametrize("shape,spec", [((2, 3, 4), (0, -1)), ((2, 3, 4), (-1,)), ((2, 3, 4), (0, 4, -1)),
                                        ((2, 3, 4), (4, 0, 2)), ((1, 6), (3, 1, 2)), ((2, 3, 1, 1), (0, 0))])
def test_reshape(shape, spec):
    cl_check("Reshape", {"shape": spec}, [rnd(shape, 1)], rtol=0, atol=0)


def test_alias_ops_copy_when_given_separate_buffers():
    """The Plan normally hands an alias op one buffer; with two, the launchers copy."""
    from clcheck import download, empty, runtime, upload
    from device_agent.backends.opencl.runtime import LaunchBuilder, NodeIO, replay
    rt = runtime()
    x = rnd((2, 3, 4), 4)
    xs, ys = [upload(rt, "x", x)], [empty(rt, "y", (2, 12))]
    io = NodeIO("r", "Reshape", normalize_attrs(get_op("Reshape"), {"shape": [0, -1]}), xs, ys)
    io.gy, io.gx = [upload(rt, "gy", x.reshape(2, 12) * 2)], [empty(rt, "gx", (2, 3, 4))]
    b = LaunchBuilder(rt)
    get_op("Reshape").cl.forward(b, io)
    get_op("Reshape").cl.backward(b, io)
    replay(rt.queue, b.launches)
    np.testing.assert_array_equal(download(rt, ys[0]), x.reshape(2, 12))
    np.testing.assert_array_equal(download(rt, io.gx[0]), x * 2)


# ============================================================================= Concat
CONCAT = [([(2, 1, 3), (2, 4, 3), (2, 2, 3)], 1), ([(2, 3, 1), (2, 3, 2), (2, 3, 4)], -1),
          ([(1, 2, 2, 2), (1, 3, 2, 2), (1, 1, 2, 2)], 1), ([(2, 3)], 0), ([(1, 3), (2, 3)], -2)]


@pytest.mark.parametrize("shapes,axis", CONCAT)
def test_concat(shapes, axis):
    cl_check("Concat", {"axis": axis}, [rnd(s, i) for i, s in enumerate(shapes)], rtol=0, atol=0)


def test_concat_needs_subset():
    ins = [rnd((2, 1), 0), rnd((2, 2), 1), rnd((2, 3), 2)]
    g = rnd((2, 6), 3)
    _, gxs, _ = cl_run("Concat", {}, ins, gys=[g], needs=[True, False, True])
    assert gxs[1] is None
    np.testing.assert_array_equal(gxs[0], g[:, :1])
    np.testing.assert_array_equal(gxs[2], g[:, 3:])


# ============================================================================= Pad
PAD = [((2, 3, 4, 5), [0, 1, 2, 0, 1, 0, 1, 3]), ((3, 4), [2, 0, 1, 3]),
       ((1, 1, 3, 3), [0, 0, 2, 1, 0, 0, 0, 2]), ((5,), [3, 1]), ((2, 3, 4, 5), [0, 0, 2, 1, 0, 0, 0, 3]),
       ((2, 3, 4, 5, 2), [1, 0, 0, 0, 1, 0, 0, 0, 1, 0])]     # rank 5: unpadded axes merge


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("shape,pads", PAD)
def test_pad(shape, pads, mode):
    cl_check("Pad", {"pads": pads, "mode": mode, "value": 0.7}, [rnd(shape, 1)])


@pytest.mark.parametrize("mode,want", [("reflect", [1, 3, 3, 2]), ("edge", [4, 1, 1, 3]),
                                       ("constant", [1, 1, 1, 1])])
def test_pad_backward_counts_copies(mode, want):
    _, (g,), _ = cl_run("Pad", {"pads": [3, 2], "mode": mode}, [np.arange(4, dtype=np.float32)],
                        gys=[np.ones(9, np.float32)])
    np.testing.assert_array_equal(g, want)
