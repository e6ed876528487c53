"""The divergence guard (issue 14): a run stops with code `diverged` when its loss is not finite or
blows up (monitor.DivergenceGuard), the message names the checkpoint that really is on disk (or says
there is none), and neither engine applies the update of a step whose loss is not finite."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.backends.numpy import NumpyEngine
from device_agent.errors import JobError
from device_agent.training.monitor import WINDOW, DivergenceGuard
from device_agent.training.optim import make_optimizer
from device_agent.protocol import TrainJob
from device_agent.training.train import main
from clcheck import needs_cl
from train_helpers import make_root, tiny_cnn


# ------------------------------------------------------------------------------ the rule
def _feed(guard, losses):
    return [guard.check(x) for x in losses]


def test_guard_rule():
    g = DivergenceGuard(10.0, num_classes=10)
    assert _feed(g, [2.3] + [1.0] * (WINDOW - 1)) == [None] * WINDOW
    assert g.check(9.9 * 2.3) is None                       # median 1.0, but never below ln(10) = 2.30
    why = g.check(24.0)
    assert why is not None and "more than 10 x ln(classes)" in why
    # the median rule, on a run whose losses sit above ln(K)
    g = DivergenceGuard(10.0, num_classes=2)
    _feed(g, [8.0] * WINDOW)
    assert g.check(79.0) is None and "median of the last 50 steps (8)" in g.check(81.0)
    # a loss that blew up within the first steps and stays there: the first step's loss is the reference
    g = DivergenceGuard(10.0, num_classes=10)
    assert _feed(g, [2.36] + [7e6] * (WINDOW - 1)) == [None] * WINDOW
    assert "first step's loss (2.36)" in g.check(7e6)
    # nothing is judged before WINDOW steps ran, except a non-finite loss
    g = DivergenceGuard(10.0, num_classes=10)
    assert _feed(g, [2.3, 1e9, 1e12]) == [None] * 3
    assert g.check(float("nan")) == "loss is nan" and g.check(float("inf")) == "loss is inf"
    # factor None: only non-finite losses stop a run
    g = DivergenceGuard(None, num_classes=10)
    assert _feed(g, [2.3] * WINDOW + [1e30]) == [None] * (WINDOW + 1) and g.check(-math.inf) == "loss is -inf"
    # the state round-trips (checkpoint meta) and keeps the last WINDOW losses only
    g = DivergenceGuard(10.0, num_classes=10)
    _feed(g, list(np.linspace(1, 3, 70)))
    h = DivergenceGuard(10.0, num_classes=10)
    h.load_state(json.loads(json.dumps(g.state())), "ckpt")
    assert h.state() == g.state() and len(h.recent) == WINDOW and h.first == 1.0
    for bad in ({"first": 1.0, "recent": [1.0, None]}, {"first": None, "recent": [1.0]}, [1.0], {"recent": [1] * 51}):
        with pytest.raises(Exception, match="meta field 'guard'"):
            h.load_state(bad, "ckpt")


def test_job_fields():
    base = {"model": "m", "data": "d", "out": "o"}
    job = TrainJob.from_dict(base)
    assert (job.diverge_factor, job.select, job.patience) == (10.0, "val_acc", None)
    assert TrainJob.from_dict(dict(base, diverge_factor=None)).diverge_factor is None
    for field, value, words in (("diverge_factor", 1, "must be > 1"), ("diverge_factor", "x", "must be a finite number"),
                                ("select", "acc", "must be one of 'val_acc', 'val_loss'"),
                                ("patience", 0, "must be >= 1"), ("patience", 1.5, "must be an integer")):
        with pytest.raises(JobError, match=f"job field '{field}' {words}"):
            TrainJob.from_dict(dict(base, **{field: value}))


# ------------------------------------------------------------------------------ runs
JOB = {"epochs": 2, "batch": 32, "optimizer": "sgd", "momentum": 0.9, "backend": "numpy", "seed": 1}


def _main(tmp_path, capsys, **kw):
    paths = make_root(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps(dict(paths, **JOB, **kw)))
    rc = main([str(tmp_path / "job.json")])
    out, err = capsys.readouterr()
    evs = [json.loads(ln) for ln in out.splitlines()]
    return rc, evs, err, tmp_path / "runs" / "r"


def test_a_blown_up_loss_stops_the_run_and_names_the_checkpoint_kept(tmp_path, capsys):
    # lr 1e6: 2.4 at step 1, then 1e6..1e7 for ever (finite: the old loop finished "done")
    rc, evs, err, out = _main(tmp_path, capsys, lr=1e6)
    assert rc == 1
    last = evs[-1]
    assert last["ev"] == "error" and last["code"] == "diverged"
    steps = [e for e in evs if e["ev"] == "step"]
    assert len(steps) == WINDOW and steps[0]["loss"] < 3 and min(e["loss"] for e in steps[1:]) > 1e4
    ck = checkpoint.load_latest(out / "ckpt")
    assert ck.step == 45                                  # the end of epoch 1 (1437 images / 32)
    assert f"at step {WINDOW + 1} (epoch 2, batch 6)" in last["message"]
    assert "more than 10 x" in last["message"] and "(epoch 1," not in last["message"]
    assert f"the last checkpoint is {ck.path} (step 45, end of epoch 1)" in last["message"]
    assert err.count("\n") == 1 and err.startswith("error: loss ")
    assert not (out / "final").exists()                   # best/ of epoch 1 stays
    assert json.loads((out / "best" / "model.json").read_text())["meta"]["trained"]["epoch"] == 1


def test_a_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, capsys):
    rc, evs, err, out = _main(tmp_path, capsys, lr=1e38)     # inf at step 2
    assert rc == 1 and evs[-1]["code"] == "diverged"
    msg = evs[-1]["message"]
    assert msg.startswith("loss is ") and "no checkpoint was written before it" in msg
    assert "the last good checkpoint is kept" not in msg
    assert checkpoint.checkpoints(out / "ckpt") == [] and not (out / "final").exists()


def test_diverge_factor_none_lets_a_finite_blow_up_finish(tmp_path, capsys):
    rc, evs, _, _ = _main(tmp_path, capsys, lr=1e6, diverge_factor=None)
    assert rc == 0 and evs[-1]["ev"] == "done"


def test_the_guard_state_is_in_every_checkpoint(tmp_path, capsys):
    rc, evs, _, out = _main(tmp_path, capsys, lr=0.02, checkpoint_every=20, keep_checkpoints=10)
    assert rc == 0
    losses = [e["loss"] for e in evs if e["ev"] == "step"]
    for step, p in checkpoint.checkpoints(out / "ckpt"):
        g = checkpoint.load(p).meta["guard"]
        assert g["first"] == losses[0] and g["recent"] == losses[max(0, step - WINDOW):step], step


# ------------------------------------------------------------------------------ no update from a bad step
def _poisoned(x):
    """Inputs whose activations overflow to inf: inf - inf in the softmax makes the loss NaN
    (a NaN pixel would not do: OpenCL's fmax-based ReLU maps NaN to 0)."""
    with np.errstate(over="ignore"):
        return (np.asarray(x) * np.float32(3e38)).astype(np.float32)


def test_numpy_engine_never_applies_a_non_finite_step():
    g = tiny_cnn(dropout=0)
    tr = {k for k, p in g.params.items() if p.trainable}
    opt = make_optimizer("sgd", {k: g.params[k].shape for k in g.params if k in tr}, np.float32, momentum=0.9)
    e = NumpyEngine(g, tr, opt, bn_batch_stats=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.arange(4)
    e.train_step(x, y, 0.1)
    before, state = e.params(), e.optimizer_state()
    loss, _ = e.train_step(_poisoned(x), y, 0.1)
    assert not math.isfinite(loss)
    after, state2 = e.params(), e.optimizer_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.array_equal(state[k], state2[k]) for k in state)


@needs_cl
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_opencl_engine_never_applies_a_non_finite_step(optimizer):
    from device_agent.backends.opencl import OpenCLEngine

    g = tiny_cnn(dropout=0)
    tr = {k for k, p in g.params.items() if p.trainable}
    opt = make_optimizer(optimizer, {k: g.params[k].shape for k in g.params if k in tr}, np.float32, momentum=0.9)
    e = OpenCLEngine(g, tr, opt, bn_batch_stats=False, clip_grad_norm=1.0)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.arange(4)
    first, _ = e.train_step(x, y, 0.01)
    before, state = e.params(), e.optimizer_state()
    loss, _ = e.train_step(_poisoned(x), y, 0.01)
    assert not math.isfinite(loss)
    after, state2 = e.params(), e.optimizer_state()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a NaN step changed the weights"
    assert all(np.array_equal(state[k], state2[k]) for k in state), "a NaN step changed the optimizer state"
    # the next good step goes on from the last good one: as if the bad step never ran
    ref = OpenCLEngine(g, tr, make_optimizer(optimizer, {k: g.params[k].shape for k in g.params if k in tr},
                                             np.float32, momentum=0.9), bn_batch_stats=False, clip_grad_norm=1.0)
    ref.train_step(x, y, 0.01)
    a, b = e.train_step(x[::-1].copy(), y, 0.01)[0], ref.train_step(x[::-1].copy(), y, 0.01)[0]
    assert a == b and all(np.array_equal(e.params()[k], ref.params()[k]) for k in before)
