"""optim.py against torch.optim: every option combination of SGD / Adam / AdamW, the LR schedules
against torch's schedulers, and gradient clipping against clip_grad_norm_.

float64: 30 updates agree to 1e-12 relative. float32: to 2e-6 relative. The formulas run in torch's
operation order, but torch's vectorised CPU kernels fuse `a + alpha*b` into one FMA (one rounding)
where numpy rounds twice, so float32 parameters differ by an ulp or two, never more."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from device_agent.training.optim import clip_grad_norm, lr_at, make_optimizer

torch = pytest.importorskip("torch")

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (5, 7)}


def _run_pair(name, kw, torch_kw, dtype, steps=30, lrs=None):
    rng = np.random.default_rng(0)
    p0 = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]
    lrs = lrs or [0.05 * (1 + 0.1 * math.sin(i)) for i in range(steps)]
    ours = {k: v.copy() for k, v in p0.items()}
    opt = make_optimizer(name, {k: v.shape for k, v in p0.items()}, dtype, **kw)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    tp = {k: torch.tensor(v, dtype=tdt, requires_grad=True) for k, v in p0.items()}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    topt = cls(list(tp.values()), lr=lrs[0], foreach=False, **torch_kw)
    for g, lr in zip(grads, lrs):
        opt.step(ours, {k: v.copy() for k, v in g.items()}, lr)
        for k, t in tp.items():
            t.grad = torch.tensor(g[k], dtype=tdt)
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
    return ours, {k: t.detach().numpy() for k, t in tp.items()}, opt, topt


def _close(ours, ref, rtol):
    for k in ref:
        scale = np.abs(ref[k]).max()
        err = np.abs(ours[k] - ref[k]).max()
        assert err <= rtol * scale, f"{k}: max error {err:.3g} vs scale {scale:.3g}"


SGD_CASES = [dict(momentum=m, nesterov=n, weight_decay=wd)
             for m, n, wd in itertools.product((0.0, 0.9), (False, True), (0.0, 5e-4)) if not (n and m == 0)]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_torch(kw, dtype, rtol):
    ours, ref, _, _ = _run_pair("sgd", kw, kw, dtype)
    _close(ours, ref, rtol)


ADAM_CASES = [dict(betas=b, eps=e, weight_decay=wd)
              for b, e, wd in itertools.product(((0.9, 0.999), (0.5, 0.9)), (1e-8, 1e-3), (0.0, 0.01))]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("kw", ADAM_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_adam_matches_torch(name, kw, dtype, rtol):
    ours, ref, _, _ = _run_pair(name, kw, kw, dtype)
    _close(ours, ref, rtol)


@pytest.mark.parametrize("name,kw", [("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-4)),
                                     ("adam", dict(weight_decay=1e-3)), ("adamw", dict(weight_decay=0.05))])
def test_state_round_trips_and_matches_torch_state(name, kw):
    """state() holds what torch holds; a fresh optimizer loaded with it continues identically."""
    ours, ref, opt, topt = _run_pair(name, kw, kw, np.float64, steps=5)
    st = opt.state()
    assert int(st["step"]) == 5
    for i, k in enumerate(SHAPES):
        tstate = topt.state[list(topt.state)[i]]
        for slot in (("momentum_buffer",) if name == "sgd" else ("exp_avg", "exp_avg_sq")):
            np.testing.assert_allclose(st[f"{k}.{slot}"], tstate[slot].numpy(), rtol=1e-12, atol=1e-15)
    twin = make_optimizer(name, {k: s for k, s in SHAPES.items()}, np.float64, **kw)
    twin.load_state(st)
    g = {k: np.ones(s) for k, s in SHAPES.items()}
    a, b = {k: v.copy() for k, v in ours.items()}, {k: v.copy() for k, v in ours.items()}
    opt.step(a, {k: v.copy() for k, v in g.items()}, 0.01)
    twin.step(b, {k: v.copy() for k, v in g.items()}, 0.01)
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_load_state_refuses_a_mismatch():
    opt = make_optimizer("adam", SHAPES, np.float32)
    st = opt.state()
    st.pop("fc.weight.exp_avg")
    with pytest.raises(ValueError, match="fc.weight.exp_avg"):
        opt.load_state(st)


# ------------------------------------------------------------------------------ schedules
def _torch_lrs(make_sched, steps, base=0.1):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make_sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_cosine_annealing():
    total = 57
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total), total)
    ours = [lr_at(s, base_lr=0.1, schedule="cosine", total_steps=total, steps_per_epoch=19) for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)


def test_step_matches_steplr_per_epoch():
    spe, total = 7, 70
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3 * spe, gamma=0.5), total)
    ours = [lr_at(s, base_lr=0.1, schedule="step", total_steps=total, steps_per_epoch=spe, step_size=3, gamma=0.5)
            for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_warmup_matches_linearlr():
    w, total = 8, 30
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / w, total_iters=w - 1), total)
    ours = [lr_at(s, base_lr=0.1, schedule="constant", total_steps=total, warmup_steps=w) for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_warmup_then_cosine_matches_sequentiallr():
    w, total = 5, 40

    def make(o):
        sch = torch.optim.lr_scheduler
        return sch.SequentialLR(o, [sch.LinearLR(o, start_factor=1 / w, total_iters=w - 1),
                                    sch.CosineAnnealingLR(o, T_max=total - w)], milestones=[w])
    ref = _torch_lrs(make, total)
    ours = [lr_at(s, base_lr=0.1, schedule="cosine", total_steps=total, warmup_steps=w) for s in range(total)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_schedules_are_pure_functions_of_the_step():
    kw = dict(base_lr=0.3, schedule="cosine", total_steps=100, steps_per_epoch=10, warmup_steps=10)
    assert [lr_at(s, **kw) for s in (50, 3, 50)] == [lr_at(50, **kw), lr_at(3, **kw), lr_at(50, **kw)]
    assert lr_at(99, **kw) > 0 and lr_at(0, **kw) == pytest.approx(0.03)


# ------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_matches_torch(max_norm, dtype):
    rng = np.random.default_rng(1)
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    ps = [torch.zeros(s, dtype=tdt, requires_grad=True) for s in SHAPES.values()]
    for p, g in zip(ps, grads.values()):
        p.grad = torch.tensor(g)
    tn = float(torch.nn.utils.clip_grad_norm_(ps, max_norm))
    n = clip_grad_norm(grads, max_norm)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    assert n == pytest.approx(tn, rel=rtol)
    for p, g in zip(ps, grads.values()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=rtol, atol=0)
