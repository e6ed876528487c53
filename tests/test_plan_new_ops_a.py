"""A whole small model using LeakyRelu (positive and negative alpha), PRelu (per channel and shared),
LogSoftmax inside the network, and dilated MaxPool / AveragePool (pads, ceil mode), trained 3 SGD
steps on the OpenCL engine against the numpy engine; frozen prefixes (BN folded into the conv
before a LeakyRelu) and inference Plans too. The Plan's activation fusion leaves the new ops alone.
In float64 the numpy engine's gradients match TorchTwin's (torch leaky_relu, prelu, log_softmax,
max_pool2d with dilation; AveragePool with dilation through F.unfold)."""
import numpy as np
import pytest

from clcheck import needs_cl, nontrivial_bn_stats, runtime
from device_agent.model.builder import GraphBuilder
from device_agent.backends.numpy import NumpyEngine, NumpyInfer
from device_agent.training.optim import make_optimizer

pytestmark = needs_cl


def new_ops_net(size: int = 12, classes: int = 10, seed: int = 0, log_softmax_head: bool = False):
    """conv-bn-leaky, dilated max pool (ceil), conv-bn-prelu, dilated avg pool, conv-leaky(alpha<0),
    log-softmax over channels, conv-prelu(shared), GAP, linear."""
    b = GraphBuilder("newops_a", input_shape=(None, 3, size, size), seed=seed)
    x = b.bn(b.conv(b.input, 8, 3, name="c1"), name="bn1")
    x = b.op("LeakyRelu", [x], {"alpha": 0.1}, name="leaky1")
    x = b.op("MaxPool", [x], {"kernel": [3, 3], "stride": [2, 2], "dilation": [2, 2], "pads": [2, 2, 2, 2],
                              "ceil_mode": True}, name="mp")
    x = b.bn(b.conv(x, 8, 3, name="c2"), name="bn2")
    x = b.op("PRelu", [x], name="prelu2", params={"slope": (np.linspace(0.05, 0.4, 8), True)})
    x = b.op("AveragePool", [x], {"kernel": [2, 2], "stride": [1, 1], "dilation": [2, 2], "pads": [1, 1, 1, 1],
                                  "count_include_pad": False}, name="ap")
    x = b.op("LeakyRelu", [b.conv(x, 6, 1, bias=True, name="c3")], {"alpha": -0.2}, name="leaky3")
    x = b.op("LogSoftmax", [x], {"axis": 1}, name="lsm")
    x = b.conv(x, 8, 3, stride=2, bias=True, name="c4")
    x = b.op("PRelu", [x], name="prelu4", params={"slope": (np.full(1, 0.25), True)})
    x = b.linear(b.flatten(b.gap(x, name="gap"), name="flat"), classes, name="fc", init="torch")
    if log_softmax_head:
        x = b.op("LogSoftmax", [x], {"axis": 1}, name="head")
    g = b.finish({"logits": x}, labels=[str(i) for i in range(classes)])
    return nontrivial_bn_stats(g)     # frozen-statistics paths see real values


def _close(a, b, what, rtol):
    scale = max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(a - b).max()) / scale
    assert err <= rtol, f"{what}: max |diff| / max |ref| = {err:.2e}"


def _batches(size=12, batch=4, steps=3):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((batch, 3, size, size)).astype(np.float32), rng.integers(0, 10, batch))
            for _ in range(steps)]


@pytest.mark.torch
@pytest.mark.parametrize("batch_stats", [True, False])
def test_numpy_gradients_match_torch(batch_stats):
    """float64: the numpy engine's loss and every gradient (PRelu slopes included) equal the
    TorchTwin's (an independent torch interpreter of the graph) to 1e-9."""
    torch = pytest.importorskip("torch")
    from device_agent.backends.numpy import NumpyRef
    from torch_twin import TorchTwin

    g = new_ops_net()
    x, y = _batches(steps=1)[0]
    ref = NumpyRef(g, dtype=np.float64)
    ref.forward(x.astype(np.float64), training=True, bn_batch_stats=batch_stats, grad=True)
    loss = ref.loss(y)
    grads = ref.backward()
    tw = TorchTwin(g, dtype=torch.float64)
    tl = tw.loss(tw.forward({"input": x.astype(np.float64)}, training=True, bn_batch_stats=batch_stats)["logits"], y)
    assert abs(loss - tl.item()) <= 1e-9 * abs(tl.item())
    tg = tw.grads(tl)
    assert set(tg) == set(grads) and "prelu2.slope" in tg and "prelu4.slope" in tg
    for k, v in tg.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("stage", ["all_batch_stats", "all_frozen_bn", "suffix_frozen_prefix", "recompute"])
def test_three_sgd_steps_opencl_match_numpy(stage):
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = new_ops_net()
    trainable = {k for k, p in g.params.items() if p.trainable}
    if stage == "suffix_frozen_prefix":     # c1..c3 frozen: their BN folds, the new ops run forward only
        trainable = {"c4.weight", "c4.bias", "prelu4.slope", "fc.weight", "fc.bias"}
    batch_stats = stage in ("all_batch_stats", "recompute")
    engines = []
    for cls in (NumpyEngine, OpenCLEngine):
        opt = make_optimizer("sgd", {k: g.params[k].shape for k in sorted(trainable)}, momentum=0.9,
                             weight_decay=1e-4)
        kw = {"runtime": runtime(), "recompute": stage == "recompute"} if cls is OpenCLEngine else {}
        engines.append(cls(g, trainable, opt, bn_batch_stats=batch_stats, **kw))
    ref, ocl = engines
    for step, (x, y) in enumerate(_batches()):
        lr, lc = ref.train_step(x, y, 0.05)[0], ocl.train_step(x, y, 0.05)[0]
        assert np.isfinite(lr) and abs(lc - lr) <= 1e-4 * abs(lr), f"step {step}: loss {lc} vs {lr}"
    got, want = ocl.params(), ref.params()
    moved = 0
    for k in want:
        _close(got[k], want[k], k, 2e-4)
        moved += not np.array_equal(want[k], g.weights[k])
    assert moved >= len(trainable)            # every trainable tensor (and BN statistics) changed
    for k in set(want) - trainable - {k for k in want if "running" in k}:
        np.testing.assert_array_equal(want[k], g.weights[k])   # frozen weights stay put
    plan = ocl.current
    ops = {n.op for n in plan.graph.nodes}
    assert {"LeakyRelu", "PRelu", "LogSoftmax", "MaxPool", "AveragePool"} <= ops   # nothing fused away
    assert plan.acts == {}                                       # only Relu / Clip(0, 6) fuse
    if stage == "recompute":     # PRelu reads its input, the BN output: rewritten for its backward
        assert "bn2" in plan.recomputed and plan.recomputed["bn2"] == ["prelu2"]
    if stage == "suffix_frozen_prefix":
        assert "BatchNorm" not in ops                            # the frozen prefix's BN folded


def test_inference_plan_with_folded_bn_and_log_softmax_head():
    from device_agent.backends.opencl.plan import Plan

    g = new_ops_net(log_softmax_head=True)
    x = _batches(batch=3, steps=1)[0][0]
    want = NumpyInfer(g).forward(x)["logits"]
    plan = Plan(g, batch=3, trainable=set(), runtime=runtime())
    assert "BatchNorm" not in {n.op for n in plan.graph.nodes}
    got = plan.infer(x)
    _close(got, want, "log-probabilities", 1e-5)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, rtol=1e-5)


def test_prelu_slope_is_a_layer_of_its_own():
    from device_agent.training.stages import trainable_params

    g = new_ops_net()
    assert g.params["prelu2.slope"].shape == (8,) and g.params["prelu4.slope"].shape == (1,)
    assert trainable_params(g, 2) == {"prelu4.slope", "fc.weight", "fc.bias"}


def test_builder_helpers():
    b = GraphBuilder("h", input_shape=(None, 4, 9, 9))
    x = b.maxpool(b.input, 3, stride=1, pad=2, dilation=2, ceil_mode=True, name="mp")
    x = b.avgpool(x, 2, stride=1, dilation=(2, 1), count_include_pad=True, name="ap")
    x = b.prelu(b.leaky_relu(x, 0.2, name="lk"), name="pc")
    x = b.log_softmax(b.prelu(x, shared=True, init=0.1, name="ps"), axis=1, name="ls")
    x = b.act(b.act(x, "prelu", name="pa"), "leaky_relu", name="la")
    plain = b.maxpool(x, 2, name="plain")
    g = b.finish({"y": plain})
    attrs = {n.name: n.attrs for n in g.nodes}
    assert attrs["mp"]["dilation"] == [2, 2] and attrs["ap"]["dilation"] == [2, 1]
    assert "dilation" not in attrs["plain"]                 # dilation 1 leaves model.json as it was
    assert attrs["lk"] == {"alpha": 0.2} and attrs["la"] == {"alpha": 0.01} and attrs["ls"] == {"axis": 1}
    assert g.params["pc.slope"].shape == (4,) and g.params["ps.slope"].shape == (1,)
    assert g.params["pa.slope"].trainable and g.params["pa.slope"].group == "pa"
    np.testing.assert_array_equal(g.weights["pc.slope"], np.full(4, 0.25, np.float32))
    np.testing.assert_array_equal(g.weights["ps.slope"], [np.float32(0.1)])
    assert g.infer_shapes(2)["y"] == (2, 4, 3, 4)       # 9 -> mp 9 -> ap 7x8 -> 3x4
