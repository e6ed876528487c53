"""BatchNorm's CPU kernels (one plane or channel per work-item, eight lanes at a time) treat NaN and
infinities exactly as the per-element kernels do: a fused ReLU maps NaN to 0 (fmax(v, 0)), ReLU6's clamps
keep it, inf stays inf. The training guard relies on that: a poisoned batch must still give a non-finite
loss (tests/test_train_guard.py)."""
import numpy as np
import pytest

from clcheck import cl_run, needs_cl, runtime

pytestmark = needs_cl


@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("batch_stats", [False, True])
def test_cpu_kernels_match_the_per_element_ones_on_nan_and_inf(act, batch_stats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32) * 4
    x[0, 0, 1, :5] = [np.nan, np.inf, -np.inf, 7.0, -7.0]    # lanes of the 8-wide body and of the tail
    x[1, 2, 4, 3:] = [np.nan, np.inf, -np.inf, 0.5]
    if batch_stats:                                           # statistics of a channel without them
        x[:, 0] = rng.standard_normal((2, 5, 7)).astype(np.float32)
        x[0, 1, 0, :3] = [np.nan, np.inf, -np.inf]
    params = [rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32),
              rng.standard_normal(3).astype(np.float32) * 0.1, np.abs(rng.standard_normal(3)).astype(np.float32) + 0.5]
    rt = runtime()
    out = {}
    for channel in (False, True):
        rt.tuning.override["batchnorm"] = {"channel": channel}
        try:
            (y,), _, _ = cl_run("BatchNorm", {}, [x] + params, bn_batch_stats=batch_stats, act=act)
        finally:
            rt.tuning.override.pop("batchnorm")
        out[channel] = y
    a, b = out[True], out[False]
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(np.isposinf(a), np.isposinf(b))
    assert np.array_equal(np.isneginf(a), np.isneginf(b))
    if batch_stats:   # the channel kernel's two-pass statistics round differently (an ulp)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(a, b)
    if act == "relu" and not batch_stats:   # (with batch statistics an inf makes its channel all NaN -> 0)
        assert not np.isnan(out[True][0, 2]).any() and np.isinf(out[True]).any()
