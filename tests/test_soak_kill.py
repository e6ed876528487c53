"""Randomized kill -9 soak through the real CLI on the local device: 20 SIGKILLs of the agent or of
the host (`thomas finetune` itself), at random moments, many of them during checkpoint writes (a
checkpoint every step), each followed by `thomas finetune --resume RUN`; the run ends bit-identical
to an uninterrupted one (final weights and metrics)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fuzz_cases as fc

KILLS = 20
JOB = ["--layers", "all", "--epochs", "6", "--batch", "4", "--backend", "cpu", "--optimizer", "adam",
       "--lr", "0.003", "--seed", "5", "--set", "checkpoint_every=1", "--set", "keep_checkpoints=2",
       "--set", "augment=true"]


def _cli(env, *args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "thomas_cli", *args], env=env, stdout=stdout,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:      # a zombie of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _final(root: Path, run: str) -> dict:
    with np.load(root / "runs" / run / "final" / "weights.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _metrics(root: Path, run: str) -> list:
    lines = (root / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in ("ms", "t", "seconds")} for ln in lines]


def _start(env, dev, args) -> tuple[subprocess.Popen, dict]:
    """Start `thomas finetune ... --json`; return once the agent's first step is seen (its hello)."""
    p = _cli(env, *dev, "finetune", *args, "--json")
    hello = None
    for line in p.stdout:
        if not line.startswith("{"):
            continue
        ev = json.loads(line)
        if ev.get("ev") == "hello":
            hello = ev
        if ev.get("ev") in ("step", "done", "error"):
            return p, dict(hello or {}, first=ev)
    p.wait()
    raise AssertionError(f"thomas finetune ended before its first step: {p.stderr.read()}")


@pytest.mark.slow
def test_kill9_soak_is_bit_identical(tmp_path):
    root, home = tmp_path / "device", tmp_path / "home"
    env = dict(os.environ, THOMAS_HOME=str(home), THOMAS_THREADS="1")
    dev = ["--device", "local", "--device-root", str(root)]
    onnx_path = tmp_path / "tiny.onnx"
    onnx_path.write_bytes(fc.tiny_onnx().SerializeToString())
    rng = np.random.default_rng(7)
    npz = fc.write_npz(tmp_path / "d.npz", {"x": rng.integers(0, 256, (150, 8, 8, 3), dtype=np.uint8),
                                            "y": np.arange(150) % 3})
    for args in (["import", onnx_path, "-o", tmp_path / "pkg"], [*dev, "push-model", tmp_path / "pkg", "--name", "tiny"],
                 [*dev, "push-data", npz, "--size", "8", "--name", "d"]):
        p = _cli(env, *map(str, args))
        _, e = p.communicate(timeout=120)
        assert p.returncode == 0, e
    ref = _cli(env, *dev, "finetune", "tiny", "--data", "d", *JOB, "--json")
    out, e = ref.communicate(timeout=300)
    assert ref.returncode == 0, e
    ref_run = json.loads(next(ln for ln in out.splitlines() if '"ev": "done"' in ln or '"ev":"done"' in ln)).get("run") \
        or sorted((root / "runs").iterdir())[-1].name

    kill_rng = np.random.default_rng()           # random each time; the log below says what happened
    log, run, kills = [], None, 0
    args = ["tiny", "--data", "d", *JOB]
    while kills < KILLS:
        p, hello = _start(env, dev, args if run is None else ["--resume", run])
        if run is None:
            run = sorted((home / "runs").iterdir(), key=lambda q: q.stat().st_mtime)[-1].name
        if hello["first"].get("ev") == "done":
            break
        stop_at = int(hello["first"].get("step", 0)) + int(kill_rng.integers(1, 6))
        for line in p.stdout:                    # run a few more steps, then kill at a random instant
            if line.startswith("{") and json.loads(line).get("step", -1) >= stop_at:
                break
        time.sleep(float(kill_rng.uniform(0.0, 0.02)))
        target = "host" if kill_rng.random() < 0.4 else "agent"
        agent = int(hello.get("pid") or 0)
        tmp_before = list((root / "runs" / run / "ckpt").glob(".ckpt-*.tmp")) if (root / "runs" / run / "ckpt").exists() else []
        if p.poll() is not None:
            break                                # finished before the kill
        os.kill(p.pid if target == "host" else agent, signal.SIGKILL)
        mid_write = bool(list((root / "runs" / run / "ckpt").glob(".ckpt-*.tmp"))) or bool(tmp_before)
        kills += 1
        p.wait(timeout=60)
        deadline = time.monotonic() + 20
        while agent and _alive(agent) and time.monotonic() < deadline:   # a host kill: the agent stops
            time.sleep(0.05)                                               # at its next write
        if agent and _alive(agent):
            os.kill(agent, signal.SIGKILL)
        log.append((target, mid_write))
    for _ in range(5):                           # finish the run (a lock still held: retry)
        p = _cli(env, *dev, "finetune", "--resume", run, "--json")
        _, e = p.communicate(timeout=300)
        if p.returncode == 0:
            break
        assert "already" in e or "lock" in e, e
        time.sleep(1)
    assert p.returncode == 0, e
    rec = Path(__file__).resolve().parents[1] / ".pytest_cache" / "fuzz"
    rec.mkdir(parents=True, exist_ok=True)
    (rec / "soak.json").write_text(json.dumps({"kills": kills, "host": sum(t == "host" for t, _ in log),
                                               "agent": sum(t == "agent" for t, _ in log),
                                               "mid_checkpoint_write": sum(m for _, m in log), "log": log}))
    a, b = _final(root, ref_run), _final(root, run)
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert kills == KILLS, f"only {kills} kills landed before the run finished: {log}"
    assert not diff, f"after {kills} kills {log}: {diff[:3]} differ"
    assert _metrics(root, run) == _metrics(root, ref_run), log
