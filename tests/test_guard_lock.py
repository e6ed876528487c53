"""The run lock (issue 14, item 4): a run being trained is locked for the job's life (flock on
<run>/.lock); a second start or resume of it is refused with one line naming the holder's pid and
touches nothing; once the holder is dead (kill -9) the lock is taken over and the resume completes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from device_agent.errors import RunLockedError
from device_agent.training.runlock import LOCK_NAME, RunLock
from guardkit import agent, job, last_error, small_root, write_job

RUN = dict(layers="all", epochs=6, checkpoint_every=2, seed=1)


def test_lock_in_process(tmp_path):
    a = RunLock.acquire(tmp_path / "run")
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock.acquire(tmp_path / "run")
    a.release()
    RunLock.acquire(tmp_path / "run").release()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_second_start_or_resume_is_refused_then_a_dead_holder_is_taken_over(tmp_path):
    root = small_root(tmp_path)
    doc = job(**RUN)
    holder = subprocess.Popen([sys.executable, "-m", "device_agent", "run", write_job(root, doc)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, THOMAS_THREADS="1"))
    try:
        seen = []
        for line in holder.stdout:
            seen.append(json.loads(line))
            if seen[-1]["ev"] == "checkpoint":
                holder.send_signal(signal.SIGSTOP)       # alive, holding the lock, doing nothing
                break
        pid = seen[0]["pid"]
        events = (root / "runs" / "r" / "events.jsonl").read_bytes()
        for name, d in (("resume", dict(doc, resume=True)), ("start", doc), ("start-other", dict(doc, lr=0.5))):
            rc, evs, err = agent(root, "run", write_job(root, d, f"{name}.json"))
            e = last_error(evs)
            assert rc == 1 and e["code"] == "locked" and f"pid {pid}" in e["message"], (name, e)
            assert err.strip().splitlines() == [f"error: {e['message']}"]
        assert (root / "runs" / "r" / "events.jsonl").read_bytes() == events    # the refused ones wrote nothing
        assert json.loads((root / "runs" / "r" / "job.json").read_text())["lr"] == doc.get("lr", 0.01)
    finally:
        holder.kill()                                    # kill -9: its flock goes with it
        holder.wait(timeout=30)
        holder.stdout.close()
    rc, evs, err = agent(root, "run", write_job(root, dict(doc, resume=True), "resume.json"))
    assert rc == 0 and evs[-1]["ev"] == "done", err[-800:]
    assert evs[1]["ev"] == "plan" and evs[1]["start_step"] > 0
