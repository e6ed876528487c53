"""Optimizer kernels (kernels/optim.cl via device_agent/backends/opencl/optim.py) against
torch.optim itself, several steps with a changing learning rate, every option combination, with
and without global-norm clipping (torch.nn.utils.clip_grad_norm_). Two parameter segments, so the
clip norm is taken over both together."""
import numpy as np
import pytest

from clcheck import download, empty, needs_cl, runtime, upload

pytestmark = needs_cl
torch = pytest.importorskip("torch")

SIZES = (300, 77)
LRS = (0.1, 0.05, 0.08, 0.02, 0.03)          # a changing learning rate: a dynamic argument


def _run(kind, opts, max_norm):
    """(params after each step from OpenCL, the same from torch, clip norms from both)"""
    import pyopencl as cl

    from device_agent.backends.opencl import optim
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    rt = runtime()
    rng = np.random.default_rng(0)
    p0 = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = [[rng.standard_normal(n).astype(np.float32) * 2 for n in SIZES] for _ in LRS]

    ps = [upload(rt, f"p{i}", p) for i, p in enumerate(p0)]
    gs = [upload(rt, f"g{i}", np.zeros(n, np.float32)) for i, n in enumerate(SIZES)]
    zeros = [[upload(rt, f"s{i}{j}", np.zeros(n, np.float32)) for j in range(2)] for i, n in enumerate(SIZES)]
    b = LaunchBuilder(rt)
    scale = None
    if max_norm is not None:
        partial = empty(rt, "partial", (optim.clip_partials(SIZES),))
        scale = empty(rt, "scale", (2,))
        optim.clip_grad_norm(b, gs, partial, scale, max_norm)
    for p, g, (s0, s1) in zip(ps, gs, zeros):
        if kind == "sgd":
            optim.sgd_step(b, p, g, s0, scale=scale, **opts)
        else:
            optim.adam_step(b, p, g, s0, s1, scale=scale, decoupled=kind == "adamw", **opts)

    tp = [torch.tensor(p, requires_grad=True) for p in p0]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    topt = cls(tp, lr=LRS[0], **opts)
    out_cl, out_t, norms = [], [], []
    for t, (lr, gstep) in enumerate(zip(LRS, grads), 1):
        for g, gh in zip(gs, gstep):
            cl.enqueue_copy(rt.queue, g.buf, gh)
        replay(rt.queue, b.launches, {"lr": np.float32(lr), "step": np.int32(t)})
        out_cl.append([download(rt, p) for p in ps])
        for p, gh in zip(tp, gstep):
            p.grad = torch.from_numpy(gh.copy())
        if max_norm is not None:
            tn = torch.nn.utils.clip_grad_norm_(tp, max_norm)
            norms.append((download(rt, scale)[1], float(tn)))
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        out_t.append([p.detach().numpy().copy() for p in tp])
    return out_cl, out_t, norms


def _compare(out_cl, out_t, norms):
    for step, (a, b) in enumerate(zip(out_cl, out_t), 1):
        for i, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"step {step}, segment {i}")
    for ours, theirs in norms:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)


SGD_OPTS = [dict(momentum=0.0), dict(momentum=0.0, weight_decay=1e-2), dict(momentum=0.9),
            dict(momentum=0.9, weight_decay=5e-2), dict(momentum=0.9, dampening=0.3),
            dict(momentum=0.9, dampening=0.3, weight_decay=1e-2), dict(momentum=0.9, nesterov=True),
            dict(momentum=0.8, nesterov=True, weight_decay=5e-2)]


@pytest.mark.parametrize("max_norm", [None, 1.0, 1e3])
@pytest.mark.parametrize("opts", SGD_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_sgd_vs_torch(opts, max_norm):
    _compare(*_run("sgd", opts, max_norm))


ADAM_OPTS = [dict(), dict(weight_decay=0.05), dict(betas=(0.3, 0.99), eps=1e-6),
             dict(betas=(0.5, 0.9), weight_decay=0.1), dict(betas=(0.0, 0.999))]


@pytest.mark.parametrize("max_norm", [None, 1.0, 1e3])
@pytest.mark.parametrize("opts", ADAM_OPTS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()) or "dflt")
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_vs_torch(kind, opts, max_norm):
    if kind == "adamw":
        opts = dict(opts, weight_decay=opts.get("weight_decay", 1e-2))   # torch AdamW's default
    _compare(*_run(kind, opts, max_norm))


def test_clip_scale_is_one_below_max_norm_and_grads_untouched():
    from device_agent.backends.opencl import optim
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    rt = runtime()
    g = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    gs = upload(rt, "g", g)
    partial, scale = empty(rt, "partial", (optim.clip_partials([g.size]),)), empty(rt, "scale", (1,))
    b = LaunchBuilder(rt)
    optim.clip_grad_norm(b, gs, partial, scale, 1e6)
    replay(rt.queue, b.launches)
    assert download(rt, scale)[0] == 1.0
    np.testing.assert_array_equal(download(rt, gs), g)


def test_bad_options_raise():
    from device_agent.backends.opencl import optim
    from device_agent.backends.opencl.runtime import LaunchBuilder
    from device_agent.errors import BackendError
    rt = runtime()
    p, g = empty(rt, "p", (4,)), empty(rt, "g", (4,))
    b = LaunchBuilder(rt)
    with pytest.raises(BackendError, match="Nesterov"):
        optim.sgd_step(b, p, g, empty(rt, "m", (4,)), momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(BackendError, match="momentum buffer"):
        optim.sgd_step(b, p, g, None, momentum=0.9)
    with pytest.raises(BackendError, match="elements"):
        optim.sgd_step(b, p, empty(rt, "g3", (3,)))
