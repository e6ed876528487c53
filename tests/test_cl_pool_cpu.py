"""MaxPool's CPU-shaped kernels (pool.cl maxpool_fwd_rows / maxpool_bwd_planes, what a CPU device
runs) against the per-element GPU-shaped ones (maxpool_fwd / maxpool_bwd, what a GPU runs), both on
the local device: y, the argmax taps and gx bit for bit, over every pool case of the grid plus
AlexNet's overlapping 3x3/2 windows, ties, NaN, -inf inputs and windows hanging into the padding.
The builder's kind picks the form (ops/pool.py); each result is also checked against numpy."""
import numpy as np
import pytest

import clcheck
from clcheck import cl_check, cl_run, needs_cl
from device_agent.backends.opencl.runtime import LaunchBuilder
from test_ops_conv_pool import POOL_CASES

pytestmark = needs_cl

EXTRA = [
    ("alexnet_k3s2", (2, 3, 13, 13), dict(kernel=[3, 3], stride=[2, 2])),
    ("alexnet_k3s2_odd", (1, 2, 27, 26), dict(kernel=[3, 3], stride=[2, 2])),
    ("k3s2_pad1_ceil", (1, 2, 9, 8), dict(kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    ("dilated", (1, 2, 9, 9), dict(kernel=[3, 2], stride=[1, 2], dilation=[2, 3], pads=[2, 1, 1, 2])),
]
CASES = POOL_CASES + EXTRA


def _kind(kind):
    class Builder(LaunchBuilder):
        def __init__(self, rt):
            super().__init__(rt)
            self.kind = kind
    return Builder


def _run_both(monkeypatch, attrs, x, g):
    out = {}
    for kind in ("cpu", "gpu"):
        monkeypatch.setattr(clcheck, "LaunchBuilder", _kind(kind))
        (y,), (gx,), st = cl_run("MaxPool", attrs, [x], gys=[g])
        out[kind] = (y, st["argmax"], gx)
    monkeypatch.undo()
    return out


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize("data", ["random", "ties", "nan", "neg_inf"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_and_gpu_forms_agree_bitwise(monkeypatch, case, data):
    _, shape, attrs = case
    rng = np.random.default_rng(len(shape) + sum(shape))
    if data == "ties":
        x = rng.integers(0, 3, shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    if data == "nan":
        x.flat[rng.integers(0, x.size, max(1, x.size // 7))] = np.nan
    if data == "neg_inf":   # windows whose every tap is -inf or padding: tap 0 may name the padding
        x[:] = -np.inf
        x.flat[rng.integers(0, x.size, max(1, x.size // 5))] = 1.0
    from device_agent.ops import get_op, normalize_attrs

    a = normalize_attrs(get_op("MaxPool"), attrs)
    yshape = get_op("MaxPool").infer(a, [shape])[0]
    g = rng.standard_normal(yshape).astype(np.float32)
    out = _run_both(monkeypatch, attrs, x, g)
    for got, want in zip(out["cpu"], out["gpu"]):
        _same_bits(got, want)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_form_matches_numpy(monkeypatch, case):
    _, shape, attrs = case
    x = np.random.default_rng(5).permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # no ties
    monkeypatch.setattr(clcheck, "LaunchBuilder", _kind("cpu"))
    cl_check("MaxPool", attrs, [x])


def test_the_kind_picks_the_kernels(monkeypatch):
    names = {}
    for kind in ("cpu", "gpu"):
        seen = clcheck.launched_kernels(monkeypatch)
        monkeypatch.setattr(clcheck, "LaunchBuilder", _kind(kind))
        x = np.zeros((1, 1, 5, 5), np.float32)
        cl_run("MaxPool", dict(kernel=[3, 3], stride=[2, 2]), [x], gys=[np.ones((1, 1, 2, 2), np.float32)])
        names[kind] = seen
        monkeypatch.undo()
    assert names["cpu"] == ["maxpool_fwd_rows", "maxpool_bwd_planes"]
    assert names["gpu"] == ["maxpool_fwd", "maxpool_bwd"]
