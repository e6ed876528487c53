"""data.py: the dataset writer and the memory-mapped reader, batches, augmentation, bad data."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from device_agent.training.data import augment_batch, normalize, open_dataset, write_dataset
from device_agent.errors import DataError


def _data(n=50, k=5, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % k


def test_round_trip_split_and_shards(tmp_path):
    imgs, labels = _data(103, 4)
    write_dataset(tmp_path / "d", imgs, labels, ["a", "b", "c", "d"], val_fraction=0.2, seed=3, shard_size=16)
    ds = open_dataset(tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert doc["count"] == 103 and (doc["height"], doc["width"], doc["channels"]) == (8, 8, 3)
    assert len(ds.train) + len(ds.val) == 103 and len(doc["splits"]["train"]["shards"]) == -(-len(ds.train) // 16)
    assert ds.classes == ["a", "b", "c", "d"]
    for c in range(4):                                   # stratified: 20 % of every class
        n_c = int((labels == c).sum())
        assert int((ds.val.labels == c).sum()) == round(n_c * 0.2)
    # every image is in exactly one split, with its label, in input order
    got = np.concatenate([ds.train.rows(np.arange(len(ds.train))), ds.val.rows(np.arange(len(ds.val)))])
    lab = np.concatenate([ds.train.labels, ds.val.labels])
    assert sorted(map(bytes, got.reshape(103, -1))) == sorted(map(bytes, imgs.reshape(103, -1)))
    assert isinstance(ds.train.images[0], np.memmap)
    # arbitrary row order across shards
    idx = np.array([40, 3, 17, 16, 0, 79])
    idx = idx[idx < len(ds.train)]
    full = np.concatenate([np.asarray(m) for m in ds.train.images])
    assert np.array_equal(ds.train.rows(idx), full[idx])
    assert sorted(lab.tolist()) == sorted(labels.tolist())


def test_rewrite_replaces_the_dataset_whole(tmp_path):
    imgs, labels = _data(30, 3)
    write_dataset(tmp_path / "d", imgs, labels, ["a", "b", "c"])
    d1 = open_dataset(tmp_path / "d").digest
    write_dataset(tmp_path / "d", imgs[:20], labels[:20], ["a", "b", "c"])
    ds = open_dataset(tmp_path / "d")
    assert ds.digest != d1 and len(ds.train) + len(ds.val) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["d"]        # no temp or old directories left


def test_batches_order_partial_and_drop_last(tmp_path):
    imgs, labels = _data(50, 5)
    write_dataset(tmp_path / "d", imgs, labels, list("abcde"), val_fraction=0.0)
    tr = open_dataset(tmp_path / "d").train
    bs = list(tr.batches(16, epoch=0, seed=1))
    assert [len(y) for _, y, _ in bs] == [16, 16, 16, 2]           # the last partial batch is kept
    assert [len(y) for _, y, _ in tr.batches(16, epoch=0, seed=1, drop_last=True)] == [16, 16, 16]
    rows = np.concatenate([r for _, _, r in bs])
    assert sorted(rows.tolist()) == list(range(50))
    again = np.concatenate([r for _, _, r in tr.batches(16, epoch=0, seed=1)])
    other = np.concatenate([r for _, _, r in tr.batches(16, epoch=1, seed=1)])
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    later = list(tr.batches(16, epoch=0, seed=1, start=2))           # resume inside an epoch
    assert np.array_equal(later[0][2], bs[2][2])
    x, y, r = bs[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == np.float32 and np.array_equal(y, tr.labels[r])


def test_normalize_uses_the_preprocess_spec():
    u8 = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    spec = {"scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}
    x = normalize(u8, spec, np.float64)
    want = (u8.transpose(0, 3, 1, 2) / 255 - np.array(spec["mean"])[:, None, None]) / np.array(spec["std"])[:, None, None]
    np.testing.assert_allclose(x, want, rtol=1e-12)
    assert x.shape == (2, 3, 4, 4)


def test_augment_is_a_padded_crop_and_flip():
    rng = np.random.default_rng(0)
    u8 = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = augment_batch(u8, np.random.default_rng(5))
    assert out.shape == u8.shape and out.dtype == np.uint8
    assert np.array_equal(out, augment_batch(u8, np.random.default_rng(5)))       # seeded
    pad = 4
    found = 0
    for i in range(64):                            # every output is a window of the padded (maybe flipped) image
        p = np.zeros((32 + 2 * pad, 32 + 2 * pad, 3), np.uint8)
        p[pad:-pad, pad:-pad] = u8[i]
        for flip in (False, True):
            src = p[:, ::-1] if flip else p
            hits = [(a, b) for a in range(2 * pad + 1) for b in range(2 * pad + 1)
                    if np.array_equal(src[a:a + 32, b:b + 32], out[i])]
            found += bool(hits)
    assert found >= 64
    assert not np.array_equal(out, u8)


# ------------------------------------------------------------------------------ bad data
def _write(tmp_path, **kw):
    imgs, labels = _data(40, 4)
    write_dataset(tmp_path / "d", imgs, labels, list("abcd"), **kw)
    return tmp_path / "d"


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_truncated_shard(tmp_path):
    d = _write(tmp_path)
    f = d / "train-00000.images.npy"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "train-00000.images.npy")
    with pytest.raises(DataError) as e:               # without the sha256 check: the mmap length fails
        open_dataset(d, verify=False)
    _one_line(e, "train-00000.images.npy", "truncated")


def test_corrupt_shard(tmp_path):
    d = _write(tmp_path)
    f = d / "val-00000.images.npy"
    b = bytearray(f.read_bytes())
    b[-5] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "val-00000.images.npy", "corrupt")
    (d / "train-00000.labels.npy").write_bytes(b"garbage, not npy")
    with pytest.raises(DataError) as e:
        open_dataset(d, verify=False)
    _one_line(e, "train-00000.labels.npy")


def test_shards_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    """The sha256 check reads each shard once: a later open trusts a shard whose size and mtime match
    the recorded check; a shard rewritten since (same size, new bytes) is read and refused again."""
    import device_agent.training.data as data

    d = _write(tmp_path)
    reads = []
    real = data.sha256_file
    monkeypatch.setattr(data, "sha256_file", lambda p: reads.append(p.name) or real(p))
    open_dataset(d)
    first = sorted(reads)
    assert first and all(n.endswith(".npy") for n in first) and (d / data.VERIFIED_JSON).is_file()
    reads.clear()
    open_dataset(d)
    assert reads == []                                      # nothing changed: nothing hashed
    f = d / "val-00000.images.npy"
    b = bytearray(f.read_bytes())
    b[-5] ^= 0xFF
    f.write_bytes(bytes(b))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "val-00000.images.npy", "corrupt")
    assert reads == ["val-00000.images.npy"]                # only the changed shard was read
    (d / data.VERIFIED_JSON).write_text("{not json")         # a broken record: everything checked again
    reads.clear()
    with pytest.raises(DataError):
        open_dataset(d)
    assert len(reads) > 1


def test_labels_out_of_range(tmp_path):
    d = _write(tmp_path)
    (d / "classes.json").write_text('["a", "b", "c"]')           # labels go up to 3
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "dataset.json", "'num_classes' is 4", "3 classes")     # the two files disagree
    doc = json.loads((d / "dataset.json").read_text())
    (d / "dataset.json").write_text(json.dumps(dict(doc, num_classes=3)))
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "labels.npy", "label 3", "3 classes")


def test_single_class_and_empty(tmp_path):
    imgs, _ = _data(20)
    write_dataset(tmp_path / "one", imgs, np.zeros(20, int), ["a", "b"])
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "one")
    _one_line(e, "single class", "dataset.json")
    write_dataset(tmp_path / "k1", imgs, np.zeros(20, int), ["a"])
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "k1")
    _one_line(e, "classes.json", "at least 2")
    d = _write(tmp_path)
    doc = json.loads((d / "dataset.json").read_text())
    doc["splits"]["train"] = {"count": 0, "shards": []}
    (d / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "no training images")
    with pytest.raises(DataError):
        write_dataset(tmp_path / "e", imgs[:0], np.zeros(0, int), ["a", "b"])


def test_missing_files_and_size_mismatch(tmp_path):
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "nope")
    _one_line(e, "nope")
    d = _write(tmp_path)
    (d / "train-00000.labels.npy").unlink()
    with pytest.raises(DataError) as e:
        open_dataset(d)
    _one_line(e, "train-00000.labels.npy", "missing")
    d2 = tmp_path / "ok"
    imgs, labels = _data(40, 4)
    write_dataset(d2, imgs, labels, list("abcd"))
    ds = open_dataset(d2)
    ds.check_input((1, 3, 8, 8))
    with pytest.raises(DataError) as e:
        ds.check_input((1, 3, 32, 32), "model 'm'")
    _one_line(e, "8x8", "32x32")


def test_writer_rejects_bad_arrays(tmp_path):
    imgs, labels = _data(10, 2)
    with pytest.raises(DataError, match="uint8"):
        write_dataset(tmp_path / "x", imgs.astype(np.float32), labels, ["a", "b"])
    with pytest.raises(DataError, match="outside"):
        write_dataset(tmp_path / "x", imgs, labels + 5, ["a", "b"])
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ splits, channels, sizes
def test_a_given_split_is_kept_in_order_with_its_test(tmp_path):
    from device_agent.training.dataset_write import write_splits

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 6, 10, 1), dtype=np.uint8)          # gray, H != W
    y = np.arange(30) % 3
    write_splits(tmp_path / "d", {"train": (x[:18], y[:18]), "val": (x[18:24], y[18:24]),
                                  "test": (x[24:], y[24:])}, ["a", "b", "c"], shard_size=7)
    ds = open_dataset(tmp_path / "d")
    assert (ds.height, ds.width, ds.channels, ds.split_source) == (6, 10, 1, "dataset")
    for sp, lo, hi in ((ds.train, 0, 18), (ds.val, 18, 24), (ds.test, 24, 30)):
        assert np.array_equal(sp.rows(np.arange(len(sp))), x[lo:hi]) and np.array_equal(sp.labels, y[lo:hi])
    assert ds.test.name == "test" and set(ds.splits) == {"train", "val", "test"}
    doc = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert doc["channels"] == 1 and doc["splits"]["test"]["count"] == 6 and "val_fraction" not in doc
    write_dataset(tmp_path / "r", x, y, ["a", "b", "c"], val_fraction=0.25, seed=4)
    ds = open_dataset(tmp_path / "r")
    assert ds.test is None and ds.split_source == "random val=0.25 seed=4"


def test_format_1_datasets_still_open(tmp_path):
    d = _write(tmp_path, val_fraction=0.3, seed=2)
    doc = json.loads((d / "dataset.json").read_text())
    doc["format"] = 1
    del doc["split_source"]
    (d / "dataset.json").write_text(json.dumps(doc))
    ds = open_dataset(d)
    assert ds.channels == 3 and ds.test is None and ds.split_source == "random val=0.3 seed=2"


def test_gray_data_fits_an_rgb_model_by_replication_and_rgb_never_fits_gray(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (12, 5, 7, 1), dtype=np.uint8)
    write_dataset(tmp_path / "g", x, np.arange(12) % 2, ["a", "b"], val_fraction=0.0)
    ds = open_dataset(tmp_path / "g")
    rows = np.array([3, 0, 11])
    assert ds.train.rows(rows).shape == (3, 5, 7, 1)
    ds.check_input((1, 3, 5, 7), "model 'rgb'")
    got = ds.train.rows(rows)
    want = np.stack([np.asarray(Image.fromarray(x[i, ..., 0]).convert("RGB")) for i in rows])
    assert got.shape == (3, 5, 7, 3) and np.array_equal(got, want)       # what Pillow's convert("RGB") gives
    x3, _, _ = next(ds.train.batches(4, shuffle=False))
    assert x3.shape == (4, 3, 5, 7)
    with pytest.raises(DataError) as e:
        ds.check_input((1, 3, 7, 5), "model 'm'")
    _one_line(e, "5x7", "7x5", "--size 7x5")
    write_dataset(tmp_path / "c", np.repeat(x, 3, axis=3), np.arange(12) % 2, ["a", "b"])
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "c").check_input((1, 1, 5, 7), "model 'gray'")
    _one_line(e, "RGB", "model 'gray'", "--channels 1")


def test_augment_pads_each_axis_by_its_own_eighth_for_h_not_w():
    rng = np.random.default_rng(3)
    u8 = rng.integers(1, 256, (40, 16, 48, 1), dtype=np.uint8)
    out = augment_batch(u8, np.random.default_rng(7))
    assert out.shape == u8.shape and np.array_equal(out, augment_batch(u8, np.random.default_rng(7)))
    ph, pw = 2, 6
    offsets = set()
    for i in range(40):
        p = np.zeros((16 + 2 * ph, 48 + 2 * pw, 1), np.uint8)
        p[ph:-ph, pw:-pw] = u8[i]
        hits = [(a, b) for f in (False, True) for a in range(2 * ph + 1) for b in range(2 * pw + 1)
                if np.array_equal((p[:, ::-1] if f else p)[a:a + 16, b:b + 48], out[i])]
        assert hits, i                               # every output is a window of the padded (maybe flipped) image
        offsets.add(hits[0][1])
    assert max(offsets) > 2 * ph                     # columns really move by more than the row padding


def test_normalize_is_the_arithmetic_of_infer():
    """Train/eval (data.normalize) and `thomas infer` (infer_input) give the same bits for every spec."""
    from device_agent.model.graph import TensorSpec
    from thomas_cli.infer_input import _preprocess

    rng = np.random.default_rng(4)
    for c, spec in ((3, None), (3, {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
                    (1, {"scale": 1 / 127.5, "mean": [1.0], "std": [1.0]}), (1, None), (3, {"scale": 1.0})):
        u8 = rng.integers(0, 256, (3, 4, 6, c), dtype=np.uint8)
        want = _preprocess(u8, TensorSpec("input", (None, c, 4, 6), "float32", "NCHW", spec))
        got = normalize(u8, spec, np.float32)
        assert got.dtype == want.dtype and np.array_equal(got, want), spec


def test_writer_refuses_a_val_class_missing_from_train_and_names_negative_labels(tmp_path):
    from device_agent.training.dataset_write import write_splits

    imgs, labels = _data(20, 2)
    with pytest.raises(DataError) as e:
        write_splits(tmp_path / "x", {"train": (imgs[:10], np.zeros(10, int)), "val": (imgs[10:], labels[10:])},
                     ["a", "b"])
    _one_line(e, "'val'", "'b'", "train")
    with pytest.raises(DataError) as e:
        write_dataset(tmp_path / "x", imgs, np.where(np.arange(20) == 5, -1, labels), ["a", "b"])
    _one_line(e, "label -1")
    with pytest.raises(DataError, match="one shape"):
        write_splits(tmp_path / "x", {"train": (imgs, labels), "val": (imgs[:, :4], labels)}, ["a", "b"])
    assert not (tmp_path / "x").exists()
