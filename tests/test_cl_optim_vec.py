"""The vector optimizer updates (kernels/optim.cl *_vec: 8 elements per work-item, what a CPU
device runs) give the same bits as the one-element-per-work-item kernels (what a GPU runs), on the
local device, step after step: every SGD and Adam/AdamW option, with and without the clip factor,
segment sizes below, at and around multiples of the vector width (the element-wise tail)."""
import numpy as np
import pyopencl as cl
import pytest

from clcheck import download, needs_cl, runtime, upload
from device_agent.backends.opencl import optim
from device_agent.backends.opencl.runtime import LaunchBuilder, replay

pytestmark = needs_cl

SIZES = (1, 7, 8, 9, 16, 1003)
SGD = [dict(momentum=0.0), dict(momentum=0.0, weight_decay=1e-2), dict(momentum=0.9),
       dict(momentum=0.9, dampening=0.3, weight_decay=1e-2), dict(momentum=0.8, nesterov=True, weight_decay=5e-2)]
ADAM = [dict(), dict(weight_decay=1e-2), dict(betas=(0.3, 0.99), eps=1e-6, weight_decay=1e-3)]


def _steps(kind, kind_of_builder, opts, use_scale, n, vec=None):
    """Three update steps built on a `kind_of_builder` builder with tuning optim vec = `vec` (default:
    8 on "cpu", 1 on "gpu", whatever the test device's own tuning says: the H100's says 4)"""
    rt = runtime()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rt.tuning.override, "optim", {"vec": vec or (optim.VEC if kind_of_builder == "cpu" else 1)})
        return _run_steps(rt, kind, kind_of_builder, opts, use_scale, n)


def _run_steps(rt, kind, kind_of_builder, opts, use_scale, n):
    rng = np.random.default_rng(n)
    p = upload(rt, "p", rng.standard_normal(n).astype(np.float32))
    g = upload(rt, "g", rng.standard_normal(n).astype(np.float32))
    s0, s1 = (upload(rt, f"s{i}", np.zeros(n, np.float32)) for i in range(2))
    scale = upload(rt, "scale", np.float32([0.37, 0.0])) if use_scale else None
    b = LaunchBuilder(rt)
    b.kind = kind_of_builder
    if kind == "sgd":
        optim.sgd_step(b, p, g, s0, scale=scale, **opts)
    else:
        optim.adam_step(b, p, g, s0, s1, scale=scale, decoupled=kind == "adamw", **opts)
    names = [ln.kernel.function_name for ln in b.launches]
    outs = []
    for t, lr in enumerate((0.1, 0.05, 0.08), 1):
        cl.enqueue_copy(rt.queue, g.buf, rng.standard_normal(n).astype(np.float32))
        replay(rt.queue, b.launches, {"lr": np.float32(lr), "step": np.int32(t)})
        outs.append([download(rt, x).view(np.int32) for x in (p, s0, s1)])
    return names, outs


@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("kind,opts", [("sgd", o) for o in SGD] + [(k, o) for k in ("adam", "adamw") for o in ADAM])
def test_vector_updates_match_the_scalar_kernels_bitwise(kind, opts, use_scale):
    for n in SIZES:
        names_cpu, cpu = _steps(kind, "cpu", opts, use_scale, n)
        names_gpu, gpu = _steps(kind, "gpu", opts, use_scale, n)
        assert all(x.endswith("_vec") for x in names_cpu) and not any(x.endswith("_vec") for x in names_gpu)
        for step, (a, b) in enumerate(zip(cpu, gpu), 1):
            for name, x, y in zip(("p", "state0", "state1"), a, b):
                np.testing.assert_array_equal(x, y, err_msg=f"n={n} step {step} {name}")


@pytest.mark.parametrize("vec", [2, 4, 8])
@pytest.mark.parametrize("kind,opts", [("sgd", SGD[3]), ("sgd", SGD[4]), ("adamw", ADAM[2])])
def test_a_tuned_vector_width_runs_on_any_device_kind_with_the_same_bits(kind, opts, vec):
    """tuning "optim" -> "vec" (what a GPU's entry or `thomas tune` may set) takes the *_vec form with
    that width on a GPU-kind builder too: the same bits as one element per work-item"""
    for n in SIZES:
        names_1, ref = _steps(kind, "gpu", opts, True, n)
        names_v, got = _steps(kind, "gpu", opts, True, n, vec=vec)
        assert not any(x.endswith("_vec") for x in names_1) and all(x.endswith("_vec") for x in names_v)
        for step, (a, b) in enumerate(zip(got, ref), 1):
            for name, x, y in zip(("p", "state0", "state1"), a, b):
                np.testing.assert_array_equal(x, y, err_msg=f"vec {vec} n={n} step {step} {name}")


def test_a_bad_vector_width_is_one_line():
    from device_agent.errors import BackendError

    with pytest.raises(BackendError, match=r"^tuning optim vec must be one of 1, 2, 4, 8, got 3$"):
        _steps("sgd", "gpu", SGD[2], False, 9, vec=3)
