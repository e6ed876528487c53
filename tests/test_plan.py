"""The OpenCL Plan against the numpy reference: whole training steps, memory reuse, BN folding,
frozen prefixes, gradient accumulation at branches, and kernel build errors."""
import numpy as np
import pytest

from clcheck import needs_cl, nontrivial_bn_stats, runtime
from device_agent.backends.numpy import NumpyRef
from test_numpy_ref import branchy_graph

pytestmark = needs_cl

torch = pytest.importorskip("torch")


def _plan(*args, **kw):
    from device_agent.backends.opencl.plan import Plan

    return Plan(*args, runtime=runtime(), **kw)


def _zoo(name, size, classes=10, width=1.0):
    from thomas_cli import zoo

    g = zoo.build(name, num_classes=classes, size=size, width=width, seed=0)
    return nontrivial_bn_stats(g)     # frozen-statistics paths see real values


def _close(a, b, what, rtol=1e-4):
    scale = max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(a - b).max()) / scale
    assert err <= rtol, f"{what}: max |diff| / max |ref| = {err:.2e}"
    return err


def _torch_update(weights, grads, kind, lr, **opt):
    params = {k: torch.tensor(weights[k], requires_grad=True) for k in grads}
    if kind == "sgd":
        o = torch.optim.SGD(params.values(), lr=lr, momentum=opt.get("momentum", 0.0),
                            nesterov=opt.get("nesterov", False), weight_decay=opt.get("weight_decay", 0.0))
    else:
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        o = cls(params.values(), lr=lr, weight_decay=opt.get("weight_decay", 0.0))
    for k, p in params.items():
        p.grad = torch.tensor(grads[k])
    o.step()
    return {k: p.detach().numpy() for k, p in params.items()}


# NOTE: BN batch statistics over very few values (batch 2 at a 1x1 feature map) amplify float32
# rounding differences by orders of magnitude; batch 4 at 64x64 keeps >= 16 values per channel.
CASES = [("alexnet", 63, 2, "sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
         ("mobilenet_v2", 64, 4, "adam", {}),
         ("mobilenet_v3_small", 64, 4, "adamw", {"weight_decay": 0.01}),
         ("alexnet_bvlc", 67, 2, "adam", {})]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,batch,kind,opt", CASES, ids=[c[0] + "-" + c[3] for c in CASES])
def test_full_training_step_matches_numpy_ref(name, size, batch, kind, opt):
    from device_agent.backends.opencl.plan import OptimConfig

    g = _zoo(name, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    y = np.arange(batch) * 3 % 10
    ref = NumpyRef(g)
    ref.forward(x, training=True, grad=True, seed=11)
    ref_loss = ref.loss(y)
    grads = ref.backward()
    expect = _torch_update(g.weights, grads, kind, 0.01, **opt)
    ref64 = NumpyRef(g, dtype=np.float64)
    ref64.forward(x, training=True, grad=True, seed=11)
    ref64.loss(y)
    grads64 = ref64.backward()

    plan = _plan(g, batch=batch, optimizer=OptimConfig(kind, momentum=opt.get("momentum", 0.0),
                                                     weight_decay=opt.get("weight_decay", 0.0)))
    # gradients first (the plan's backward alone), then a real step from the same weights
    loss0, cl_grads = plan.loss_and_grads(x, y, seed=11)
    assert abs(loss0 - ref_loss) <= 1e-4 * abs(ref_loss)
    for k in grads:
        # NOTE: a bias feeding a conv + BN with batch statistics has a true gradient of 0 (the BN
        # removes any per-channel shift); float32 leaves noise there. So the oracle is float64 and
        # the allowance is numpy's own float32 noise on top of 1e-4 of the gradient's scale.
        noise = float(np.abs(grads[k] - grads64[k]).max())
        err = float(np.abs(cl_grads[k] - grads64[k]).max())
        assert err <= 1e-4 * float(np.abs(grads64[k]).max()) + 4 * noise + 1e-9, \
            f"{name} gradient of {k}: {err:.2e} (numpy float32 noise {noise:.2e})"
    plan.load_params(g.weights)   # the forward above updated the BN running statistics once
    loss, correct = plan.train_step(x, y, lr=0.01, seed=11)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    assert 0 <= correct <= batch
    got = plan.params()
    for k in expect:
        if kind == "sgd":
            _close(got[k], expect[k], f"{name} {k}")
        else:
            # NOTE: Adam's first step moves every weight by ~lr·sign(g): elements whose gradient is
            # at float32 noise level may flip sign legitimately, so compare where |g| is resolvable.
            noise = np.abs(grads[k] - grads64[k]).max()
            ok = np.abs(grads64[k]) > np.maximum(1e-3 * np.abs(grads64[k]).max(), 10 * noise)
            if ok.any():
                _close(got[k][ok], expect[k][ok], f"{name} {k}", rtol=2e-4)
    for k, v in ref.state_updates.items():          # BN running statistics updated in place
        _close(got[k], v, f"{name} {k}")


def test_branch_gradients_accumulate():
    g = branchy_graph()
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 6)).astype(np.float32)
    y = np.array([0, 2])
    ref = NumpyRef(g)
    ref.forward(x, grad=True)
    ref_loss = ref.loss(y)
    ref_grads = ref.backward()
    plan = _plan(g, batch=2, training=False)
    loss, grads = plan.loss_and_grads(x, y)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    for k in ref_grads:
        _close(grads[k], ref_grads[k], k)
    # a second step gives the same gradients: nothing accumulates across steps
    loss2, grads2 = plan.loss_and_grads(x, y)
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads2[k])


def test_memory_reuse_changes_bytes_not_results():
    g = _zoo("mobilenet_v2", 32, width=0.35)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 2])
    a = _plan(g, batch=2, reuse=True, training=False)
    b = _plan(g, batch=2, reuse=False, training=False)
    la, ga = a.loss_and_grads(x, y)
    lb, gb = b.loss_and_grads(x, y)
    assert la == lb
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])
    ma, mb = a.memory(), b.memory()
    assert ma["activations"] < 0.6 * mb["activations"], (ma, mb)
    assert ma["saved_by_reuse"] > 0 and mb["saved_by_reuse"] == 0


def test_arena_pool_shares_buffers_only_between_disjoint_lifetimes():
    """Activations are whole pooled buffers (no sub-buffers: NVIDIA's driver syncs on overlapping
    ones), and two storages share a buffer only when their lifetimes do not intersect."""
    import pyopencl as cl

    g = _zoo("mobilenet_v2", 32, width=0.35)
    plan = _plan(g, batch=2, bn_batch_stats=True)
    pools: dict[int, list] = {}
    for st in {id(s): s for s in plan._storage_of.values()}.values():
        pools.setdefault(st.pool, []).append(st)
    assert len(pools) == len(plan.arena) < len(plan._storage_of)
    for members in pools.values():
        for i, a in enumerate(members):
            assert a.nbytes <= plan.arena[a.pool].size
            for b in members[i + 1:]:
                assert a.end < b.start or b.end < a.start, (a, b)
    for name, ref in plan.refs.items():
        assert ref.buf.get_info(cl.mem_info.ASSOCIATED_MEMOBJECT) is None, name
    assert plan.memory()["activations"] == sum(b.size for b in plan.arena)


def test_inference_plan_folds_bn_and_matches():
    g = _zoo("mobilenet_v3_small", 32)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = NumpyRef(g).forward(x)["logits"]
    plan = _plan(g, batch=3, trainable=set())
    assert sum(n.op == "BatchNorm" for n in g.nodes) == 34
    assert not [n for n in plan.graph.nodes if n.op == "BatchNorm"]     # every BN follows a conv: all folded
    assert not [n for n in g.nodes if n.op == "BatchNorm" and n.name in plan.launch_labels()]
    assert not plan.bw_launches and plan.memory()["grads"] == 0
    _close(plan.infer(x), ref, "inference logits")


def test_frozen_prefix_records_no_backward_work():
    g = _zoo("mobilenet_v2", 32, width=0.35)
    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    plan = _plan(g, batch=2, trainable=last)
    bw = [lbl for lbl in plan.launch_labels()[len(plan.fw_launches):] if ":backward" in lbl]
    assert bw and all(lbl.startswith("classifier") for lbl in bw), bw
    assert plan.memory()["grads"] < 4 * 1300 * 10 + 4096


def test_last_layer_plan_folds_the_frozen_prefix_bn_and_matches():
    """Frozen statistics + frozen prefix: each conv + BN pair runs as one folded conv; gradients match
    numpy, params() returns the unfolded weights, load_params() of a frozen BN folds it again."""
    g = _zoo("mobilenet_v2", 32, width=0.35)
    last = {k for k in g.params if g.params[k].group == g.param_groups()[-1]}
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 2, 7])
    plan = _plan(g, batch=3, trainable=last, bn_batch_stats=False)
    assert not [n for n in plan.graph.nodes if n.op == "BatchNorm"]
    assert not [lbl for lbl in plan.launch_labels() if "bn_apply" in lbl]
    unfolded = _plan(g, batch=3, trainable=last, bn_batch_stats=False, fold_bn=False)
    assert [n for n in unfolded.graph.nodes if n.op == "BatchNorm"]

    def check(weights, what):
        ref = NumpyRef(g, trainable=last)
        ref.weights.update({k: np.asarray(v, np.float32) for k, v in weights.items()})
        ref.forward(x, training=True, bn_batch_stats=False, grad=True, seed=5)
        ref_loss = ref.loss(y)
        ref_grads = ref.backward()
        loss, grads = plan.loss_and_grads(x, y, seed=5)
        assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss), what
        assert set(grads) == last
        for k in last:
            _close(grads[k], ref_grads[k], f"{what} {k}")

    check(g.weights, "folded")
    got = plan.params()
    assert set(got) == set(g.weights)
    for k in g.weights:
        np.testing.assert_array_equal(got[k], g.weights[k])
    bn = next(n for n in g.nodes if n.op == "BatchNorm")
    w2 = dict(g.weights)
    w2[bn.inputs[1]] = g.weights[bn.inputs[1]] * 1.5
    w2[bn.inputs[3]] = g.weights[bn.inputs[3]] + 0.25
    plan.load_params({k: w2[k] for k in (bn.inputs[1], bn.inputs[3])})
    check(w2, "reloaded")
    np.testing.assert_array_equal(plan.params()[bn.inputs[1]], w2[bn.inputs[1]])


@pytest.mark.parametrize("name,size", [("mobilenet_v2", 32), ("alexnet", 63)])
def test_frozen_conv_activation_pairs_run_fused(name, size):
    """Inference and a last-layer step: each frozen conv/FC + ReLU/ReLU6 is one launch (the activation
    in the epilogue); the trainable head keeps its own activations; results match numpy."""
    g = _zoo(name, size, width=0.35) if name == "mobilenet_v2" else _zoo(name, size)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    inf = _plan(g, batch=2, trainable=set())
    assert inf.acts and not [n for n in inf.graph.nodes if n.op in ("Relu", "Clip")]
    assert set(inf.acts.values()) == ({"relu6"} if name == "mobilenet_v2" else {"relu"})
    _close(inf.infer(x), NumpyRef(g).forward(x)["logits"], "fused inference logits")
    plain = _plan(g, batch=2, trainable=set(), fuse_act=False)
    assert not plain.acts and [n for n in plain.graph.nodes if n.op in ("Relu", "Clip")]

    groups = g.param_groups()
    head = {k for k in g.params if g.params[k].group in groups[-2:] and g.params[k].trainable}   # two layers
    y = np.array([1, 2])
    plan = _plan(g, batch=2, trainable=head, bn_batch_stats=False)
    kept = [n for n in plan.graph.nodes if n.op in ("Relu", "Clip")]
    assert plan.acts and all(n.name not in plan.acts or n.op == "BatchNorm"
                             for n in plan.graph.nodes if set(n.inputs) & head)
    ref = NumpyRef(g, trainable=head)
    ref.forward(x, training=True, bn_batch_stats=False, grad=True, seed=3)
    ref_loss = ref.loss(y)
    ref_grads = ref.backward()
    loss, grads = plan.loss_and_grads(x, y, seed=3)
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    for k in head:
        _close(grads[k], ref_grads[k], k)
    if name == "alexnet":
        assert kept    # the ReLU between the two trainable FC layers has a backward: not fused


@pytest.mark.parametrize("stats", [True, False], ids=["batch_stats", "frozen_stats"])
def test_recompute_trades_memory_for_the_same_gradients(stats):
    """recompute=True: BN outputs are rewritten in the backward instead of kept; same bits, fewer bytes"""
    g = _zoo("mobilenet_v2", 32, width=0.35)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 2, 7, 3])
    groups = g.param_groups()
    train = None if stats else {k for k in g.params if g.params[k].group in groups[-4:] and g.params[k].trainable}
    a = _plan(g, batch=4, trainable=train, bn_batch_stats=stats)
    b = _plan(g, batch=4, trainable=train, bn_batch_stats=stats, recompute=True)
    assert b.recomputed and not a.recomputed
    assert any(lbl.endswith(":recompute") or ":recompute/" in lbl for lbl in b.launch_labels())
    la, ga = a.loss_and_grads(x, y, seed=2)
    lb, gb = b.loss_and_grads(x, y, seed=2)
    assert la == lb
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    assert b.memory()["activations"] < a.memory()["activations"]


def test_kernel_build_error_carries_the_log():
    from device_agent.backends.opencl.loader import KernelBuildError

    rt = runtime()
    with pytest.raises(KernelBuildError) as e:
        rt.kernel("activation.cl", "relu_fwd", defines={"REAL": "flaot"})
    msg = str(e.value)
    assert "activation.cl failed to build" in msg and "-DREAL=flaot" in msg
    assert "flaot" in msg.split("\n", 1)[1]   # the compiler's own log follows verbatim


def test_inference_plan_keeps_output_names_when_a_folded_bn_is_an_output():
    """A prefix graph cut right after a BN (the feature cache's split) still returns that tensor."""
    import copy

    g = copy.deepcopy(_zoo("mobilenet_v2", 32, width=0.35))
    bn = next(n for n in reversed(g.nodes) if n.op == "BatchNorm")
    g.outputs = [bn.outputs[0]]
    cut = g.nodes.index(bn) + 1
    g.nodes = g.nodes[:cut]
    used = {t for n in g.nodes for t in n.inputs}
    g.params = {k: v for k, v in g.params.items() if k in used}
    g.weights = {k: v for k, v in g.weights.items() if k in used}
    g.validate()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    plan = _plan(g, batch=2, trainable=set())
    out = plan.forward_all(x)
    assert list(out) == [bn.outputs[0]]
    _close(out[bn.outputs[0]], NumpyRef(g).forward(x)[bn.outputs[0]], "folded output")
