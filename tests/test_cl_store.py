"""The OpenCL engine's device-resident store (backends/opencl/store.py): one copy of the weights,
gradients, optimizer state and BN statistics shared by every Plan of an engine (each training
batch size, eval). Host<->device bytes are counted at pyopencl.enqueue_copy itself, so a copy that
bypasses the Runtime's counter is caught too."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from clcheck import needs_cl
from device_agent.backends.numpy import NumpyEngine
from device_agent.errors import BackendError
from device_agent.training.optim import make_optimizer
from device_agent.training.stages import trainable_params
from train_helpers import tiny_cnn

pytestmark = needs_cl


@contextlib.contextmanager
def count_transfers():
    """{"to_device": bytes, "to_host": bytes, "device_copies": n} of every pyopencl.enqueue_copy
    (and enqueue_write/read_buffer) made inside the block."""
    import pyopencl as cl

    counts = {"to_device": 0, "to_host": 0, "device_copies": 0}
    real = cl.enqueue_copy

    def counted(queue, dest, src, **kw):
        d_buf, s_buf = isinstance(dest, cl.MemoryObjectHolder), isinstance(src, cl.MemoryObjectHolder)
        if d_buf and s_buf:
            counts["device_copies"] += 1
        elif d_buf:
            counts["to_device"] += np.asarray(src).nbytes
        elif s_buf:
            counts["to_host"] += np.asarray(dest).nbytes
        return real(queue, dest, src, **kw)

    saved = {k: getattr(cl, k) for k in ("enqueue_read_buffer", "enqueue_write_buffer") if hasattr(cl, k)}
    cl.enqueue_copy = counted
    for k in saved:   # the older spellings must not be a way around the count
        setattr(cl, k, lambda *a, **kw: pytest.fail("enqueue_read/write_buffer bypasses the count"))
    try:
        yield counts
    finally:
        cl.enqueue_copy = real
        for k, v in saved.items():
            setattr(cl, k, v)


def _data(n_train=21, n_val=11, classes=10, size=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train, 3, size, size)).astype(np.float32)
    xv = rng.standard_normal((n_val, 3, size, size)).astype(np.float32)
    return x, rng.integers(0, classes, n_train), xv, rng.integers(0, classes, n_val)


def _engine(cls, g, trainable, opt="sgd", bn_batch_stats=True, **kw):
    shapes = {k: g.params[k].shape for k in sorted(trainable)}
    o = make_optimizer(opt, shapes, momentum=0.9, nesterov=True) if opt == "sgd" else make_optimizer(opt, shapes)
    return cls(g, trainable, o, bn_batch_stats=bn_batch_stats, seed=3, **kw)


def _epoch(eng, x, y, xv, yv, batch=8, lr=0.05):
    """Every training batch (the last one partial), then eval; returns (losses, eval loss sum, logits)."""
    losses = [eng.train_step(x[i:i + batch], y[i:i + batch], lr)[0] for i in range(0, len(x), batch)]
    ev = [eng.eval_batch(xv[i:i + batch], yv[i:i + batch]) for i in range(0, len(xv), batch)]
    return losses, sum(e[0] for e in ev), np.concatenate([e[2] for e in ev])


STAGES = {   # name: (layers, bn_batch_stats, optimizer, clip)
    "all-sgd-clip": ("all", True, "sgd", 1.0),
    "last2-adamw-folded": (2, False, "adamw", None),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_epoch_moves_only_batches_scalars_and_the_checkpoint(stage):
    """Epoch 2 of a run (Plans for batch 8, the partial 5 and eval 8 / 3 already built): what goes up
    is exactly the batches and labels; what comes down is the two scalars per step, the eval logits
    and one checkpoint (params + optimizer state), nothing more: no weights move when the batch
    size changes or an eval starts."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    layers, stats, opt, clip = STAGES[stage]
    g = tiny_cnn(10)
    eng = _engine(OpenCLEngine, g, trainable_params(g, layers), opt, stats, clip_grad_norm=clip)
    x, y, xv, yv = _data()
    _epoch(eng, x, y, xv, yv)
    plans = (dict(eng.plans), dict(eng.evals))
    moved0 = dict(eng.rt.moved)
    with count_transfers() as c:
        losses, _, logits = _epoch(eng, x, y, xv, yv)
        params, state = eng.params(), eng.optimizer_state()
    assert (eng.plans, eng.evals) == plans and sorted(eng.plans) == [5, 8] and sorted(eng.evals) == [3, 8]
    assert all(np.isfinite(losses))
    batches = x.nbytes + 4 * len(y) + xv.nbytes
    scalars = 8 * len(losses)
    folded_src = set(eng.store._fold_src)      # frozen conv/BN sources a checkpoint gets from the host
    ckpt = sum(v.nbytes for k, v in params.items() if k not in folded_src) + \
        sum(v.nbytes for k, v in state.items() if k != "step")
    assert c["to_device"] == batches, c
    assert c["to_host"] == scalars + logits.nbytes + ckpt, c
    assert c["device_copies"] == 0
    assert {k: eng.rt.moved[k] - moved0[k] for k in moved0} == {"to_device": c["to_device"], "to_host": c["to_host"]}
    if stage.endswith("folded"):
        assert folded_src and eng.store.fold
    print(f"\n{stage}: epoch 2 host<->device: up {c['to_device']} B (batches {batches}), down {c['to_host']} B "
          f"(scalars {scalars}, logits {logits.nbytes}, checkpoint {ckpt})")


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_shared_store_trains_like_numpy_across_batch_sizes_and_evals(stage):
    """Two epochs with a partial last batch and an eval after each: the OpenCL engine's losses, eval
    losses, weights, BN statistics and optimizer state follow the numpy engine's (momentum / Adam
    moments and the step count carry across the Plans of each batch size)."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    layers, stats, opt, clip = STAGES[stage]
    g = tiny_cnn(10)
    trainable = trainable_params(g, layers)
    engines = [_engine(cls, g, trainable, opt, stats, clip_grad_norm=clip) for cls in (NumpyEngine, OpenCLEngine)]
    x, y, xv, yv = _data()
    runs = [[_epoch(e, x, y, xv, yv) for _ in range(2)] for e in engines]
    for (ln, en, zn), (lc, ec, zc) in zip(*runs):
        np.testing.assert_allclose(lc, ln, rtol=2e-4)
        np.testing.assert_allclose(ec, en, rtol=2e-4)
        np.testing.assert_allclose(zc, zn, rtol=1e-3, atol=1e-4)
    pn, pc = engines[0].params(), engines[1].params()
    assert set(pc) == set(pn) == set(g.weights)
    for k in pn:
        np.testing.assert_allclose(pc[k], pn[k], rtol=1e-3, atol=1e-5, err_msg=k)
    sn, sc = engines[0].optimizer_state(), engines[1].optimizer_state()
    assert set(sc) == set(sn) and int(sc["step"]) == int(sn["step"]) == 6
    for k in sn:
        np.testing.assert_allclose(sc[k], sn[k], rtol=1e-3, atol=1e-5, err_msg=k)
    if stats:   # BN statistics were updated by training and read by eval
        assert not np.array_equal(pc["bn1.running_mean"], g.weights["bn1.running_mean"])
    else:       # frozen, folded BN: params() still gives the unfolded tensors, untouched
        assert all(np.array_equal(pc[k], g.weights[k]) for k in ("bn1.running_var", "c1.weight"))


def test_memory_reports_the_whole_engine():
    """memory(): the store once (params, grads, optimizer), plus every Plan's own activations,
    workspace and input buffers; peak is all of it."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = tiny_cnn(10)
    eng = _engine(OpenCLEngine, g, trainable_params(g, "all"))
    x, y, xv, yv = _data()
    eng.train_step(x[:8], y[:8], 0.1)
    one = eng.memory()
    _epoch(eng, x, y, xv, yv)
    m = eng.memory()
    plans = [*eng.plans.values(), *eng.evals.values()]
    assert one["plans"] == 1 and m["plans"] == 4
    assert m["params"] == one["params"] == eng.store.n_params * 4 >= 4 * sum(v.size for v in g.weights.values())
    assert m["optimizer"] == m["grads"] == eng.store.n_trainable * 4            # one momentum buffer
    # one arena for all Plans: as large as the largest Plan's, far below the sum of them
    assert m["activations"] == sum(eng.store.scratch.sizes) >= max(p.arena_bytes for p in plans)
    assert m["activations"] < sum(p.arena_bytes for p in plans)
    assert m["workspace"] == max(p.workspace_bytes for p in plans) > 0
    assert m["shared_by_plans"] == sum(p.arena_bytes + p.workspace_bytes for p in plans) \
        - m["activations"] - m["workspace"] > 0
    assert m["io"] == sum(p.io_bytes for p in plans)
    assert m["peak"] == eng.store.nbytes() + m["activations"] + m["workspace"] + m["io"]
    assert m["peak"] >= max(p.memory()["peak"] for p in plans) - max(p.io_bytes for p in plans)


def test_a_larger_plan_grows_the_shared_arena_and_the_smaller_plan_follows():
    """A Plan built after a smaller one over the same store needs larger buffers: the arena
    replaces them and the smaller Plan rebinds its kernels (its results stay bit-identical)."""
    from device_agent.backends.opencl.plan import Plan

    g = tiny_cnn(10)
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    small = Plan(g, 2, trainable=set())
    before = small.infer(x[:2])
    bufs = list(small.arena)
    big = Plan(g, 16, trainable=set(), store=small.store)
    assert any(a != b for a, b in zip(small.arena, bufs))            # replaced, and followed
    assert small.arena == big.arena[:len(small.arena)]
    out = big.infer(x)
    np.testing.assert_array_equal(small.infer(x[:2]), before)
    np.testing.assert_allclose(out[:2], before, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Plan(g, 16, trainable=set()).infer(x), out, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_resumes_bit_identically_in_a_fresh_engine():
    """params + optimizer_state after steps on two batch sizes, loaded into a new engine before it
    has any Plan: the next steps give the same bits as the engine that never stopped."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = tiny_cnn(10)
    trainable = trainable_params(g, 3)
    a = _engine(OpenCLEngine, g, trainable, "adam", False)
    x, y, xv, yv = _data()
    for i in (0, 8, 16):
        a.train_step(x[i:i + 8], y[i:i + 8], 0.01)
    ckpt = a.params(), a.optimizer_state()
    b = _engine(OpenCLEngine, g, trainable, "adam", False)
    b.load_params(ckpt[0])
    b.load_optimizer_state(ckpt[1])
    assert b.t == a.t == 3
    for e in (a, b):
        e.train_step(x[16:], y[16:], 0.01)
        e.train_step(x[:8], y[:8], 0.01)
    pa, pb = a.params(), b.params()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    sa, sb = a.optimizer_state(), b.optimizer_state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(a.eval_batch(xv, yv)[2], b.eval_batch(xv, yv)[2])


def test_loading_frozen_bn_statistics_folds_them_again_for_every_plan():
    """A frozen, folded BN whose statistics are loaded (a resume, a prefix swap) is folded again in
    the store: the training Plan and the eval Plan both see it, as the numpy engine does."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = tiny_cnn(10)
    trainable = trainable_params(g, 1)
    engines = [_engine(cls, g, trainable, "sgd", False) for cls in (NumpyEngine, OpenCLEngine)]
    x, y, xv, yv = _data()
    for e in engines:
        e.train_step(x[:8], y[:8], 0.05)
        e.eval_batch(xv, yv)
        p = e.params()
        p["bn1.running_mean"] = p["bn1.running_mean"] + 0.5
        p["bn2.weight"] = p["bn2.weight"] * 1.5
        e.load_params(p)
    assert "bn1" in engines[1].store.fold and "bn2" in engines[1].store.fold
    (ln, en, zn), (lc, ec, zc) = [_epoch(e, x, y, xv, yv) for e in engines]
    np.testing.assert_allclose(lc, ln, rtol=2e-4)
    np.testing.assert_allclose(zc, zn, rtol=1e-3, atol=1e-4)
    assert np.array_equal(engines[1].params()["bn1.running_mean"], engines[0].params()["bn1.running_mean"])


def test_a_plan_refuses_a_store_it_does_not_fit():
    from device_agent.backends.opencl.plan import OptimConfig, Plan

    g = tiny_cnn(10)
    last = trainable_params(g, "last")
    plan = Plan(g, 4, trainable=last, optimizer=OptimConfig("sgd", momentum=0.9))
    with pytest.raises(BackendError, match="trains its store's parameters"):
        Plan(g, 2, trainable=trainable_params(g, 2), store=plan.store)
    with pytest.raises(BackendError, match="the store was built for"):
        Plan(g, 2, trainable=last, optimizer=OptimConfig("adam"), store=plan.store)
    with pytest.raises(BackendError, match="holds the parameters of model"):
        Plan(_renamed(g), 2, trainable=set(), store=plan.store)
    other = Plan(g, 2, trainable=last, store=plan.store)     # same store: same weights, same step
    plan.train_step(np.ones((4, 3, 8, 8), np.float32), np.arange(4), 0.1)
    assert other.step_count == plan.step_count == 1
    np.testing.assert_array_equal(other.params()["fc.weight"], plan.params()["fc.weight"])


def _renamed(g):
    import copy

    h = copy.deepcopy(g)
    h.params = {("x" + k if k.startswith("fc.") else k): v for k, v in h.params.items()}
    return h
