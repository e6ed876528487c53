"""Vendor limits (backends/opencl/limits.py): the work-group chooser against hand-computed cases,
launches refused before the driver does, tuning entries that do not fit skipped with a warning, and
every phone profile of configs/tuning/mobile.json running its kernels on the test device (PoCL) under
the phone's capped limits: the op kernels against the numpy reference, a small model's training step
against the float64 numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

import clcheck
from clcheck import cl_check, needs_cl
from test_ops_conv_pool import conv_inputs

from device_agent.backends.opencl.limits import (KernelLimits, LaunchLimitError, Limits, check_launch, fit_local,
                                                 load_profiles, pick_wg)

PROFILES = sorted(load_profiles())


def test_the_shipped_profiles_are_the_phone_gpus():
    assert {"adreno-6xx", "adreno-7xx", "mali-g7x", "mali-g6xx", "powervr"} <= set(PROFILES)
    assert load_profiles()["powervr"]["limits"]["local_mem"] == 4096


# ---- the chooser, by hand ----
ITEMS = (1024, 1024, 64)


@pytest.mark.parametrize("want,kl,kw,expect", [
    (256, KernelLimits(128, 32, ITEMS, 32768), {}, 128),                       # the kernel's own limit
    (64, KernelLimits(1024, 128, ITEMS, 32768), {}, 128),                      # at least one wave
    (200, KernelLimits(1024, 64, ITEMS, 32768), {}, 192),                      # a whole number of waves
    (256, KernelLimits(1024, 32, (96, 96, 96), 32768), {}, 96),                # max work-item size [0]
    (256, KernelLimits(384, 4, ITEMS, 32768), {"pow2": True}, 256),            # Mali 384 -> 256 (a tree)
    (256, KernelLimits(1024, 64, ITEMS, 1024), {"pow2": True, "local_per_item": 8}, 128),   # 1 KB / 8 B
    (256, KernelLimits(1024, 64, ITEMS, 4096, 2048), {"pow2": True, "local_per_item": 4}, 512 // 2 // 1),
    (48, KernelLimits(40, 32, ITEMS, 32768), {}, 32),
    (8, KernelLimits(1024, 1, ITEMS, 32768), {}, 8),
])
def test_pick_wg_hand_computed(want, kl, kw, expect):
    assert pick_wg(want, kl, **kw) == expect


@pytest.mark.parametrize("lsize,kl,expect", [
    ((64, 1, 1), KernelLimits(32, 32, ITEMS, 32768), (32, 1, 1)),
    ((16, 16), KernelLimits(128, 32, ITEMS, 32768), (16, 8)),
    ((4, 4, 1), KernelLimits(1024, 1, ITEMS, 32768), (4, 4, 1)),
    ((8, 8, 128), KernelLimits(1024, 1, ITEMS, 32768), (8, 8, 16)),             # dim 2 first to 64, then halved
    ((100,), KernelLimits(72, 32, ITEMS, 32768), (64,)),
])
def test_fit_local_hand_computed(lsize, kl, expect):
    got = fit_local(lsize, kl)
    assert got == expect and np.prod(got) <= kl.wg


def test_check_launch_names_the_limit():
    kl = KernelLimits(256, 64, (256, 256, 256), 4096, 1024)
    check_launch(kl, "k", (16, 16))
    with pytest.raises(LaunchLimitError, match="limit of 256"):
        check_launch(kl, "k", (32, 16))
    with pytest.raises(LaunchLimitError, match="work-item size 256 of dim 1"):
        check_launch(KernelLimits(4096, 64, (256, 256, 256), 4096), "k", (1, 512))
    pytest.importorskip("pyopencl")
    import pyopencl as cl
    check_launch(kl, "k", (64,), [cl.LocalMemory(3072)])
    with pytest.raises(LaunchLimitError, match="4100 bytes of local memory"):
        check_launch(kl, "k", (64,), [cl.LocalMemory(3076)])


# ---- on the test device under each profile ----
@pytest.fixture
def profiled(request, monkeypatch):
    """clcheck's runtime replaced by a Runtime whose limits and tuning are the phone's."""
    from device_agent.backends.opencl.runtime import Runtime

    rt = Runtime(profile=request.param)
    monkeypatch.setattr(clcheck, "_RT", rt)
    yield rt
    rt.close()


def _rnd(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _conv(k, c, r, stride=1, pad=0, groups=1):
    return {"out_channels": k, "kernel": [r, r], "stride": [stride, stride], "pads": [pad] * 4, "groups": groups}


@needs_cl
@pytest.mark.parametrize("profiled", PROFILES, indirect=True)
def test_op_kernels_under_the_profile_match_numpy(profiled):
    rt = profiled
    lim = rt.limits
    assert rt.kind == "gpu" and lim.local_mem <= load_profiles()[lim.profile]["limits"]["local_mem"]
    cl_check("Conv2d", _conv(8, 3, 3, 2, 1), conv_inputs((2, 3, 9, 9), _conv(8, 3, 3, 2, 1), True, np.float32))
    cl_check("Conv2d", _conv(6, 6, 3, 1, 1, 6), conv_inputs((2, 6, 7, 7), _conv(6, 6, 3, 1, 1, 6), True, np.float32))
    cl_check("Conv2d", _conv(16, 8, 1), conv_inputs((2, 8, 5, 5), _conv(16, 8, 1), False, np.float32))
    cl_check("Gemm", {"out_features": 70}, [_rnd((5, 33)), _rnd((70, 33), 1), _rnd((70,), 2)], rtol=2e-4, atol=1e-4)
    cl_check("BatchNorm", {}, [_rnd((4, 5, 6, 6)), _rnd((5,), 1), _rnd((5,), 2), _rnd((5,), 3) * 0.1,
                               np.abs(_rnd((5,), 4)) + 0.5], bn_batch_stats=True, rtol=1e-3, atol=1e-4)
    cl_check("MaxPool", {"kernel": [3, 3], "stride": [2, 2]}, [_rnd((2, 3, 9, 9))])
    cl_check("GlobalAveragePool", {}, [_rnd((2, 5, 17, 17))])
    cl_check("Softmax", {}, [_rnd((3, 700), 5, 2.0)])
    cl_check("SoftmaxCrossEntropy", {}, [_rnd((4, 10), 6), np.array([1, 0, 9, 3], np.int32)])
