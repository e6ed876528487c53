"""stages.py + builder.reinit: which parameters train, the prefix/suffix split (a residual crossing the
cut, dropout kept out of the cache), and that the split computes exactly what the whole graph does."""
from __future__ import annotations

import numpy as np
import pytest

from device_agent.backends.numpy import NumpyEngine, NumpyRef
from device_agent.model.builder import reinit
from device_agent.errors import JobError
from device_agent.training.optim import make_optimizer
from device_agent.training.stages import split_graph, trainable_params
from thomas_cli.zoo import build
from clcheck import needs_cl
from train_helpers import tiny_cnn

GROUPS = ["c1", "bn1", "c2", "bn2", "c3", "bn3", "c4", "bn4", "fc"]


def test_groups_and_selection():
    g = tiny_cnn()
    assert g.param_groups() == GROUPS
    assert trainable_params(g, "last") == {"fc.weight", "fc.bias"}
    assert trainable_params(g, 2) == {"fc.weight", "fc.bias", "bn4.weight", "bn4.bias"}
    assert trainable_params(g, "all") == {k for k, p in g.params.items() if p.trainable}
    assert trainable_params(g, 9) == trainable_params(g, "all")
    with pytest.raises(JobError, match="'layers' is 10, but model 'tiny' has only 9 layers"):
        trainable_params(g, 10)


def test_last_cut_keeps_dropout_in_the_trainable_part():
    g = tiny_cnn()
    sp = split_graph(g, trainable_params(g, "last"))
    assert sp.cut == ["flat"]
    assert [n.name for n in sp.suffix.nodes] == ["drop", "fc"]
    assert "drop" not in [n.name for n in sp.prefix.nodes]
    assert split_graph(g, trainable_params(g, "all")).prefix is None


def _check_split_matches_whole(g, layers, rtol=1e-10):
    trainable = trainable_params(g, layers)
    sp = split_graph(g, trainable)
    x = np.random.default_rng(0).standard_normal((4,) + tuple(g.inputs[0].shape[1:]))
    y = np.arange(4) % 3
    whole = NumpyRef(g, trainable=trainable, dtype=np.float64)
    out = whole.forward(x, training=True, bn_batch_stats=False, grad=True, seed=1)["logits"]
    whole.loss(y)
    gw = whole.backward()
    feats = NumpyRef(sp.prefix, trainable=set(), dtype=np.float64).forward(x)
    part = NumpyRef(sp.suffix, trainable=trainable, dtype=np.float64)
    out2 = part.forward(feats, training=True, bn_batch_stats=False, grad=True, seed=1)["logits"]
    part.loss(y)
    gp = part.backward()
    np.testing.assert_allclose(out2, out, rtol=rtol)
    for k in trainable:
        np.testing.assert_allclose(gp[k], gw[k], rtol=rtol, atol=1e-14)
    return sp, part


def test_a_residual_crossing_the_cut_gives_two_cut_tensors():
    g = tiny_cnn()
    sp, part = _check_split_matches_whole(g, 5)            # c3 onward: the add still reads r1 from the prefix
    assert sp.cut == ["r2", "r1"]
    assert [n.name for n in sp.prefix.nodes] == ["c1", "bn1", "r1", "c2", "bn2", "r2"]
    assert set(sp.prefix.params) == {f"{p}.{s}" for p in ("c1", "c2") for s in ("weight",)} | \
        {f"{b}.{s}" for b in ("bn1", "bn2") for s in ("weight", "bias", "running_mean", "running_var")}
    # the frozen prefix keeps nothing for backward: only suffix nodes are on the tape
    assert set(part.tape_nodes) <= {n.name for n in sp.suffix.nodes}


@pytest.mark.parametrize("layers", ["last", 3, 5])
def test_mobilenet_v2_split_matches_whole(layers):
    g = build("mobilenet_v2", num_classes=3, size=32, width=0.25, seed=0)
    sp, _ = _check_split_matches_whole(g, layers)
    assert sp.prefix is not None and len(sp.cut) >= 1


def test_engine_trains_only_the_suffix():
    g = tiny_cnn()
    trainable = trainable_params(g, "last")
    sp = split_graph(g, trainable)
    opt = make_optimizer("sgd", {k: g.params[k].shape for k in sorted(trainable)}, momentum=0.9)
    eng = NumpyEngine(sp.suffix, trainable, opt, bn_batch_stats=False)
    feats = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    before = eng.params()
    loss, correct = eng.train_step({"flat": feats}, np.arange(8) % 10, 0.1)
    after = eng.params()
    assert np.isfinite(loss) and 0 <= correct <= 8
    assert set(after) == {"fc.weight", "fc.bias"}
    assert not np.array_equal(before["fc.weight"], after["fc.weight"])
    assert int(eng.optimizer_state()["step"]) == 1
    m = eng.memory()
    assert m["peak"] == m["params"] + m["grads"] + m["optimizer"] + m["activations"] and m["activations"] > 0


def test_reinit_reproduces_the_zoo_init():
    for name in ("mobilenet_v2", "mobilenet_v3_small"):
        a = build(name, num_classes=4, size=32, width=0.25, seed=7)
        r = reinit(build(name, num_classes=4, size=32, width=0.25, seed=1), seed=7)
        assert all(np.array_equal(a.weights[k], r.weights[k]) for k in a.weights)
    a = build("alexnet", num_classes=4, size=63, seed=2)
    r = reinit(build("alexnet", num_classes=4, size=63, seed=0), seed=2)
    assert all(np.array_equal(a.weights[k], r.weights[k]) for k in a.weights)
    # BN statistics are reset too
    g = tiny_cnn()
    g.weights["bn1.running_mean"][:] = 3
    assert np.all(reinit(g, 0).weights["bn1.running_mean"] == 0)


@needs_cl
def test_opencl_engine_trains_a_suffix_cut_across_a_residual():
    """Two cut tensors (a residual crosses the cut) feed the OpenCL engine as a dict, exactly as the
    numpy engine takes them: same loss, same updated weights after three steps."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = tiny_cnn()
    trainable = trainable_params(g, 5)
    sp = split_graph(g, trainable)
    assert sp.cut == ["r2", "r1"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + tuple(g.inputs[0].shape[1:])).astype(np.float32)
    feats = NumpyRef(sp.prefix, trainable=set()).forward(x)
    y = np.arange(6) % 3
    engines = []
    for cls in (NumpyEngine, OpenCLEngine):
        opt = make_optimizer("sgd", {k: g.params[k].shape for k in sorted(trainable)}, momentum=0.9)
        engines.append(cls(sp.suffix, trainable, opt, bn_batch_stats=False))
    losses = [[e.train_step(dict(feats), y, 0.05)[0] for _ in range(3)] for e in engines]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    pn, pc = engines[0].params(), engines[1].params()
    for k in trainable:
        np.testing.assert_allclose(pc[k], pn[k], rtol=1e-4, atol=1e-5)
    loss, correct, logits = engines[1].eval_batch(dict(feats), y)
    assert logits.shape == (6, 10) and np.isfinite(loss)


@needs_cl
def test_recompute_job_field_reaches_the_opencl_plan():
    """job field recompute (default true): the OpenCL engine's Plans rewrite BN outputs for the
    backward — the same bits, fewer activation bytes; false keeps them; a non-bool value is one JobError line."""
    from device_agent.backends.opencl.engine import OpenCLEngine
    from device_agent.protocol import TrainJob

    assert TrainJob.from_dict({"model": "m", "data": "d", "out": "o"}).recompute    # on by default (< 5 % time)
    assert not TrainJob.from_dict({"model": "m", "data": "d", "out": "o", "recompute": False}).recompute
    with pytest.raises(JobError, match="job field 'recompute' must be true or false"):
        TrainJob.from_dict({"model": "m", "data": "d", "out": "o", "recompute": "yes"})
    g = build("mobilenet_v2", num_classes=3, size=32, width=0.25, seed=0)
    trainable = trainable_params(g, "all")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.arange(4) % 3
    runs = []
    for rc in (False, True):
        opt = make_optimizer("sgd", {k: g.params[k].shape for k in sorted(trainable)}, momentum=0.9)
        e = OpenCLEngine(g, trainable, opt, bn_batch_stats=True, recompute=rc)
        runs.append(([e.train_step(x, y, 0.05)[0] for _ in range(2)], e.params(), e.memory(), e.current))
    (l0, p0, m0, plan0), (l1, p1, m1, plan1) = runs
    assert plan1.recomputed and not plan0.recomputed
    assert l1 == l0 and all(np.array_equal(p1[k], p0[k]) for k in p0)
    assert m1["activations"] < m0["activations"]
