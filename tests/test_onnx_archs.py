"""The mobile zoo in plain torch.nn (tests/onnx_archs.py: ResNet-18, SqueezeNet 1.1, ShuffleNetV2,
EfficientNet-B0-style, MnasNet-style, GoogLeNet-style; tiny, 32x32), each exported by torch.onnx
(dynamo=False) at opsets 11, 13 and 17, imported, and checked three ways:

  * parity with onnxruntime on the logits, batch 1 and 4: max rel error <= 1e-4;
  * `thomas --device local infer` on the imported package equals the numpy engine (import's result);
  * 3 SGD steps (momentum 0.9) of `--layers all` in float64 by the agent's training loop
    (device_agent.training.train.run, numpy engine, BN frozen) give the same losses as PyTorch training the
    original nn.Module in float64 (eval mode) on the same batches: rel error <= 1e-6.
Opset 13 runs by default; 11 and 17 are marked slow. Measured errors: docs/ONNX.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from device_agent.training.data import open_dataset
from device_agent.infer import infer_package
from device_agent.protocol import TrainJob
from device_agent.training.train import run
from onnx_helpers import packages_round_trip  # noqa: F401
from thomas_cli.onnx import import_onnx, onnx_parity
from train_helpers import make_root

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from onnx_archs import ARCHS, SIZE, build, export  # noqa: E402

pytestmark = pytest.mark.torch
PRE = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CASES = [pytest.param(a, o, marks=[pytest.mark.slow] if o != 13 else []) for a in ARCHS for o in (11, 13, 17)]


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test of this module runs torch on one thread (conftest.one_torch_thread)."""


def torch_sgd_losses(net, data_dir: str, job: TrainJob) -> list[float]:
    """PyTorch's float64 training of the original module on our batches (same order, same pixels)."""
    import copy

    ds = open_dataset(data_dir)
    images = np.concatenate([np.asarray(m) for m in ds.train.images])
    n = len(ds.train)
    net = copy.deepcopy(net).double().eval()                  # eval: BN frozen, as the job's bn=auto
    opt = torch.optim.SGD(net.parameters(), lr=job.lr, momentum=job.momentum)
    order = np.random.default_rng([job.seed, 1, 0]).permutation(n)
    losses = []
    for i in range(-(-n // job.batch)):
        rows = order[i * job.batch:(i + 1) * job.batch]
        x = images[rows].astype(np.float64).transpose(0, 3, 1, 2) * PRE["scale"]
        x = (x - np.array(PRE["mean"])[:, None, None]) / np.array(PRE["std"])[:, None, None]
        loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(ds.train.labels[rows]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def local_infer(pkg, x, tmp_path) -> np.ndarray:
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, THOMAS_DEVICE="local")
    p = subprocess.run([sys.executable, "-m", "thomas_cli", "infer", str(pkg), "--input", str(tmp_path / "x.npy"),
                        "--output", str(tmp_path / "logits.npy"), "--json"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert json.loads(p.stdout)["throughput"]["samples"] == x.shape[0]
    return np.load(tmp_path / "logits.npy")


@pytest.mark.parametrize("arch,opset", CASES)
def test_architecture_imports_infers_and_trains_like_pytorch(arch, opset, tmp_path):
    net = build(arch, num_classes=10, seed=0)
    path = export(net, tmp_path / f"{arch}.onnx", opset)
    g = import_onnx(path)
    assert g.inputs[0].shape == (None, 3, SIZE, SIZE) and g.meta["batch"] == "free"
    for batch in (1, 4):
        r = onnx_parity(path, g, batch=batch)
        assert r["max_rel"] <= 1e-4 and r["max_abs"] > 0, r
    n_torch = sum(p.numel() for p in net.parameters())
    assert g.num_params() == n_torch                          # every torch parameter is a trainable param
    g.inputs[0].preprocess = dict(PRE)
    paths = make_root(tmp_path, size=SIZE, model=g, limit=15)   # digits: 12 train = 3 steps of 4
    x = np.random.default_rng(1).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    logits = local_infer(paths["model"], x, tmp_path)
    assert np.allclose(logits, infer_package(g, x), rtol=1e-4, atol=1e-5 * np.abs(logits).max())

    job = TrainJob.from_dict(dict(paths, layers="all", epochs=1, batch=4, lr=0.02, momentum=0.9,
                                  dtype="float64", seed=0, backend="numpy", feature_cache=False))
    evs = []
    run(job, lambda e: evs.append(json.loads(e.to_json())))
    ours = [e["loss"] for e in evs if e["ev"] == "step"]
    ref = torch_sgd_losses(net, paths["data"], job)
    assert len(ours) == len(ref) == 3
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert abs(ref[2] - ref[0]) > 1e-6                         # the weights really moved
