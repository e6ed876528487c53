"""train.py end to end on a tiny CNN and 8x8 digits: the run directory, determinism, the feature
cache (from its events), BN modes, head replacement, resume, and every bad input as one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from device_agent.training import checkpoint
from device_agent.training.data import VERIFIED_JSON, write_dataset
from device_agent.errors import JobError, ThomasError, TrainError
from device_agent.model.graph import load_package, save_package
from device_agent.protocol import TrainJob
from device_agent.training.train import main, run
from train_helpers import digits, final_weights, make_root, tiny_cnn

FAST = {"epochs": 2, "batch": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "dtype": "float32",
        "backend": "numpy"}


def _run(paths, **kw):
    evs = []
    done = run(TrainJob.from_dict(dict(paths, **dict(FAST, **kw))), evs.append)
    return done, [json.loads(e.to_json()) for e in evs]


def test_run_directory_and_determinism(tmp_path):
    paths = make_root(tmp_path)
    done, evs = _run(paths, layers="all", bn="train", keep_checkpoints=2, checkpoint_every=10)
    out = tmp_path / "runs" / "r"
    assert evs[0]["ev"] == "plan" and evs[-1]["ev"] == "done"
    assert evs[0]["stage"] == "all" and evs[0]["cut"] == [] and evs[0]["total_steps"] == 2 * 23
    assert [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()] == evs
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["val_acc"] == done.val_acc
    assert done.val_acc > 0.5                                     # it learns
    cm = json.loads((out / "confusion.json").read_text())
    assert np.array(cm["matrix"]).sum() == evs[0]["val"] and cm["classes"] == [str(i) for i in range(10)]
    assert np.trace(np.array(cm["matrix"])) == round(done.val_acc * evs[0]["val"])
    assert len(checkpoint.checkpoints(out / "ckpt")) == 2
    steps = [e["step"] for e in evs if e["ev"] == "step"]
    assert steps == list(range(1, 47))
    g = load_package(out / "final")
    assert g.labels == [str(i) for i in range(10)] and g.meta["trained"]["stage"] == "all"
    ck = checkpoint.load_latest(out / "ckpt")
    assert ck.step == 46 and all(np.array_equal(ck.params[k], g.weights[k]) for k in ck.params)
    # the same job again: bit-identical weights and losses
    done2, evs2 = _run(dict(paths, out=str(tmp_path / "runs" / "r2")), layers="all", bn="train",
                       keep_checkpoints=2, checkpoint_every=10)
    w1, w2 = final_weights(out), final_weights(tmp_path / "runs" / "r2")
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert [e["loss"] for e in evs if e["ev"] == "step"] == [e["loss"] for e in evs2 if e["ev"] == "step"]


def _cache_events(evs):
    return [(e["split"], e["epoch"], e["hit"]) for e in evs if e["ev"] == "cache"]


def test_feature_cache_hits_and_invalidation(tmp_path):
    paths = make_root(tmp_path)
    done1, evs = _run(paths, layers=2)
    assert evs[0]["feature_cache"] and evs[0]["cut"] == ["c4"]
    assert _cache_events(evs) == [("train", 1, False), ("val", 1, False), ("train", 2, True), ("val", 2, True)]
    prog = [e for e in evs if e["ev"] == "progress"]
    assert prog and prog[-1]["done"] == prog[-1]["total"] == evs[0]["train"] + evs[0]["val"]
    key = [e["key"] for e in evs if e["ev"] == "cache"][0]
    # a second run reuses it from its first epoch
    _, evs2 = _run(dict(paths, out=str(tmp_path / "runs" / "b")), layers=2)
    assert _cache_events(evs2)[0] == ("train", 1, True)
    assert {e["key"] for e in evs2 if e["ev"] == "cache"} == {key}
    # same trainable part without the cache: same result up to float32 rounding of the features
    _, evs3 = _run(dict(paths, out=str(tmp_path / "runs" / "c")), layers=2, feature_cache=False)
    assert not evs3[0]["feature_cache"] and _cache_events(evs3) == []
    w1, w3 = final_weights(tmp_path / "runs" / "r"), final_weights(tmp_path / "runs" / "c")
    for k in w1:
        np.testing.assert_allclose(w1[k], w3[k], rtol=1e-3, atol=1e-4)
    # the model's frozen layers change -> miss, and the stale entry is removed
    g = load_package(paths["model"])
    g.weights["c1.weight"] = g.weights["c1.weight"] * np.float32(1.01)
    save_package(g, paths["model"])
    _, evs4 = _run(dict(paths, out=str(tmp_path / "runs" / "d")), layers=2)
    assert _cache_events(evs4)[0] == ("train", 1, False)
    key4 = evs4[2]["key"] if evs4[1]["ev"] == "cache" else [e["key"] for e in evs4 if e["ev"] == "cache"][0]
    assert key4 != key
    entries = [p.name for p in (tmp_path / "cache" / "features").iterdir()]
    assert entries == [key4]
    # only the head changes -> the prefix is the same: still a hit
    g.weights["fc.weight"] = g.weights["fc.weight"] * np.float32(2)
    save_package(g, paths["model"])
    _, evs5 = _run(dict(paths, out=str(tmp_path / "runs" / "e")), layers=2)
    assert _cache_events(evs5)[0] == ("train", 1, True)
    # the data change -> miss
    imgs, labels = digits(8)
    write_dataset(paths["data"], imgs[:900], labels[:900], [str(i) for i in range(10)], 0.2, seed=0)
    _, evs6 = _run(dict(paths, out=str(tmp_path / "runs" / "f")), layers=2)
    assert _cache_events(evs6)[0] == ("train", 1, False)
    # augmentation means no cache
    _, evs7 = _run(dict(paths, out=str(tmp_path / "runs" / "g")), layers=2, augment=True, epochs=1)
    assert not evs7[0]["feature_cache"] and _cache_events(evs7) == []


def test_bn_frozen_when_fine_tuning_and_train_on_request(tmp_path):
    paths = make_root(tmp_path)
    g0 = load_package(paths["model"])
    g0.weights["bn4.running_var"] = np.full_like(g0.weights["bn4.running_var"], 2.0)   # not the init value
    save_package(g0, paths["model"])
    _run(paths, layers=2, epochs=1)
    w = final_weights(tmp_path / "runs" / "r")
    assert np.array_equal(w["bn4.running_var"], g0.weights["bn4.running_var"])       # auto = frozen
    assert not np.array_equal(w["bn4.weight"], g0.weights["bn4.weight"])              # its affine trains
    _run(dict(paths, out=str(tmp_path / "runs" / "t")), layers=2, epochs=1, bn="train")
    w = final_weights(tmp_path / "runs" / "t")
    assert not np.array_equal(w["bn4.running_var"], g0.weights["bn4.running_var"])
    assert np.array_equal(w["bn1.running_var"], g0.weights["bn1.running_var"])       # the prefix never changes
    assert np.array_equal(w["c1.weight"], g0.weights["c1.weight"])
    done, evs = _run(dict(paths, out=str(tmp_path / "runs" / "s")), layers="all", init="scratch", epochs=1)
    assert evs[0]["stage"] == "scratch"
    w = final_weights(tmp_path / "runs" / "s")
    assert not np.array_equal(w["bn1.running_var"], g0.weights["bn1.running_var"])   # batch statistics


def test_head_replacement(tmp_path):
    paths = make_root(tmp_path, classes=range(5, 10), model=tiny_cnn(10))
    with pytest.raises(JobError, match="'num_classes': model 'tiny' predicts 10 classes, the dataset has 5"):
        _run(paths)
    assert not (tmp_path / "runs" / "r").exists()                 # nothing written for a refused job
    done, evs = _run(paths, num_classes=5, epochs=1)
    g = load_package(tmp_path / "runs" / "r" / "final")
    assert g.weights["fc.weight"].shape == (5, 16) and g.labels == ["5", "6", "7", "8", "9"]


def test_resume_in_process_and_refusals(tmp_path):
    paths = make_root(tmp_path)
    kw = dict(layers="all", epochs=3, checkpoint_every=7, augment=True, optimizer="adam", lr=0.003,
              schedule="cosine", warmup_epochs=1, clip_grad_norm=1.0, label_smoothing=0.1, keep_checkpoints=50)
    _run(dict(paths, out=str(tmp_path / "runs" / "full")), **kw)
    # a run stopped after its step-21 checkpoint (simulated: drop the later checkpoints)
    _run(paths, **kw)
    out = tmp_path / "runs" / "r"
    for s, p in checkpoint.checkpoints(out / "ckpt"):
        if s > 21:
            p.unlink()
    with pytest.raises(JobError, match="already holds a run; set resume"):
        _run(paths, **kw)
    with pytest.raises(JobError, match="job field 'lr' is 0.004, the run in .* was started with 0.003"):
        _run(paths, resume=True, **dict(kw, lr=0.004))
    done, evs = _run(paths, resume=True, **kw)
    assert [e["step"] for e in evs if e["ev"] == "step"][0] == 22 and evs[0]["start_step"] == 21
    a, b = final_weights(tmp_path / "runs" / "full"), final_weights(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k != "ms"}  # noqa: E731
                       for ln in p.read_text().splitlines()]
    assert strip(out / "metrics.jsonl") == strip(tmp_path / "runs" / "full" / "metrics.jsonl")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    paths = make_root(tmp_path)
    job = dict(paths, **dict(FAST, epochs=3, schedule="step", step_size=1, gamma=1e30))
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main([str(tmp_path / "job.json")]) == 1
    out, err = capsys.readouterr()
    last = json.loads(out.splitlines()[-1])
    assert last["ev"] == "error" and last["code"] == "diverged" and "loss is" in last["message"]
    assert err.count("\n") == 1 and err.startswith("error: loss is")
    evs = [json.loads(ln) for ln in (tmp_path / "runs" / "r" / "events.jsonl").read_text().splitlines()]
    assert evs[-1]["ev"] == "error" and evs[-2]["ev"] == "step"
    saved = [e["step"] for e in evs if e["ev"] == "checkpoint"]
    ck = checkpoint.load_latest(tmp_path / "runs" / "r" / "ckpt")
    assert saved and ck.step == saved[-1] and all(np.isfinite(v).all() for v in ck.params.values())
    assert not (tmp_path / "runs" / "r" / "final").exists()


# ------------------------------------------------------------------------------ bad input
def _corrupt(root, name, cut=None, flip=False):
    f = root / "data" / "digits" / name
    b = f.read_bytes()
    f.write_bytes(b[:cut] if cut else b[:-8] + bytes(x ^ 0xFF for x in b[-8:]))


BAD_INPUT = {
    "lr <= 0": (lambda root, job: job.update(lr=0), "bad_job", "job field 'lr' must be > 0"),
    "unknown field": (lambda root, job: job.update(epoch=3), "bad_job", "unknown job field 'epoch'"),
    "wrong type": (lambda root, job: job.update(batch="64"), "bad_job", "job field 'batch' must be an integer"),
    "empty dataset": (lambda root, job: _edit_json(root, lambda d: d["splits"].update(
        train={"count": 0, "shards": []})), "bad_data", "no training images"),
    "single class": (lambda root, job: _rewrite(root, labels=lambda y: y * 0), "bad_data", "single class"),
    "labels out of range": (lambda root, job: ((root / "data" / "digits" / "classes.json").write_text(
        json.dumps([str(i) for i in range(9)])), _edit_json(root, lambda d: d.update(num_classes=9))),
        "bad_data", "label 9 is out of range"),
    "image size": (lambda root, job: _rewrite(root, size=16), "bad_data", "images are 16x16, model 'tiny' expects 8x8"),
    "truncated shard": (lambda root, job: _corrupt(root, "train-00000.images.npy", cut=500), "bad_data",
                        "train-00000.images.npy"),
    "corrupt shard": (lambda root, job: _corrupt(root, "val-00000.labels.npy"), "bad_data", "val-00000.labels.npy"),
    "missing model": (lambda root, job: job.update(model=str(root / "nope")), "bad_model", "nope"),
    "too many layers": (lambda root, job: job.update(layers=12), "bad_job", "'layers' is 12"),
    "opencl unavailable": (lambda root, job: job.update(backend="opencl"), "bad_job", "'backend' is 'opencl'"),
    "BN batch of one": (lambda root, job: job.update(layers="all", init="scratch", batch=_train_count(root) - 1),
                        "bad_job", "job field 'drop_last': the last batch of each epoch would hold 1 image"),
}


def _train_count(root):
    from device_agent.training.data import open_dataset
    return len(open_dataset(root / "data" / "digits").train)


def _edit_json(root, fn):
    p = root / "data" / "digits" / "dataset.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _rewrite(root, size=8, labels=lambda y: y):
    imgs, y = digits(size)
    write_dataset(root / "data" / "digits", imgs, labels(y), [str(i) for i in range(10)], 0.2)


def _snapshot(root):
    # NOTE: caches (the feature cache, a dataset's record of verified shards) may appear; nothing else
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "cache" not in p.parts and p.name != VERIFIED_JSON}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, capsys, case, monkeypatch):
    import device_agent.engine as engine
    monkeypatch.setattr(engine, "opencl_available", lambda: False)
    change, code, words = BAD_INPUT[case]
    paths = make_root(tmp_path / "dev")
    job = dict(paths, **FAST)
    change(tmp_path / "dev", job)
    before = _snapshot(tmp_path / "dev")
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main([str(tmp_path / "job.json")]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out                                    # nothing ran: the error is the only event
    ev = json.loads(lines[0])
    assert ev["ev"] == "error" and ev["code"] == code and words in ev["message"], ev
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert _snapshot(tmp_path / "dev") == before                   # nothing written, nothing lost
    assert not (tmp_path / "dev" / "runs").exists()


def test_entry_usage_and_unreadable_job(tmp_path, capsys):
    assert main([]) == 1
    assert main([str(tmp_path / "missing.json")]) == 1
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(tmp_path / "bad.json")]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(ln)["code"] for ln in out.splitlines()] == ["bad_job"] * 3
    assert len(err.splitlines()) == 3
    assert issubclass(TrainError, ThomasError)
    shutil.rmtree(tmp_path, ignore_errors=True)
