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
# tighter than any phone: every flexible size shrinks, the GEMM's 8x8 tile and 64-wide reductions do not fit
TINY = {"name": "tiny", "vendor": "QUALCOMM", "device": "QUALCOMM Adreno(TM) 640",
        "limits": {"max_wg": 256, "kernel_wg": 32, "local_mem": 1024, "multiple": 16, "kernels": {"softmax_fwd": 16}}}


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

    rt = Runtime(profile=TINY if request.param == "tiny" else request.param)
    monkeypatch.setattr(clcheck, "_RT", rt)
    yield rt
    rt.close()


def _rnd(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _conv(k, c, r, stride=1, pad=0, groups=1):
    return {"out_channels": k, "kernel": [r, r], "stride": [stride, stride], "pads": [pad] * 4, "groups": groups}


@needs_cl
@pytest.mark.parametrize("profiled", PROFILES + ["tiny"], indirect=True)
def test_op_kernels_under_the_profile_match_numpy(profiled):
    rt = profiled
    lim = rt.limits
    want = TINY if lim.profile == "tiny" else load_profiles()[lim.profile]
    assert rt.kind == "gpu" and lim.local_mem <= want["limits"]["local_mem"]
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


@needs_cl
@pytest.mark.parametrize("profiled", ["powervr"], indirect=True)
def test_a_tuned_gemm_tile_over_the_limits_is_skipped_with_a_warning(profiled, capsys):
    """PowerVR's 4 KB of local memory cannot hold a 64x64 tile's K-slices (2 * 64 * 16 * 4 = 8 KB): the
    launcher warns once (one stderr line) and runs a fallback tile, with the reference's results"""
    from device_agent.backends.opencl import gemm

    rt = profiled
    tile = {"variant": "gpu", "MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 16, "LPAD": 0}
    b = type("B", (), {"rt": rt, "kind": rt.kind})()
    assert "8192 bytes of local tiles > the device's 4096" in gemm.tile_misfit(b, "nt", tile)
    rt.tuning.override["gemm"] = dict(tile, skinny_m=0, small=None)
    for _ in range(2):
        cl_check("Gemm", {"out_features": 70}, [_rnd((40, 33)), _rnd((70, 33), 1), _rnd((70,), 2)],
                 rtol=2e-4, atol=1e-4)
    err = capsys.readouterr().err.splitlines()
    hits = [ln for ln in err if "tuning gemm 64x64x16 on 16x8 skipped" in ln]
    assert len(hits) == 1 and "local tiles" in hits[0] and hits[0].startswith("thomas: warning:"), err


@needs_cl
@pytest.mark.parametrize("profiled", ["tiny"], indirect=True)
def test_a_rigid_launch_over_the_kernel_limit_fails_before_the_driver(profiled):
    """what a phone driver answers with CL_INVALID_WORK_GROUP_SIZE fails here too, naming the limit;
    the chooser's own pick for the same kernel launches"""
    from device_agent.backends.opencl.runtime import LaunchBuilder
    from device_agent.ops._cl import local_floats, reduce_wg

    b = LaunchBuilder(profiled)
    x = profiled.alloc(4 * 64)
    with pytest.raises(LaunchLimitError, match="softmax_fwd: work-group 64 exceeds the kernel's limit of 16"):
        b.launch("softmax.cl", "softmax_fwd", (64,), (64,), x, x, 1, 64, 1, local_floats(64))
    assert reduce_wg(b, "softmax.cl", "softmax_fwd", 64) == 16
    assert reduce_wg(b, "reduce.cl", "reduce_rows", 1000, arrays=2) == 32      # 1 KB / (2 * 4 B) = 128, kernel 32
    # 2048 bytes of argument plus the kernel's own static local memory (NVIDIA's driver reports 1 byte)
    with pytest.raises(LaunchLimitError, match=r"gap_fwd: needs 20(4[89]|[5-9]\d) bytes of local memory, the device has 1024"):
        b.launch("pool.cl", "gap_fwd", (32,), (32,), x, x, 1, 64, local_floats(512))


def test_limits_of_a_device_are_capped_by_the_profile_only_downwards():
    pytest.importorskip("pyopencl")
    if not clcheck.HAVE_CL:
        pytest.skip("no OpenCL device")
    dev = clcheck.runtime().device
    real = Limits.of(dev)
    capped = Limits.of(dev, {"name": "x", "limits": {"max_wg": 10 ** 9, "local_mem": 2048, "item_sizes": [64, 1, 1]}})
    assert capped.max_wg == real.max_wg and capped.local_mem == min(2048, real.local_mem)
    assert capped.item_sizes == (min(64, real.item_sizes[0]), 1, 1) and capped.profile == "x"


@needs_cl
@pytest.mark.parametrize("profiled", PROFILES + ["tiny"], indirect=True)
def test_a_small_models_training_step_under_the_profile_matches_numpy(profiled):
    """MobileNetV2 (width 0.25, 32x32, batch 4): conv, depthwise, BN with batch statistics, GEMM,
    softmax cross-entropy and SGD, every launch under the phone's limits; loss and gradients against
    the float64 numpy reference, the weights' change after one SGD step against lr * g"""
    from device_agent.backends.numpy import NumpyRef
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    g = zoo.build("mobilenet_v2", num_classes=10, size=32, width=0.25, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 4, 7, 9])
    ref = NumpyRef(g, dtype=np.float64)
    ref.forward(x, training=True, grad=True, seed=3)
    ref_loss = ref.loss(y)
    grads = ref.backward()
    ref32 = NumpyRef(g)
    ref32.forward(x, training=True, grad=True, seed=3)
    ref32.loss(y)
    grads32 = ref32.backward()
    plan = Plan(g, batch=4, optimizer=OptimConfig("sgd"), runtime=profiled)
    loss, cl_grads = plan.loss_and_grads(x, y, seed=3)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    for k, want in grads.items():
        # NOTE: a bias before a batch-statistics BN has a true gradient of 0: allow numpy's own float32 noise
        noise = float(np.abs(grads32[k] - want).max())
        err = float(np.abs(cl_grads[k] - want).max())
        assert err <= 1e-3 * float(np.abs(want).max()) + 4 * noise + 1e-9, f"gradient of {k}: {err:.2e}"
    plan.load_params(g.weights)
    plan.train_step(x, y, lr=0.05, seed=3)
    got = plan.params()
    for k, want in grads.items():                      # the step applied w - lr * g (float32 noise aside)
        step = (g.weights[k].astype(np.float64) - got[k]) / 0.05
        noise = float(np.abs(grads32[k] - want).max())
        err = float(np.abs(step - want).max())
        assert err <= 2e-3 * float(np.abs(want).max()) + 4 * noise + 1e-4, f"SGD step of {k}: {err:.2e}"
