"""FedProx's proximal term (job field prox_mu, Li et al. 2020): each step adds mu·(w − w0) to the
gradient of every trainable parameter before clipping and weight decay, w0 = the trainable weights of
the job's package as the run started. The reported loss is the data loss alone (docs/TRAINING.md).

  * numpy float64 against a PyTorch oracle whose loss is CE + (mu/2)·||w − w0||² (autograd gives the
    gradient), SGD (Nesterov, weight decay) and Adam, clipping on and active: losses and weights to
    1e-10, for `all` and for `last` through the feature cache; the oracle without the term is far off.
  * OpenCL float32 against numpy float32 (the usual step tolerance), both optimizers, both stages.
  * mu = 0 is bit-identical to a job without the field, with no anchor and no extra launch.
  * kill -9 and resume with mu > 0 ends bit-identical (w0 comes from the package, not the checkpoint).
  * bad values are one JobError line; through the entry point one `bad_job` event, exit 1.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from clcheck import download, needs_cl, runtime, upload
from device_agent.errors import JobError
from device_agent.protocol import TrainJob
from device_agent.training import checkpoint
from device_agent.training.train import run
from train_helpers import REPO, events, final_weights, make_root, run_entry, tiny_cnn

MU = 0.5
RECIPES = {   # clip_grad_norm 0.5 clips every step here: the order "prox, then clip" is tested
    "sgd": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_grad_norm=0.5),
    "adam": dict(optimizer="adam", lr=0.01, weight_decay=1e-4, clip_grad_norm=0.5),
}
BASE = {"model": "m", "data": "d", "out": "o"}


def _ours(job: dict):
    evs = []
    done = run(TrainJob.from_dict(job), lambda e: evs.append(json.loads(e.to_json())))
    return [e["loss"] for e in evs if e["ev"] == "step"], done, evs


# ------------------------------------------------------------------------------ the PyTorch oracle
def _torch_prox(graph, data_dir, job: TrainJob, mu: float, steps: int):
    """Train `graph` in torch float64 for `steps` steps as `job` says, the proximal term in the loss.
    Returns (the CE loss of each step, {trainable name: weights after the last step})."""
    import torch
    import torch.nn.functional as F
    from torch_twin import TorchTwin

    from device_agent.training.data import open_dataset
    ds = open_dataset(data_dir)
    groups = graph.param_groups()
    sel = groups if job.layers == "all" else groups[-1:]
    trainable = {k for k, p in graph.params.items() if p.trainable and p.group in sel}
    tw = TorchTwin(graph, dtype=torch.float64, trainable=trainable)
    params = [tw.params[k] for k in graph.params if k in trainable]
    anchor = [p.detach().clone() for p in params]
    if job.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=job.lr, momentum=job.momentum, nesterov=job.nesterov,
                              weight_decay=job.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=job.lr, betas=job.betas, eps=job.eps, weight_decay=job.weight_decay)
    spec = graph.inputs[0].preprocess
    images = np.concatenate([np.asarray(m) for m in ds.train.images])
    mean = np.array(spec["mean"])[:, None, None]
    std = np.array(spec["std"])[:, None, None]
    n, losses, step = len(images), [], 0
    for epoch in range(job.epochs):
        order = np.random.default_rng([job.seed, 1, epoch]).permutation(n)
        for i in range(-(-n // job.batch)):
            rows = order[i * job.batch:(i + 1) * job.batch]
            x = (images[rows].astype(np.float64).transpose(0, 3, 1, 2) * spec["scale"] - mean) / std
            out = tw.forward({"input": x}, training=True, bn_batch_stats=False)["logits"]
            ce = F.cross_entropy(out, torch.from_numpy(ds.train.labels[rows]))
            loss = ce + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, job.clip_grad_norm)
            opt.step()
            losses.append(float(ce.detach()))
            step += 1
            if step == steps:
                return losses, {k: tw.params[k].detach().numpy().copy() for k in trainable}
    raise AssertionError(f"the job has fewer than {steps} steps")


@pytest.mark.torch
@pytest.mark.parametrize("layers", ["all", "last"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_numpy_float64_matches_pytorch_with_the_proximal_term(tmp_path, recipe, layers, one_torch_thread):
    pytest.importorskip("torch")
    g = tiny_cnn(10, 8, dropout=0)
    paths = make_root(tmp_path, model=g, limit=200)          # 160 train: 10 steps of 16 per epoch
    doc = dict(paths, **RECIPES[recipe], layers=layers, epochs=2, batch=16, dtype="float64", seed=3,
               backend="numpy", prox_mu=MU)
    ours, _, evs = _ours(doc)
    assert len(ours) == 20
    if layers == "last":
        assert [e["hit"] for e in evs if e["ev"] == "cache"][:1] == [False]   # the feature-cache path
    job = TrainJob.from_dict(doc)
    ref, w = _torch_prox(g, paths["data"], job, MU, 20)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    ck = checkpoint.load(tmp_path / "runs" / "r" / "ckpt" / "ckpt-00000020.npz")
    for k, t in w.items():
        assert np.abs(ck.params[k] - t).max() <= 1e-10 * max(np.abs(t).max(), 1e-3), k
    # the term matters here: torch without it ends far from our weights
    _, w0 = _torch_prox(g, paths["data"], job, 0.0, 20)
    assert max(np.abs(ck.params[k] - w0[k]).max() for k in w0) > 1e-2


# ------------------------------------------------------------------------------ OpenCL against numpy
@needs_cl
@pytest.mark.parametrize("layers", ["all", "last"])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_opencl_matches_numpy_with_the_proximal_term(tmp_path, recipe, layers):
    paths = make_root(tmp_path, limit=200)
    out = {}
    for backend, mu in (("numpy", MU), ("opencl", MU), ("numpy", 0.0)):
        p = dict(paths, **RECIPES[recipe], layers=layers, epochs=2, batch=16, backend=backend, prox_mu=mu,
                 out=str(tmp_path / "runs" / f"{backend}{mu}"))
        losses, done, _ = _ours(p)
        out[backend, mu] = (losses, final_weights(done.out), done.memory)
    (la, wa, ma), (lb, wb, mb), (_, wz, _) = out["numpy", MU], out["opencl", MU], out["numpy", 0.0]
    np.testing.assert_allclose(lb, la, rtol=2e-4)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert max(np.abs(wa[k] - wz[k]).max() for k in wa) > 1e-3   # mu moved the weights well past that
    assert mb["optimizer"] > 0 and ma["optimizer"] > 0


@needs_cl
def test_prox_grad_kernel_adds_mu_times_the_distance_in_place():
    from device_agent.backends.opencl import optim
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    rt = runtime()
    rng = np.random.default_rng(4)
    g, p, p0 = (rng.standard_normal(1001).astype(np.float32) for _ in range(3))
    gs, ps, p0s = upload(rt, "g", g), upload(rt, "p", p), upload(rt, "p0", p0)
    b = LaunchBuilder(rt)
    optim.prox_grad(b, gs, ps, p0s, 0.3)
    replay(rt.queue, b.launches)
    np.testing.assert_allclose(download(rt, gs), g + np.float32(0.3) * (p - p0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(download(rt, ps), p)          # p and the anchor are read only
    np.testing.assert_array_equal(download(rt, p0s), p0)


# ------------------------------------------------------------------------------ mu = 0 changes nothing
@pytest.mark.parametrize("backend", ["numpy", pytest.param("opencl", marks=needs_cl)])
def test_mu_zero_is_bit_identical_to_a_job_without_the_field(tmp_path, backend):
    paths = make_root(tmp_path, limit=200)
    runs = []
    for name, extra in (("plain", {}), ("zero", {"prox_mu": 0.0}), ("prox", {"prox_mu": MU})):
        p = dict(paths, **RECIPES["adam"], layers="all", epochs=1, batch=16, backend=backend,
                 out=str(tmp_path / "runs" / name), **extra)
        losses, done, _ = _ours(p)
        runs.append((losses, final_weights(done.out), done.memory))
    (l0, w0, m0), (l1, w1, m1), (_, _, m2) = runs
    assert l1 == l0 and all(np.array_equal(w1[k], w0[k]) for k in w0)
    assert m1["optimizer"] == m0["optimizer"]
    n_train = sum(v.size for v in w0.values()) * 4          # float32: the anchor is this, plus where each
    pad = len(w0) * 4096                                     # tensor starts at the device's base-address
    assert 0 < m2["optimizer"] - m0["optimizer"] <= n_train + pad   # alignment (NVIDIA's H100: +4984 B here)


@needs_cl
def test_opencl_store_keeps_no_anchor_and_no_launch_at_mu_zero():
    from device_agent.backends.opencl.engine import OpenCLEngine
    from device_agent.training.optim import make_optimizer
    g = tiny_cnn()
    tr = {k for k in g.params if g.params[k].trainable}
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    engines = {}
    for mu in (0.0, MU):
        opt = make_optimizer("sgd", {k: g.params[k].shape for k in g.params if k in tr}, momentum=0.9)
        e = engines[mu] = OpenCLEngine(g, tr, opt, bn_batch_stats=False, prox_mu=mu, runtime=runtime())
        e.train_step(x, np.arange(4) % 10, 0.1)
    off, on = engines[0.0], engines[MU]
    names = lambda e: [ln.kernel.function_name for ln in e.current.opt_launches]   # noqa: E731
    assert off.store.anchor is None and on.store.anchor is not None
    assert "prox_grad" not in names(off) and names(on)[0] == "prox_grad"
    assert on.memory()["optimizer"] - off.memory()["optimizer"] == on.store.n_trainable * 4
    # the anchor still holds the weights the engine was built from, after a step moved them
    a, moved = download(on.rt, on.store.anchor), on.params()
    for k in tr:
        o, n = on.store.param_offset[k], g.weights[k].size
        np.testing.assert_array_equal(a[o:o + n], g.weights[k].ravel().astype(np.float32), err_msg=k)
    assert any(not np.array_equal(moved[k], g.weights[k]) for k in tr)


# ------------------------------------------------------------------------------ kill -9 and resume
def _kill_at(job: dict, path, step: int) -> None:
    path.write_text(json.dumps(job))
    env = dict(os.environ, THOMAS_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "device_agent.training.train", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    for line in p.stdout:
        ev = json.loads(line)
        if ev["ev"] == "step" and ev["step"] == step:
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    p.stdout.close()
    assert p.returncode == -signal.SIGKILL, f"the run ended before step {step}"


@pytest.mark.parametrize("backend", ["numpy", pytest.param("opencl", marks=needs_cl)])
def test_sigkill_then_resume_with_prox_is_bit_identical(tmp_path, backend):
    paths = make_root(tmp_path)
    job = dict(paths, **RECIPES["adam"], layers="all", epochs=3, batch=32, checkpoint_every=5, seed=11,
               backend=backend, prox_mu=MU)
    ref = run_entry(dict(job, out=str(tmp_path / "runs" / "ref")), tmp_path / "ref.json")
    assert ref.returncode == 0, ref.stderr
    _kill_at(job, tmp_path / "job.json", 13)                    # its last checkpoint: step 10
    resumed = run_entry(dict(job, resume=True), tmp_path / "job2.json")
    assert resumed.returncode == 0, resumed.stderr
    assert events(resumed.stdout)[0]["start_step"] == 10
    a, b = final_weights(tmp_path / "runs" / "ref"), final_weights(tmp_path / "runs" / "r")
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"{diff[:3]} differ after the resume"


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "0.1", True, None, [0.1]])
def test_bad_prox_mu_is_one_line(bad):
    with pytest.raises(JobError) as e:
        TrainJob.from_dict(dict(BASE, prox_mu=bad))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("job field 'prox_mu' must be"), msg
    assert TrainJob.from_dict(dict(BASE, prox_mu=1)).prox_mu == 1.0          # an int is a number
    assert TrainJob.from_dict(BASE).prox_mu == 0.0


def test_bad_prox_mu_through_the_entry_point(tmp_path):
    paths = make_root(tmp_path)
    p = run_entry(dict(paths, prox_mu=-1), tmp_path / "job.json")
    assert p.returncode == 1
    evs = events(p.stdout)
    assert [e["ev"] for e in evs] == ["error"] and evs[0]["code"] == "bad_job"
    assert evs[0]["message"] == "job field 'prox_mu' must be >= 0, got -1"
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "r").exists()

