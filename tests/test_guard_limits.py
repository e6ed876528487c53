"""Limits before allocation (issue 14, item 2), device side: npy/npz headers in model weights,
checkpoints, dataset shards and infer inputs are checked against the bytes really there and a memory
budget before numpy allocates; object/pickled arrays are one line "pickled arrays are refused"; JSON
nested 200,000 deep (job files, model.json, dataset.json, checkpoint meta, the host's --job) is one
line, never a RecursionError."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.training.data import open_dataset
from device_agent.errors import CheckpointError, DataError, InputError, JobError, PackageError
from device_agent.model.graph import load_package
from device_agent.limits import MAX_JSON_DEPTH, check_npy, json_depth, load_npz, parse_json, read_json
from guardkit import agent, job, last_error, small_root, write_job

DEEP = "[" * 200_000 + "]" * 200_000
HUGE = (1_000_000, 1_000_000)            # 4 TB of float32


def forged_npy(shape=HUGE, descr="<f4", data: bytes = b"\0" * 64) -> bytes:
    """An .npy whose header declares `shape` but holds only `data`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"k": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def rewrite_npz(path: Path, member: str, payload: bytes) -> None:
    """Replace (or add) one member of an npz, keeping the others."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = payload
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


@pytest.fixture
def root(tmp_path):
    return small_root(tmp_path)


def _one_line(e) -> str:
    s = str(e.value)
    assert "\n" not in s and "Traceback" not in s
    return s


# ============================================================================ npz / npy
def test_npz_header_checks(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, w=np.ones((3, 4), np.float32))
    rewrite_npz(p, "big.npy", forged_npy())
    with pytest.raises(PackageError) as e:
        load_npz(p, PackageError)
    assert "array 'big'" in _one_line(e) and "(1000000, 1000000)" in str(e.value) and "3.6 TiB" in str(e.value)
    rewrite_npz(p, "big.npy", forged_npy((4,), data=b"\0" * 15))              # one byte short
    with pytest.raises(PackageError, match="truncated or forged"):
        load_npz(p, PackageError)
    rewrite_npz(p, "big.npy", pickled_npy())
    with pytest.raises(PackageError, match="array 'big' holds Python objects: pickled arrays are refused"):
        load_npz(p, PackageError)
    rewrite_npz(p, "big.npy", forged_npy((2,), descr="|O", data=b"\0" * 16))
    with pytest.raises(PackageError, match="pickled arrays are refused"):
        load_npz(p, PackageError)
    rewrite_npz(p, "big.npy", b"PK not an npy")
    with pytest.raises(PackageError, match="not an .npy array"):
        load_npz(p, PackageError)
    rewrite_npz(p, "big.npy", np.lib.format.magic(1, 0) + b"\xff\xff" + b"{" * 40)   # header runs past the end
    with pytest.raises(PackageError, match="array 'big'"):
        load_npz(p, PackageError)


def test_npz_memory_budget_and_members(tmp_path, monkeypatch):
    p = tmp_path / "a.npz"
    np.savez_compressed(p, w=np.zeros((1000, 100), np.float32))      # 400 kB once decompressed
    assert load_npz(p, PackageError)["w"].shape == (1000, 100)
    monkeypatch.setenv("THOMAS_MEMORY_BUDGET", "100000")
    with pytest.raises(PackageError, match="memory budget"):
        load_npz(p, PackageError)
    monkeypatch.delenv("THOMAS_MEMORY_BUDGET")
    rewrite_npz(p, "notes.txt", b"hello")
    with pytest.raises(PackageError, match="'notes.txt' is not an .npy member"):
        load_npz(p, PackageError)


def test_standalone_npy(tmp_path):
    p = tmp_path / "x.npy"
    p.write_bytes(forged_npy())
    with pytest.raises(InputError, match="truncated or forged"):
        check_npy(p, InputError)
    np.save(p, np.zeros((2, 3), np.uint8))
    assert check_npy(p, InputError, (2, 3), np.uint8) == (2, 3)
    with pytest.raises(InputError, match="expected int64"):
        check_npy(p, InputError, (2, 3), np.int64)
    with pytest.raises(InputError, match="memory budget"):
        check_npy(p, InputError, budget=5)


def test_package_with_forged_or_pickled_weights(root):
    w = root / "models" / "m" / "weights.npz"
    name = zipfile.ZipFile(w).namelist()[0]
    rewrite_npz(w, name, forged_npy())
    with pytest.raises(PackageError) as e:
        load_package(root / "models" / "m")
    assert "weights.npz" in _one_line(e) and "declares" in str(e.value)
    rewrite_npz(w, name, pickled_npy())
    with pytest.raises(PackageError, match="pickled arrays are refused"):
        load_package(root / "models" / "m")
    # the same model through the agent: one error event, bad_model
    rc, evs, _ = agent(root, "run", write_job(root, job()))
    assert rc == 1 and last_error(evs)["code"] == "bad_model" and "pickled arrays are refused" in evs[-1]["message"]


def test_checkpoint_with_a_forged_header_is_skipped(tmp_path):
    d = tmp_path / "ckpt"
    p = {"w": np.arange(6, dtype=np.float32)}
    meta = {"epoch": 0, "batch": 1, "sums": [0.0, 0, 0]}
    checkpoint.save(d, 1, params=p, optimizer={}, meta=meta)
    newest = checkpoint.save(d, 2, params=p, optimizer={}, meta=meta)
    rewrite_npz(newest, "param/w.npy", forged_npy())
    with pytest.raises(CheckpointError, match="declares"):
        checkpoint.load(newest)
    ck = checkpoint.load_latest(d, quarantine=True)
    assert ck.step == 1 and "declares" in ck.skipped[0][1] and newest.with_name(newest.name + ".bad").exists()
    rewrite_npz(ck.path, "meta.npy", _npy(np.frombuffer(DEEP.encode(), np.uint8)))
    with pytest.raises(CheckpointError, match="nested deeper"):
        checkpoint.load(ck.path)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("meta,field", [({"format": "1", "step": 3}, "format"), ({"format": 1, "step": -1}, "step"),
                                        ({"format": 1, "step": 3, "epoch": "x"}, "epoch"),
                                        ({"format": 1, "step": 3, "sums": {"a": 1}}, "sums")])
def test_checkpoint_meta_types(tmp_path, meta, field):
    p = checkpoint.save(tmp_path, 3, params={"w": np.zeros(2, np.float32)}, optimizer={}, meta={})
    with zipfile.ZipFile(p) as z:
        arrays = {n[:-4]: np.load(io.BytesIO(z.read(n))) for n in z.namelist()}
    doc = dict(json.loads(arrays["meta"].tobytes()), **meta)
    rewrite_npz(p, "meta.npy", _npy(np.frombuffer(json.dumps(doc).encode(), np.uint8)))
    with pytest.raises(CheckpointError, match=f"'{field}'|format"):
        checkpoint.load(p)


def test_dataset_shards_forged_or_pickled(root):
    ds = root / "data" / "digits"
    images = sorted(ds.glob("train-*.images.npy"))[0]
    labels = sorted(ds.glob("train-*.labels.npy"))[0]
    n = np.load(images, mmap_mode="r").shape[0]
    images.write_bytes(forged_npy((10**6, 8, 8, 3), "|u1"))
    with pytest.raises(DataError, match=r"holds uint8 \(1000000, 8, 8, 3\), expected") as e:
        open_dataset(ds, verify=False)
    assert images.name in _one_line(e)
    images.write_bytes(forged_npy((n, 8, 8, 3), "|u1", data=b"\0" * 100))       # the right header, cut short
    with pytest.raises(DataError, match="truncated or forged"):
        open_dataset(ds, verify=False)
    labels.write_bytes(pickled_npy())
    images.unlink()
    np.save(images, np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(DataError):
        open_dataset(ds, verify=False)
    rc, evs, _ = agent(root, "run", write_job(root, job()))
    assert rc == 1 and last_error(evs)["code"] == "bad_data"


def test_pickled_labels_are_one_line(root):
    ds = root / "data" / "digits"
    labels = sorted(ds.glob("train-*.labels.npy"))[0]
    n = np.load(labels).shape[0]
    np.save(labels, np.array([{"x": 1}] * n, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled arrays are refused") as e:
        open_dataset(ds, verify=False)
    _one_line(e)


def test_infer_input_with_a_forged_header(root):
    (root / "x.npy").write_bytes(forged_npy((10**6, 1, 8, 8)))
    rc, evs, _ = agent(root, "infer", "models/m", "x.npy", "y.npy")
    assert rc == 1 and last_error(evs)["code"] == "bad_input" and "x.npy" in evs[-1]["message"]
    assert not (root / "y.npy").exists()


# ============================================================================ JSON
def test_json_depth_and_size(tmp_path):
    assert json_depth(json.loads("[[1, {\"a\": [2]}]]")) == 4 and json_depth(3) == 0
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth(parse_json(ok, "x", JobError)) == MAX_JSON_DEPTH
    for text in (DEEP, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(JobError, match="nested deeper than"):
            parse_json(text, "x", JobError)
    assert parse_json("sgd", "--set optimizer", JobError, bare_ok=True) == "sgd"
    with pytest.raises(JobError, match="not UTF-8"):
        parse_json(b"\xff\xfe", "x", JobError)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"pad": "x" * 2000}))
    with pytest.raises(JobError, match="larger than"):
        read_json(big, JobError, max_bytes=1000, what="job")


def test_deep_model_json_and_job_file(root):
    mj = root / "models" / "m" / "model.json"
    good = mj.read_text()
    mj.write_text(DEEP)
    with pytest.raises(PackageError, match="nested deeper than") as e:
        load_package(root / "models" / "m")
    _one_line(e)
    mj.write_text(good)
    rc, evs, _ = agent(root, "run", write_job(root, DEEP, "deep.json"))
    assert rc == 1 and last_error(evs)["code"] == "bad_job" and "nested deeper" in evs[-1]["message"]
    rc, evs, _ = agent(root, "run", write_job(root, "{" * 3, "bad.json"))
    assert rc == 1 and last_error(evs)["code"] == "bad_job" and "invalid JSON" in evs[-1]["message"]
    rc, evs, _ = agent(root, "bench", write_job(root, DEEP, "b.json"))
    assert rc == 1 and last_error(evs)["code"] == "bad_job" and "nested deeper" in evs[-1]["message"]


def test_deep_dataset_json(root):
    (root / "data" / "digits" / "dataset.json").write_text(DEEP)
    with pytest.raises(DataError) as e:
        open_dataset(root / "data" / "digits")
    _one_line(e)


def test_host_job_file_nested_deep(tmp_path):
    from typer.testing import CliRunner

    from thomas_cli.main import app

    jf = tmp_path / "deep.json"
    jf.write_text(DEEP)
    r = CliRunner().invoke(app, ["--device", "local", "--device-root", str(tmp_path / "dev"), "finetune", "m",
                                 "--data", "d", "--job", str(jf)])
    assert r.exit_code == 1 and "nested deeper than" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "dev").exists()


@pytest.mark.parametrize("field,value", [("batch", 10**12), ("epochs", 10**9), ("layers", 10**7),
                                         ("keep_checkpoints", 10**6), ("seed", 2**64), ("num_classes", 10**8)])
def test_job_counts_have_upper_bounds(field, value):
    from device_agent.job import TrainJob

    with pytest.raises(JobError, match=f"job field '{field}' must be <= "):
        TrainJob.from_dict({"model": "m", "data": "d", "out": "o", field: value})
