"""Uploading the next batch while a step runs (backends/opencl/staging.py, Plan.stage, the engines'
`ahead`): the same numbers bit for bit as uploading each batch in its own step, every batch crossing
to the device exactly once, a staged batch used only by the step given those very arrays, and the
training loop prefetching end to end. PoCL runs it here with THOMAS_CL_PREFETCH=1 (the default is
on for GPUs only)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clcheck import needs_cl
from device_agent.errors import BackendError
from device_agent.training import checkpoint
from device_agent.training.stages import trainable_params
from test_cl_store import _data, _engine, count_transfers
from train_helpers import tiny_cnn

pytestmark = needs_cl


def _plan(g, batch=4, **kw):
    from device_agent.backends.opencl.plan import OptimConfig, Plan

    return Plan(g, batch=batch, optimizer=OptimConfig("sgd", momentum=0.9), **kw)


def _batches(n=5, batch=4, size=8, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 3, size, size)).astype(np.float32), rng.integers(0, 10, batch))
            for _ in range(n)]


def test_staged_steps_equal_plain_steps_bit_for_bit():
    """Five steps, each staging the next batch during its kernels, against five plain steps: the same
    losses and weights bit for bit; each batch goes up once, and four come from staging."""
    g = tiny_cnn(10)
    data = _batches()
    plain, staged = _plan(g), _plan(g)
    ref = [plain.train_step(x, y, lr=0.05, seed=i) for i, (x, y) in enumerate(data)]
    with count_transfers() as c:
        got = []
        for i, (x, y) in enumerate(data):
            nxt = data[i + 1] if i + 1 < len(data) else None
            got.append(staged.train_step(x, y, lr=0.05, seed=i, then=nxt and (lambda n=nxt: staged.stage(*n))))
    assert got == ref
    for k, v in plain.params().items():
        assert np.array_equal(staged.params()[k], v), k
    assert c["to_device"] == sum(x.nbytes + 4 * len(y) for x, y in data)
    assert c["device_copies"] == 2 * (len(data) - 1)          # input and labels of each staged step
    assert staged.memory()["io"] == plain.memory()["io"] + data[0][0].nbytes + 4 * len(data[0][1])


def test_a_step_given_other_arrays_ignores_the_staged_batch():
    """Staged (x1, y1), then a step on (x2, y2) — equal contents in new arrays too — trains on what it
    was given: the staged batch is dropped, never used for another step."""
    g = tiny_cnn(10)
    (x1, y1), (x2, y2) = _batches(2)
    a, b = _plan(g), _plan(g)
    a.stage(x1, y1)
    assert a.train_step(x2, y2, lr=0.05) == b.train_step(x2, y2, lr=0.05)
    a.stage(x1, y1)
    assert a.train_step(x1.copy(), y1, lr=0.05) == b.train_step(x1, y1, lr=0.05)
    assert a._staging.held is None
    for k, v in b.params().items():
        assert np.array_equal(a.params()[k], v), k


def test_an_inference_plan_stages_its_next_input():
    from device_agent.backends.opencl.plan import Plan

    g = tiny_cnn(10)
    p = Plan(g, batch=4, trainable=set())
    xs = [x for x, _ in _batches(3)]
    ref = [p.infer(x) for x in xs]
    got = [p.infer(x, then=(lambda n=xs[i + 1]: p.stage(n)) if i + 1 < len(xs) else None) for i, x in enumerate(xs)]
    for r, o in zip(ref, got):
        assert np.array_equal(r, o)


def test_stage_refuses_what_the_plan_cannot_take():
    from device_agent.backends.opencl.plan import Plan

    g = tiny_cnn(10)
    (x, y), = _batches(1)
    train, infer = _plan(g), Plan(g, batch=4, trainable=set())
    with pytest.raises(BackendError, match="labels"):
        train.stage(x)
    with pytest.raises(BackendError, match="labels"):
        infer.stage(x, y)
    with pytest.raises(BackendError, match=r"shape \(3, 3, 8, 8\)"):
        train.stage(x[:3], y)
    with pytest.raises(BackendError, match=r"labels have shape \(3,\)"):
        train.stage(x, y[:3])


def test_releasing_a_plan_with_an_upload_in_flight():
    g = tiny_cnn(10)
    (x, y), = _batches(1)
    p = _plan(g)
    p.stage(x, y)
    p.release()
    p.release()


def _run_epochs(eng, x, y, xv, yv, batch=8, epochs=2):
    """The loop's pattern (train.py): each step and eval gets the next batch as `ahead`."""
    out = []
    for _ in range(epochs):
        tb = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        losses = [eng.train_step(*b, 0.05, ahead=(lambda n=tb[j + 1]: n) if j + 1 < len(tb) else None)
                  for j, b in enumerate(tb)]
        vb = [(xv[i:i + batch], yv[i:i + batch]) for i in range(0, len(xv), batch)]
        ev = [eng.eval_batch(*b, ahead=(lambda n=vb[j + 1]: n) if j + 1 < len(vb) else None)
              for j, b in enumerate(vb)]
        out.append((losses, [e[0] for e in ev], np.concatenate([e[2] for e in ev])))
    return out


def test_the_engine_prefetches_across_batch_sizes_and_evals(monkeypatch):
    """Two epochs (partial last batch, eval with a partial batch) with prefetch on and off: the same
    losses, eval losses, logits and weights bit for bit; in the second epoch (every Plan built)
    each batch goes up exactly once and every step but each pass's first starts from staging."""
    from device_agent.backends.opencl.engine import OpenCLEngine

    g = tiny_cnn(10)
    tr = trainable_params(g, "all")
    x, y, xv, yv = _data()
    runs, engines = [], []
    for flag in ("0", "1"):
        monkeypatch.setenv("THOMAS_CL_PREFETCH", flag)
        eng = _engine(OpenCLEngine, g, tr)
        assert eng.prefetch == (flag == "1")
        engines.append(eng)
        runs.append(_run_epochs(eng, x, y, xv, yv, epochs=1))
        with count_transfers() as c:
            runs[-1] += _run_epochs(eng, x, y, xv, yv, epochs=1)
    for (l0, e0, z0), (l1, e1, z1) in zip(*runs):
        assert l0 == l1 and e0 == e1 and np.array_equal(z0, z1)
    for k, v in engines[0].params().items():
        assert np.array_equal(engines[1].params()[k], v), k
    assert c["to_device"] == x.nbytes + 4 * len(y) + xv.nbytes
    assert c["device_copies"] == 2 * (3 - 1) + (2 - 1)   # 3 training batches (x, y), 2 eval batches (x)


def test_prefetch_env_is_checked(monkeypatch):
    from device_agent.backends.opencl.engine import prefetch_default
    from device_agent.backends.opencl.runtime import shared_runtime

    rt = shared_runtime()
    monkeypatch.setenv("THOMAS_CL_PREFETCH", "yes")
    with pytest.raises(BackendError, match="THOMAS_CL_PREFETCH"):
        prefetch_default(rt)
    monkeypatch.delenv("THOMAS_CL_PREFETCH")
    assert prefetch_default(rt) == (rt.kind == "gpu")


@pytest.mark.parametrize("layers", ["all", "last"])
def test_a_training_run_prefetches_end_to_end(tmp_path, monkeypatch, layers):
    """The whole loop (train.run) on the OpenCL backend with prefetch on and off, augmentation on, a
    partial last batch and evals: identical metrics and checkpoints (augmentation draws per batch, so
    making a batch early changes nothing). "last" trains on cached features (another input path)."""
    from device_agent.protocol import TrainJob
    from device_agent.training.train import run
    from train_helpers import make_root

    paths = make_root(tmp_path, size=8, model=tiny_cnn(10, 8), val_fraction=0.25, limit=150)
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("THOMAS_CL_PREFETCH", flag)
        job = TrainJob.from_dict(dict(paths, out=str(tmp_path / flag), backend="opencl", layers=layers, epochs=2,
                                      batch=16, augment=layers == "all", dtype="float32"))
        with count_transfers() as c:
            run(job, lambda e: None)
        assert (c["device_copies"] > 0) == (flag == "1"), c      # staged batches were used, only with prefetch
        metrics = [json.loads(ln) for ln in (tmp_path / flag / "metrics.jsonl").read_text().splitlines()]
        (_, last), = checkpoint.checkpoints(tmp_path / flag / "ckpt")[-1:]
        outs.append(([{k: v for k, v in m.items() if k != "ms"} for m in metrics], checkpoint.load(last)))
    (m0, c0), (m1, c1) = outs
    assert m0 == m1 and len(m0) == 2
    assert c0.params.keys() == c1.params.keys()
    for k, v in c0.params.items():
        assert np.array_equal(c1.params[k], v), k


def test_lookahead_makes_each_item_once_and_in_order():
    from device_agent.engine import lookahead

    made = []

    def items():
        for v in (0, 1, 2):             # 0: a falsy item is still an item
            made.append(v)
            yield v
    got = []
    for v, ahead in lookahead(items()):
        if v != 1:                      # the engine asked for the next item (or not)
            got.append(("ahead", ahead()))
            got.append(("ahead", ahead()))
        got.append(v)
    assert got == [("ahead", 1), ("ahead", 1), 0, 1, ("ahead", None), ("ahead", None), 2]
    assert made == [0, 1, 2]
    assert list(lookahead([])) == []


def test_inference_engines_prefetch_over_a_dataset(monkeypatch):
    """OpenCLInfer.forward with ahead (infer_package over a partial last slice), prefetch on and off:
    the same outputs bit for bit; with it on the slices of the full batch size come from staging."""
    from device_agent.infer import infer_package

    g = tiny_cnn(10)
    x = np.random.default_rng(2).standard_normal((11, 3, 8, 8)).astype(np.float32)
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("THOMAS_CL_PREFETCH", flag)
        with count_transfers() as c:
            outs.append(infer_package(g, x, batch_size=4, backend="opencl"))
        assert c["to_device"] >= x.nbytes
        # slices 4, 4, 3: the second comes from staging (a Plan of size 4 exists); the third's Plan does not yet
        assert c["device_copies"] == (1 if flag == "1" else 0), c
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], infer_package(g, x, batch_size=4, backend="numpy"), rtol=1e-4, atol=1e-5)
