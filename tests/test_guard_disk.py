"""OS errors on the device (issue 14, item 3): a disk that fills up during training, a read-only
folder, an infer output that does not fit — each is one `error` event with code `disk_full` / `io`
(never `internal`) naming the path and the fix; the checkpoints already written stay intact and a
resume after freeing space ends bit-identical to an uninterrupted run. Real filesystems: tmpfs mounts
of a few MiB (skipped with the reason where mounting is not permitted)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.errors import DiskError
from device_agent.fsutil import atomic_write, disk_error
from guardkit import agent, job, last_error, small_root, tmpfs, write_job
from train_helpers import final_weights

RUN = dict(layers="all", epochs=12, checkpoint_every=1, keep_checkpoints=3, seed=5)


@pytest.fixture
def root(tmp_path):
    return small_root(tmp_path)


def fill(path, name: str = "filler") -> None:
    """Write into `path` until its filesystem has no byte left."""
    with open(path / name, "wb", buffering=0) as f:
        for block in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


def test_disk_error_names_path_and_fix():
    cases = {errno.ENOSPC: ("disk_full", "free space on the device"), errno.EDQUOT: ("disk_full", "free space"),
             errno.EROFS: ("io", "the folder is read-only"), errno.EACCES: ("io", "not writable"),
             errno.EIO: ("io", "storage failed"), errno.ENAMETOOLONG: ("io", "check the device's storage")}
    for num, (code, fix) in cases.items():
        e = disk_error(OSError(num, os.strerror(num), "runs/r/ckpt/.ckpt-1.tmp"))
        assert isinstance(e, DiskError) and e.code == code and fix in str(e), (num, str(e))
        assert "runs/r/ckpt/.ckpt-1.tmp" in str(e) and "\n" not in str(e)
    assert "at runs/r:" in str(disk_error(OSError(errno.EIO, "I/O error"), fallback="runs/r"))


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "mnt", "64k") as m:
        dest = m.path / "w.bin"
        atomic_write(dest, lambda f: f.write(b"old"))
        with pytest.raises(OSError) as e:
            atomic_write(dest, lambda f: f.write(b"x" * (1 << 20)))
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(dest)
        assert dest.read_bytes() == b"old" and sorted(p.name for p in m.path.iterdir()) == ["w.bin"]


def test_disk_full_mid_training_then_resume_is_bit_identical(root):
    """The run's folder is a 4 MiB filesystem; once checkpoints exist it is filled to the last byte."""
    ref = job(out="runs/ref", **RUN)
    rc, evs, err = agent(root, "run", write_job(root, ref, "ref.json"))
    assert rc == 0, err[-800:]
    with tmpfs(root / "small", "4m") as m:
        doc = job(out="small/r", **RUN)
        rel = write_job(root, doc)
        p = subprocess.Popen([sys.executable, "-m", "device_agent", "run", rel], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, THOMAS_THREADS="1"))
        evs = []
        for line in p.stdout:
            evs.append(json.loads(line))
            if evs[-1]["ev"] == "checkpoint" and evs[-1]["step"] >= 2:
                p.send_signal(signal.SIGSTOP)           # holds still while its disk fills up
                break
        fill(m.path)
        p.send_signal(signal.SIGCONT)
        evs += [json.loads(ln) for ln in p.stdout]
        p.wait(timeout=60)
        stderr = p.stderr.read()
        p.stdout.close(), p.stderr.close()
        err = last_error(evs)
        assert p.returncode == 1 and err["code"] == "disk_full", (err, stderr[-500:])
        assert "no space left on the device at small/r" in err["message"] and "free space on the device" in err["message"]
        assert "Traceback" not in stderr and "internal" not in stderr
        ckpt = root / "small" / "r" / "ckpt"
        assert not list(ckpt.glob(".ckpt-*")), "a temp checkpoint was left behind"
        written = checkpoint.checkpoints(ckpt)
        assert written and all(checkpoint.load(q).step == s for s, q in written)   # intact, they verify
        (m.path / "filler").unlink()
        rc, evs, err = agent(root, "run", write_job(root, dict(doc, resume=True), "resume.json"))
        assert rc == 0 and evs[-1]["ev"] == "done", err[-800:]
        assert evs[1]["ev"] == "plan" and evs[1]["start_step"] == written[-1][0]
        a, b = final_weights(root / "runs" / "ref"), final_weights(root / "small" / "r")
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_read_only_folders_are_io_errors(root):
    with tmpfs(root / "ro", "1m") as m:
        (m.path / "cache").mkdir()
        m.remount("ro")
        rc, evs, _ = agent(root, "run", write_job(root, job(out="ro/r")))
        err = last_error(evs)
        assert rc == 1 and err["code"] == "io" and "ro/r" in err["message"] and "read-only" in err["message"], err
        rc, evs, _ = agent(root, "run", write_job(root, job(out="runs/c", layers="last", cache_dir="ro/cache"), "c.json"))
        err = last_error(evs)
        assert rc == 1 and err["code"] == "io" and "ro/cache" in err["message"] and "read-only" in err["message"], err
        assert not list(m.path.rglob("*.tmp"))


def test_infer_output_on_a_full_disk(root):
    np.save(root / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
    with tmpfs(root / "small", "16k") as m:
        fill(m.path)
        rc, evs, _ = agent(root, "infer", "models/m", "x.npy", "small/y.npy")
        err = last_error(evs)
        assert rc == 1 and err["code"] == "disk_full" and "small/y.npy" in err["message"], err
        assert [q.name for q in m.path.iterdir()] == ["filler"]


def test_feature_cache_on_a_full_disk_is_disk_full_not_sigbus(tmp_path):
    """The cache is written through a memory map: without its blocks reserved first, a full disk kills the
    agent with SIGBUS (-7) on the first store into a sparse page. Three free pages: the header and the
    last page fit (numpy writes both), the ~30 KiB of features between them do not."""
    root = small_root(tmp_path, images=600)
    with tmpfs(root / "small", "64k") as m:
        (m.path / "pad").write_bytes(b"\0" * 3 * 4096)
        fill(m.path)
        (m.path / "pad").unlink()
        rc, evs, err = agent(root, "run", write_job(root, job(layers="last", cache_dir="small/cache")))
        assert rc == 1, (rc, err[-500:])                  # -7 would be the SIGBUS
        e = last_error(evs)
        assert e["code"] == "disk_full" and "small/cache" in e["message"], e
        assert not [q for q in (m.path / "cache").rglob("*") if q.is_file()]   # the temp entry is gone
