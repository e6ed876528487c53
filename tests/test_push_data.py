"""`thomas push-data` and `finetune --data` on the local device: H x W and gray datasets, a dataset's own
train/val/test split kept, --val/--resplit, and every bad input as one line with nothing pushed
(limits of issue 14: labels, pickled arrays, forged npz headers, the memory budget, --size, pixel bombs)."""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device_agent.model.builder import GraphBuilder
from device_agent.training.data import open_dataset
from device_agent.model.graph import save_package
from devicekit import DeviceTarget, thomas, thomas_json

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def dev(tmp_path, monkeypatch):
    for k in ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "ANDROID_SERIAL"):
        monkeypatch.delenv(k, raising=False)
    root = tmp_path / "device"
    return DeviceTarget("local", root, ["--device", "local", "--device-root", str(root), "--python", sys.executable])


def strip_model(path: Path, c: int, h: int, w: int, k: int = 3) -> Path:
    """A tiny CNN taking (N,c,h,w) images: conv/2 - relu - GAP - linear."""
    b = GraphBuilder("strip", input_shape=(None, c, h, w), seed=0,
                     preprocess={"scale": 1 / 255, "mean": [0.5] * c, "std": [0.25] * c})
    x = b.relu(b.conv(b.input, 4, 3, stride=2, name="c1"), name="r1")
    x = b.linear(b.flatten(b.gap(x, name="gap"), name="flat"), k, name="fc", init="torch")
    return save_package(b.finish({"logits": x}, labels=[str(i) for i in range(k)]), path)


def arrays(n: int = 36, h: int = 8, w: int = 24, c: int | None = None, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8), np.arange(n) % k


def folder(root: Path, splits: dict, classes=("cat", "dog", "owl"), hw=(10, 14), mode="RGB") -> Path:
    rng = np.random.default_rng(5)
    for split, n in splits.items():
        for c in classes:
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 256, hw + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{i:02d}.png")
    return root


def one_line_error(r, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def nothing_pushed(dev: DeviceTarget) -> None:
    data = dev.root / "data"
    assert not data.exists() or list(data.iterdir()) == [], list(data.iterdir())


# ============================================================================ sizes and channels
def test_hxw_npz_keeps_its_size_unless_asked(dev, tmp_path):
    x, y = arrays()
    np.savez(tmp_path / "strips.npz", x=x, y=y)
    r = thomas(dev, "push-data", str(tmp_path / "strips.npz"))
    assert "8x24" in r.stdout and "split random val=0.2 seed=0" in " ".join(r.stdout.split())
    ds = open_dataset(dev.root / "data" / "strips")
    assert (ds.height, ds.width, ds.channels) == (8, 24, 3)           # not squashed to a square
    got = np.concatenate([ds.train.rows(np.arange(len(ds.train))), ds.val.rows(np.arange(len(ds.val)))])
    assert sorted(map(bytes, got[..., 0])) == sorted(map(bytes, x))    # pixels unchanged, gray replicated
    meta = thomas_json(dev, "push-data", str(tmp_path / "strips.npz"), "--size", "4x12", "--name", "small",
                       "--channels", "1", "--val", "0")
    assert (meta["height"], meta["width"], meta["channels"], meta["size"]) == (4, 12, 1, "4x12")
    small = open_dataset(dev.root / "data" / "small")
    assert small.train.images[0].shape[1:] == (4, 12, 1)                # stored gray
    want = np.stack([np.asarray(Image.fromarray(a).resize((12, 4), Image.BILINEAR)) for a in x])
    assert np.array_equal(small.train.rows(np.arange(len(x)))[..., 0], want)   # resized only when asked
    meta = thomas_json(dev, "push-data", str(tmp_path / "strips.npz"), "--size", "16", "--name", "sq")
    assert meta["size"] == "16x16"


def test_train_and_infer_see_the_same_pixels(dev, tmp_path):
    """A folder pushed at the model's size holds, for every image, exactly what `thomas infer`
    feeds the model for that file (convert, then bilinear resize), gray and RGB."""
    from device_agent.model.graph import load_package
    from thomas_cli.infer_input import load_image

    src = folder(tmp_path / "photos", {"": 2}, hw=(20, 30))
    for c in (1, 3):
        spec = load_package(strip_model(tmp_path / f"m{c}", c, 16, 24)).inputs[0]
        thomas(dev, "push-data", str(src), "--size", "16x24", "--channels", str(c), "--val", "0", "--name", f"p{c}")
        ds = open_dataset(dev.root / "data" / f"p{c}")
        files = sorted(p for p in src.rglob("*.png"))
        want = np.stack([load_image(f, spec) for f in files])
        assert np.array_equal(ds.train.rows(np.arange(len(files))), want)


def test_finetune_data_takes_the_models_size_and_channels(dev, tmp_path):
    src = folder(tmp_path / "shots", {"": 4}, hw=(20, 30))          # RGB photos
    pkg = strip_model(tmp_path / "gray", 1, 12, 18)
    r = thomas(dev, "finetune", str(pkg), "--data", str(src), "--epochs", "1", "--batch", "4", "--backend", "cpu")
    assert "12x18" in r.stderr and "done" in r.stdout
    doc = json.loads((dev.root / "data" / "shots" / "dataset.json").read_text())
    assert (doc["height"], doc["width"], doc["channels"]) == (12, 18, 1)
    thomas(dev, "push-data", str(src), "--size", "12x18", "--name", "rgb")        # RGB on the device
    r = thomas(dev, "finetune", str(pkg), "--data", "rgb", "--epochs", "1", expect=1)
    one_line_error(r, "'rgb' is RGB", "--channels 1")
    thomas(dev, "push-data", str(src), "--name", "big")                            # its own 20x30
    r = thomas(dev, "finetune", str(pkg), "--data", "big", "--epochs", "1", expect=1)
    one_line_error(r, "20x30", "12x18", "--size 12x18")
    r = thomas(dev, "finetune", "mobilenet_v2", "--data", "big", "--epochs", "1", expect=1)
    one_line_error(r, "square", "20x30")


def test_gray_data_on_an_rgb_model_trains_exactly_as_rgb_data(dev, tmp_path):
    """The channel replicated on the device (C=1 dataset, C=3 model) gives the same losses, bit for
    bit, as the same images stored RGB; with augmentation of a non-square input too."""
    x, y = arrays(36, 8, 24)
    np.savez(tmp_path / "g.npz", x_train=x[:27], y_train=y[:27], x_val=x[27:], y_val=y[27:])
    thomas(dev, "push-data", str(tmp_path / "g.npz"), "--channels", "1", "--name", "gray")
    thomas(dev, "push-data", str(tmp_path / "g.npz"), "--channels", "3", "--name", "rgb")
    pkg = strip_model(tmp_path / "m", 3, 8, 24)
    losses = {}
    for name in ("gray", "rgb"):
        r = thomas(dev, "finetune", str(pkg), "--data", name, "--epochs", "2", "--batch", "6", "--backend", "cpu",
                   "--layers", "all", "--set", "augment=true", "--json")
        evs = [json.loads(line) for line in r.stdout.splitlines()]
        losses[name] = [e["loss"] for e in evs if e["ev"] == "step"] + [e["val_loss"] for e in evs if e["ev"] == "epoch"]
    assert len(losses["gray"]) == 2 * 5 + 2 and losses["gray"] == losses["rgb"]


# ============================================================================ splits
def test_npz_split_is_kept_exactly_with_its_test_and_classes(dev, tmp_path):
    x, y = arrays(50)
    np.savez(tmp_path / "s.npz", x_train=x[:30], y_train=y[:30], x_val=x[30:42], y_val=y[30:42],
             x_test=x[42:], y_test=y[42:], classes=np.array(["ant", "bee", "cow"]))
    r = thomas(dev, "push-data", str(tmp_path / "s.npz"))
    line = " ".join(r.stdout.split())
    assert "50 images (30 train / 12 val / 8 test)" in line and "split from the dataset" in line
    ds = open_dataset(dev.root / "data" / "s")
    assert ds.classes == ["ant", "bee", "cow"] and ds.split_source == "dataset"
    for sp, lo, hi in ((ds.train, 0, 30), (ds.val, 30, 42), (ds.test, 42, 50)):     # same order, no re-split
        assert np.array_equal(sp.rows(np.arange(len(sp)))[..., 0], x[lo:hi]) and np.array_equal(sp.labels, y[lo:hi])
    one_line_error(thomas(dev, "push-data", str(tmp_path / "s.npz"), "--val", "0.3", "--name", "t", expect=1),
                   "own split", "--resplit")
    meta = thomas_json(dev, "push-data", str(tmp_path / "s.npz"), "--val", "0.25", "--resplit", "--name", "t")
    assert (meta["train"] + meta["val"], meta["test"], meta["split_source"]) == (42, 8, "random val=0.25 seed=0")
    t = open_dataset(dev.root / "data" / "t")
    assert np.array_equal(t.test.labels, y[42:])                                       # test kept as it was
    np.savez(tmp_path / "tt.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    meta = thomas_json(dev, "push-data", str(tmp_path / "tt.npz"), "--val", "0.25")   # train/test only: val drawn
    assert (meta["train"], meta["val"], meta["test"]) == (30, 10, 10)


def test_folder_split_is_kept_and_val_test_class_sets_checked(dev, tmp_path):
    src = folder(tmp_path / "pets", {"train": 4, "val": 2, "test": 1})
    r = thomas(dev, "push-data", str(src))
    line = " ".join(r.stdout.split())
    assert "21 images (12 train / 6 val / 3 test)" in line and "split from the dataset" in line and "10x14" in line
    ds = open_dataset(dev.root / "data" / "pets")
    assert ds.classes == ["cat", "dog", "owl"] and ds.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    first = np.asarray(Image.open(src / "val" / "dog" / "00.png"))
    assert np.array_equal(ds.val.rows([2])[0], first)                              # folder order kept
    assert ds.test.labels.tolist() == [0, 1, 2]
    (src / "test" / "emu").mkdir()
    Image.fromarray(first).save(src / "test" / "emu" / "0.png")
    one_line_error(thomas(dev, "push-data", str(src), "--name", "p2", expect=1), "test", "emu", "train/ lacks")
    bad = folder(tmp_path / "nodog", {"train": 3})
    folder(bad, {"val": 1}, classes=("cat", "owl"))
    one_line_error(thomas(dev, "push-data", str(bad), expect=1), "val", "lacks dog")
    assert not (dev.root / "data" / "p2").exists() and not (dev.root / "data" / "nodog").exists()


# ============================================================================ bad input: one line, nothing pushed
def _forged_npz(path: Path, shape: tuple) -> None:
    """An npz whose 'x' header declares `shape` (uint8) over a few bytes of data."""
    import zipfile

    hdr = {"descr": "|u1", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, hdr)
            f.write(b"\0" * 64)
        with z.open("y.npy", "w") as f:
            np.save(f, np.zeros(4, np.int64))


def _png_claiming(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels (a decompression bomb's shape) with no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("case", ["size_unparsed", "size_huge", "label_2_40", "label_negative", "label_vs_classes",
                                  "pickled", "forged_header", "budget", "mixed_keys", "half_pair",
                                  "val_class_not_in_train", "channels"])
def test_bad_input_is_one_line_and_pushes_nothing(dev, tmp_path, monkeypatch, case):
    x, y = arrays(20)
    npz, args = tmp_path / "d.npz", []
    words = {"size_unparsed": ("64x", "HxW"), "size_huge": ("100000", "4096"), "label_2_40": ("1099511627776",),
             "label_negative": ("label -1",), "label_vs_classes": ("label 3", "3 classes"),
             "pickled": ("pickled arrays are refused",), "forged_header": ("declares", "1000000"),
             "budget": ("memory",), "mixed_keys": ("mixes",), "half_pair": ("x_val", "y_val"),
             "val_class_not_in_train": ("'val'", "'2'"), "channels": ("--channels 2",)}[case]
    if case == "size_unparsed":
        np.savez(npz, x=x, y=y)
        args = ["--size", "64x"]
    elif case == "size_huge":
        np.savez(npz, x=x, y=y)
        args = ["--size", "100000"]                   # was a MemoryError: refused before any allocation
    elif case == "label_2_40":
        np.savez(npz, x=x, y=np.where(np.arange(20) == 7, 2**40, y))    # grew past 4.9 GB before
    elif case == "label_negative":
        np.savez(npz, x=x, y=np.where(np.arange(20) == 7, -1, y), classes=np.array(["a", "b", "c"]))
    elif case == "label_vs_classes":
        np.savez(npz, x=x, y=np.where(np.arange(20) == 7, 3, y), classes=np.array(["a", "b", "c"]))
    elif case == "pickled":
        np.savez(npz, x=x, y=np.array([None] * 20, dtype=object))
    elif case == "forged_header":
        _forged_npz(npz, (1000000, 1000000))
    elif case == "budget":
        np.savez(npz, x=x, y=y)
        monkeypatch.setenv("THOMAS_MEMORY_BUDGET", "5000")
    elif case == "mixed_keys":
        np.savez(npz, x=x, y=y, x_train=x, y_train=y)
    elif case == "half_pair":
        np.savez(npz, x_train=x, y_train=y, x_val=x)
    elif case == "val_class_not_in_train":
        np.savez(npz, x_train=x[:10], y_train=y[:10] % 2, x_val=x[10:], y_val=y[10:])
    elif case == "channels":
        np.savez(npz, x=x, y=y)
        args = ["--channels", "2"]
    one_line_error(thomas(dev, "push-data", str(npz), *args, expect=1), *words)
    nothing_pushed(dev)


def test_a_pixel_bomb_is_refused_before_decoding(dev, tmp_path):
    src = folder(tmp_path / "f", {"": 2}, classes=("a", "b"), hw=(8, 8))
    _png_claiming(src / "a" / "bomb.png", 20000, 20000)          # 400 Mpx declared, 100 bytes on disk
    one_line_error(thomas(dev, "push-data", str(src), expect=1), "a/bomb.png", "400,000,000 pixels",
                   "67,108,864", "decompression bomb")
    nothing_pushed(dev)
    (src / "a" / "bomb.png").unlink()
    _png_claiming(src / "a" / "big.png", 8192, 8192)              # at the limit: an ordinary (broken) file
    r = thomas(dev, "push-data", str(src))
    assert "a/big.png" in r.stderr and "1 unreadable skipped" in r.stdout and "4 images" in r.stdout


def test_folder_of_mixed_sizes_needs_size(dev, tmp_path):
    src = folder(tmp_path / "mix", {"": 2}, classes=("a",), hw=(10, 14))
    folder(src, {"": 1}, classes=("b",), hw=(12, 12))
    one_line_error(thomas(dev, "push-data", str(src), expect=1), "differ in size", "--size")
    nothing_pushed(dev)
    assert thomas_json(dev, "push-data", str(src), "--size", "12x12")["size"] == "12x12"
