"""Dropout is bit-identical across devices (issue 15 item 6): the OpenCL kernel's mask and scaled
values equal numpy's bit for bit (uint32 views, signed zeros included) over many seeds, sizes and
ratios, outputs wiped to NaN first (clcheck). The computation leaves a compiler no float choice:
integer-only mask, one host-rounded float32 scale applied by multiplication (ops/dropout.py)."""
import numpy as np
import pytest

from clcheck import cl_run, needs_cl
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.dropout import draw_seed, hash_bits, hash_uniform, keep_mask, keep_scale, keep_threshold

RATIOS = [0.5, 0.1, 1 / 3, 0.7, 0.999, 0.0]
SIZES = [1, 7, 1000, 4099, 65537]


def _x(n, seed):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(3.0)
    x[::5] = -x[::5]        # both signs: a dropped negative is -0 in numpy, and must be on the device
    return x


def _numpy(ratio, x, gy, seed):
    """numpy reference forward and backward with the rng the device's seed comes from."""
    op = get_op("Dropout")
    a = normalize_attrs(op, {"ratio": ratio})
    ctx = Ctx(training=True, rng=np.random.default_rng(seed))
    (y,), saved = op.forward(a, [x.copy()], ctx)
    (gx,) = op.backward(a, saved, [gy], [True], ctx)
    return y, gx, saved[0]


def test_mask_is_integer_form_of_uniform_comparison():
    """keep_mask (integer threshold, what every device computes) == hash_uniform >= ratio (the float rule)."""
    for seed in (0, 1, 0xFFFFFFFF, 0x80000000, 123456789):
        u, bits = hash_uniform(seed, 50000), hash_bits(seed, 50000)
        assert bits.dtype == np.uint32 and int(bits.max()) < 1 << 24
        np.testing.assert_array_equal(u, bits.astype(np.float32) * np.float32(2.0 ** -24))
        for r in RATIOS + [2.0 ** -24, 0.25 + 2.0 ** -26, 1 - 2.0 ** -24]:
            np.testing.assert_array_equal(keep_mask(seed, 50000, r), u >= r)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.2, 1 / 3, 0.5, 0.7, 0.9, 0.999])
def test_keep_scale_is_one_float32_rounding(ratio):
    s = keep_scale(ratio)
    assert s.dtype == np.float32 and s == np.float32(1 / (1 - ratio))
    assert abs(float(s) * (1 - ratio) - 1) <= 2.0 ** -23        # within one float32 rounding


@needs_cl
@pytest.mark.parametrize("ratio", RATIOS)
def test_dropout_cl_bit_identical_over_seeds_and_sizes(ratio):
    for i, n in enumerate(SIZES):
        for seed in range(i * 7, i * 7 + (6 if n < 10000 else 2)):
            x, gy = _x(n, seed + 100), _x(n, seed + 200)
            y_ref, gx_ref, mask = _numpy(ratio, x, gy, seed)
            ys, gxs, st = cl_run("Dropout", {"ratio": ratio}, [x], training=True, seed=seed, gys=[gy])
            drawn = int(st["seed"][0])
            assert drawn == draw_seed(np.random.default_rng(seed))
            np.testing.assert_array_equal(mask, keep_mask(drawn, n, ratio))
            np.testing.assert_array_equal(ys[0] != 0, mask, err_msg=f"mask n={n} seed={seed}")
            np.testing.assert_array_equal(ys[0].view(np.uint32), y_ref.view(np.uint32),
                                          err_msg=f"forward bits n={n} seed={seed}")
            np.testing.assert_array_equal(gxs[0].view(np.uint32), gx_ref.view(np.uint32),
                                          err_msg=f"backward bits n={n} seed={seed}")
            kept = mask & (x != 0)
            np.testing.assert_array_equal(ys[0][kept], x[kept] * keep_scale(ratio))


@needs_cl
def test_dropout_cl_threshold_edges():
    """Draws exactly at the integer threshold: the device keeps what numpy keeps (u == thresh kept,
    thresh - 1 dropped), found by searching seeds whose first draws straddle it."""
    ratio = 0.5
    t = keep_threshold(ratio)
    n = 1 << 16
    x = np.ones(n, np.float32)
    hits = 0
    for seed in range(40):
        drawn = draw_seed(np.random.default_rng(seed))
        bits = hash_bits(drawn, n)
        near = np.flatnonzero(np.abs(bits.astype(np.int64) - t) <= 64)
        if near.size == 0:
            continue
        ys, _, _ = cl_run("Dropout", {"ratio": ratio}, [x], training=True, seed=seed)
        np.testing.assert_array_equal(ys[0][near] != 0, bits[near] >= t)
        hits += near.size
    assert hits > 0
