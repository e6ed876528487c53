"""dtype "mixed" in whole Plans: the halves' rounding, a MobileNetV2 step against float32 and float64,
the packed arena (bytes, sharing between Plans), and bytes by dtype.

Whole-model budget. A mixed step is the float32 step with every saved tensor perturbed by one
rounding of unit u = 2^-11 (the forward is untouched: the loss is bit-identical). Norm-wise, per
parameter gradient k, relative to the float64 reference:
  (a) each halved tensor the backward reads between the loss and k's consumer perturbs the chain by
      one relative rounding <= u, and to first order these add: e16_k <= u * depth_k;
  (b) where the model amplifies perturbations (BN with batch statistics over few values; a bias
      before such a BN has a true gradient of 0, so any noise is "relative error" ~1), float32's own
      distance from float64, e32_k, produced by roundings of unit 2^-24, shows the amplification;
      the same amplification of unit 2^-11 roundings gives e16_k <= 2^13 e32_k.
The test holds every gradient to max((a), (b)), and the step as a whole to 2 % (norm-wise,
mixed vs float32).
"""
from __future__ import annotations

import numpy as np
import pytest

from clcheck import needs_cl, nontrivial_bn_stats, runtime

pytestmark = needs_cl


def _plan(*args, **kw):
    from device_agent.backends.opencl.plan import Plan

    return Plan(*args, runtime=runtime(), **kw)


def _mnv2(size=32, width=0.35, classes=10):
    from thomas_cli import zoo

    return nontrivial_bn_stats(zoo.build("mobilenet_v2", num_classes=classes, size=size, width=width, seed=0))


def test_pack_unpack_round_to_nearest_even_like_numpy():
    """Ties to even, subnormal halves, the largest half, overflow to infinity, signed zeros, NaN."""
    from device_agent.backends.opencl.mixed import quarter
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    from clcheck import download, empty, upload

    sp = np.float32(2.0 ** -24)
    vals = [0.0, -0.0, 1.0, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -12, 65504.0, 65519.0, 65520.0, -70000.0,
            sp, sp / 2, sp * 1.5, 2 ** -14, 2 ** -14 * (1 - 2 ** -11), 3.14159, -2.71828, np.inf, -np.inf, np.nan]
    x = np.array(vals + list(np.random.default_rng(0).standard_normal(1001) * 100), np.float32)   # 1021: a tail of 1
    rt = runtime()
    b = LaunchBuilder(rt)
    src, f32 = upload(rt, "x", x), empty(rt, "y", x.shape)
    half = upload(rt, "h", np.full(x.shape, np.nan, np.float16))
    b.launch("mixed.cl", "pack_half", (quarter(x.size),), None, src, half, x.size)
    b.launch("mixed.cl", "unpack_half", (quarter(x.size),), None, half, f32, x.size)
    replay(rt.queue, b.launches, {})
    h, y = download(rt, half), download(rt, f32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    np.testing.assert_array_equal(h.view(np.uint16)[:-1001][~np.isnan(want[:-1001])],
                                  want.view(np.uint16)[:-1001][~np.isnan(want[:-1001])])
    np.testing.assert_array_equal(h, want)
    np.testing.assert_array_equal(y, want.astype(np.float32))
    assert np.signbit(y[1]) and y[7] == 65504 and np.isinf(y[8])


def _step(g, batch, dtype, stats, **kw):
    x = np.random.default_rng(0).standard_normal((batch, 3, g.inputs[0].shape[2], g.inputs[0].shape[3])).astype(np.float32)
    y = np.arange(batch) % 10
    p = _plan(g, batch=batch, trainable=None, bn_batch_stats=stats, dtype=dtype, **kw)
    return p, x, y, *p.loss_and_grads(x, y, seed=3)


@pytest.mark.parametrize("stats", [False, True], ids=["frozen_stats", "batch_stats"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
def test_mobilenet_v2_step_within_the_budget(stats, recompute):
    from device_agent.backends.numpy import NumpyRef

    g = _mnv2()
    a, x, y, la, ga = _step(g, 8, "float32", stats, recompute=recompute)
    b, _, _, lb, gb = _step(g, 8, "mixed", stats, recompute=recompute)
    assert b.halved and not a.halved
    names = lambda lns: {ln.kernel.function_name for ln in lns}  # noqa: E731
    assert "pack_half" in names(b.fw_launches) and "unpack_half" in names(b.bw_launches)
    assert not {"pack_half", "unpack_half"} & names(a.fw_launches + a.bw_launches)
    assert la == lb                       # the forward is float32 in both
    ref = NumpyRef(g, dtype=np.float64)
    ref.forward(x, training=True, grad=True, seed=3, bn_batch_stats=stats)
    ref.loss(y)
    g64 = ref.backward()
    consumer = {t: n.name for n in b.graph.nodes for t in n.inputs if t in b.graph.params}
    first_read = [min(b.t_bw[r] for r in rs) for rs in b.halved.values()]
    num = den = 0.0
    for k in g64:
        depth = sum(1 for t in first_read if t <= b.t_bw[consumer[k]])
        n64 = max(float(np.linalg.norm(g64[k])), 1e-30)
        e32 = float(np.linalg.norm(ga[k] - g64[k])) / n64
        e16 = float(np.linalg.norm(gb[k] - g64[k])) / n64
        assert e16 <= max(2.0 ** -11 * depth, (2 ** 13 + 1) * e32) + 1e-6, \
            f"{k}: mixed {e16:.2e}, float32 {e32:.2e}, {depth} halved tensors read before it"
        num += float(np.linalg.norm(gb[k] - ga[k])) ** 2
        den += float(np.linalg.norm(ga[k])) ** 2
    assert (num / den) ** 0.5 <= 0.02
    assert num > 0                        # the halves were read


def test_mixed_plan_bytes_by_dtype_and_the_packed_arena():
    g = _mnv2(size=64)
    a = _plan(g, batch=8, trainable=None, bn_batch_stats=True)
    b = _plan(g, batch=8, trainable=None, bn_batch_stats=True, dtype="mixed", packed=True)  # NVIDIA's default
    c = _plan(g, batch=8, trainable=None, bn_batch_stats=True, dtype="mixed", packed=False)  # is unpacked
    ma, mb, mc = a.memory(), b.memory(), c.memory()
    for m in (ma, mb, mc):
        assert sum(m["by_dtype"].values()) == m["peak"]
    assert "float16" not in ma["by_dtype"]
    halves = sum(int(np.prod(b.shapes[t])) * 2 for t in b.halved)
    assert 0 < mb["by_dtype"]["float16"] <= halves
    assert b.packed and not c.packed and not a.packed
    assert mb["peak"] < mc["peak"] < ma["peak"]
    assert mb["activations"] <= 0.55 * ma["activations"]   # weights and optimizer state stay float32
    x = np.random.default_rng(1).standard_normal((8, 3, 64, 64)).astype(np.float32)
    y = np.arange(8) % 10
    gb, gc = b.loss_and_grads(x, y, seed=1)[1], c.loss_and_grads(x, y, seed=1)[1]
    for k in gb:                          # where tensors live changes no bit
        np.testing.assert_array_equal(gb[k], gc[k], err_msg=k)


def test_packed_plans_of_one_engine_follow_the_shared_arena_when_it_grows(monkeypatch):
    """A batch-4 Plan built first, then a batch-16 Plan that enlarges the shared arena: the first
    Plan's sub-buffers are cut again from the new buffer and its steps stay what they were.
    (THOMAS_CL_PACKED=1: packed on every device; NVIDIA's default for mixed is whole buffers.)"""
    monkeypatch.setenv("THOMAS_CL_PACKED", "1")
    from device_agent.backends.opencl.engine import OpenCLEngine
    from device_agent.training.optim import make_optimizer

    g = _mnv2()
    opt = lambda: make_optimizer("sgd", {k: g.params[k].shape for k in g.params if g.params[k].trainable},  # noqa: E731
                                 np.float32, momentum=0.9)
    trainable = {k for k in g.params if g.params[k].trainable}
    rng = np.random.default_rng(2)
    x4, y4 = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), np.array([1, 2, 3, 4])
    x16, y16 = rng.standard_normal((16, 3, 32, 32)).astype(np.float32), np.arange(16) % 10
    e = OpenCLEngine(g, trainable, opt(), True, dtype="mixed", runtime=runtime())
    ref = OpenCLEngine(g, trainable, opt(), True, dtype="mixed", runtime=runtime())
    l1 = e.train_step(x4, y4, 0.01)
    before = list(e.store.scratch.bufs)
    e.train_step(x16, y16, 0.01)
    assert e.store.scratch.bufs[0] is not before[0]          # the arena grew
    l2 = e.train_step(x4, y4, 0.01)
    import pyopencl as cl

    p4, arena = e.plans[4], e.store.scratch.bufs[0]
    parents = {sub.get_info(cl.mem_info.ASSOCIATED_MEMOBJECT) for _, sub in p4._subs.values()}
    assert parents == {arena}                                   # cut again from the new buffer
    bound = {a.buf for ln in p4.fw_launches + p4.bw_launches for a in ln.args if hasattr(a, "buf")}
    assert {sub for _, sub in p4._subs.values()} & bound and not {
        b for b in bound if b.get_info(cl.mem_info.ASSOCIATED_MEMOBJECT) == before[0]}
    ref.train_step(x4, y4, 0.01)
    ref.load_params(e.params())
    ref.load_optimizer_state(e.optimizer_state())
    # the same weights and state through a Plan that never moved: the same step, bit for bit
    e.train_step(x4, y4, 0.01)
    ref.store.step = e.store.step - 1
    ref.train_step(x4, y4, 0.01)
    for k, v in e.params().items():
        np.testing.assert_array_equal(v, ref.params()[k], err_msg=k)
    assert np.isfinite(l1[0]) and np.isfinite(l2[0])
    assert e.plans[4].packed and e.memory()["activations"] >= e.plans[16].arena_bytes


def test_dtype_errors_are_one_line():
    from device_agent.backends.opencl.mixed import check_dtype
    from device_agent.engine import resolve_backend
    from device_agent.errors import BackendError, JobError

    with pytest.raises(BackendError, match="float64"):
        check_dtype(np.float64)
    with pytest.raises(BackendError, match="float16"):
        check_dtype("half")
    with pytest.raises(BackendError, match="fp8"):
        check_dtype("fp8")
    assert check_dtype("mixed") == "mixed" and check_dtype(np.float32) == "float32"
    with pytest.raises(JobError, match="only the OpenCL backend"):
        resolve_backend("numpy", "mixed")
    assert resolve_backend("auto", "mixed") == "opencl"
