"""Exact resume: `python -m device_agent.training.train` killed with SIGKILL at a random step, then resumed,
ends with final weights bit-identical to an uninterrupted run; a checkpoint cut off mid-write is
skipped (the previous one is used) and the result is still bit-identical. On numpy, and on OpenCL
when a device is present (bit-identical holds per backend)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from device_agent.training import checkpoint
from train_helpers import REPO, events, final_weights, make_root, run_entry

RECIPES = {
    # everything random at once: augmentation, dropout, BN batch statistics, Adam, warm-up + cosine
    "all-augment-adam": dict(layers="all", bn="train", augment=True, optimizer="adam", lr=0.003,
                             schedule="cosine", warmup_epochs=1, clip_grad_norm=2.0, label_smoothing=0.1),
    # the feature cache path: SGD Nesterov, weight decay, step schedule
    "last2-cache-sgd": dict(layers=2, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                            weight_decay=1e-4, schedule="step", step_size=1, gamma=0.5),
}
COMMON = dict(epochs=3, batch=32, checkpoint_every=5, keep_checkpoints=3, seed=11)


def _kill_at(job: dict, path, step: int) -> list[dict]:
    path.write_text(json.dumps(job))
    env = dict(os.environ, THOMAS_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "device_agent.training.train", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    seen = []
    for line in p.stdout:
        seen.append(json.loads(line))
        if seen[-1]["ev"] == "step" and seen[-1]["step"] == step:
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    p.stdout.close()
    assert p.returncode == -signal.SIGKILL, f"the run ended before step {step}"
    return seen


def _opencl():
    from device_agent.engine import opencl_available
    return opencl_available()


CASES = [("numpy", False), ("numpy", True),
         pytest.param("opencl", False, marks=pytest.mark.skipif(not _opencl(), reason="no OpenCL device"))]


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("backend,truncate", CASES, ids=["numpy", "numpy-newest-ckpt-truncated", "opencl"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, recipe, backend, truncate):
    paths = make_root(tmp_path)
    job = dict(paths, **COMMON, **RECIPES[recipe], backend=backend)
    ref = run_entry(dict(job, out=str(tmp_path / "runs" / "ref")), tmp_path / "ref.json")
    assert ref.returncode == 0, ref.stderr
    total = events(ref.stdout)[-1]["steps"]
    kill_step = int(np.random.default_rng().integers(7, total - 1))   # random, reported on failure
    seen = _kill_at(job, tmp_path / "job.json", kill_step)
    ckpts = checkpoint.checkpoints(tmp_path / "runs" / "r" / "ckpt")
    assert ckpts, f"no checkpoint before the kill at step {kill_step}"
    if truncate:                       # as if the newest checkpoint's data never reached the disk
        p = ckpts[-1][1]
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    resumed = run_entry(dict(job, resume=True), tmp_path / "job2.json")
    assert resumed.returncode == 0, resumed.stderr
    evs = events(resumed.stdout)
    expect_from = ckpts[-2][0] if truncate and len(ckpts) > 1 else ckpts[-1][0] if not truncate else 0
    assert evs[0]["start_step"] == expect_from, (kill_step, ckpts, evs[0])
    assert evs[-1]["ev"] == "done"
    a, b = final_weights(tmp_path / "runs" / "ref"), final_weights(tmp_path / "runs" / "r")
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"killed at step {kill_step}, resumed from {expect_from}: {diff[:3]} differ"
    # the metrics of the resumed run equal the uninterrupted run's (times aside)
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k != "ms"}  # noqa: E731
                       for ln in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "runs" / "r") == strip(tmp_path / "runs" / "ref")
    assert len([e for e in seen if e["ev"] == "step"]) == kill_step
