"""checkpoint.py: atomic writes, keep-last-K, verification, fallback past a damaged checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.errors import CheckpointError


def _save(d, step, keep=3, value=None):
    v = float(step if value is None else value)
    return checkpoint.save(d, step, params={"w": np.full((3, 4), v, np.float32), "bn.running_var": np.ones(4)},
                           optimizer={"step": np.asarray(step, np.int64), "w.exp_avg": np.zeros((3, 4), np.float32)},
                           meta={"epoch": step // 10, "batch": step % 10, "sums": [0.5, 1, 2]}, keep=keep)


def test_round_trip_is_exact(tmp_path):
    _save(tmp_path, 7)
    ck = checkpoint.load_latest(tmp_path)
    assert ck.step == 7 and ck.meta["epoch"] == 0 and ck.meta["batch"] == 7 and ck.meta["sums"] == [0.5, 1, 2]
    assert ck.params["w"].dtype == np.float32 and np.all(ck.params["w"] == 7)
    assert ck.params["bn.running_var"].dtype == np.float64
    assert int(ck.optimizer["step"]) == 7 and set(ck.optimizer) == {"step", "w.exp_avg"}


def test_keeps_the_last_k(tmp_path):
    for s in (10, 20, 30, 40, 50):
        _save(tmp_path, s, keep=2)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path)] == [40, 50]
    assert checkpoint.load_latest(tmp_path).step == 50


def test_a_checkpoint_cut_off_mid_write_is_never_loaded(tmp_path):
    _save(tmp_path, 10)
    p = _save(tmp_path, 20)
    data = p.read_bytes()
    for cut in (len(data) // 3, len(data) - 1, 10):            # truncated anywhere: the previous one loads
        p.write_bytes(data[:cut])
        ck = checkpoint.load_latest(tmp_path)
        assert ck.step == 10 and np.all(ck.params["w"] == 10)
        assert ck.skipped and ck.skipped[0][0] == p
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(p)
    assert str(e.value).count("\n") == 0 and p.name in str(e.value)


def test_flipped_bytes_fail_the_sha256(tmp_path):
    _save(tmp_path, 10)
    p = _save(tmp_path, 20)
    # rewrite the newest with a changed array but the old meta (as a torn write could leave it)
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/w"] = arrays["param/w"] + 1
    np.savez(p, **arrays)
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.load(p)
    ck = checkpoint.load_latest(tmp_path, quarantine=True)
    assert ck.step == 10
    assert (tmp_path / (p.name + ".bad")).exists() and not p.exists()


def test_temp_files_of_a_killed_writer_are_ignored_and_cleaned(tmp_path):
    _save(tmp_path, 10)
    (tmp_path / ".ckpt-abc.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert checkpoint.load_latest(tmp_path).step == 10
    _save(tmp_path, 20)
    assert not list(tmp_path.glob(".ckpt-*.tmp"))


def test_nothing_to_load(tmp_path):
    assert checkpoint.load_latest(tmp_path / "missing") is None
    (tmp_path / "ckpt-00000001.npz").write_bytes(b"junk")
    assert checkpoint.load_latest(tmp_path) is None
