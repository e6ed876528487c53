"""The on-device dataset reader: uint8 NHWC shards written once on the host, memory-mapped here.

    write_dataset("data/digits", images_u8, labels, classes, val_fraction=0.2, seed=0)   # dataset_write
    ds = open_dataset("data/digits")                   # DataError (one line, names the file) if unusable
    ds.check_input((1, 3, 64, 256), "model 'm'")       # size/channels vs a model input (N,C,H,W)
    for x, y, rows in ds.train.batches(32, epoch=0, seed=0, preprocess=spec, augment=True): ...
    ds.val, ds.test                                    # the other splits (.test is None when absent)

The format (dataset.json, classes.json, *.npy shards) is documented in device_agent/training/dataset_write.py.
Shards are read with np.load(mmap_mode="r", allow_pickle=False): a dataset larger than memory
trains, only the rows of a batch are read. Grayscale datasets (C=1) stay (N,H,W,1) on disk; after
check_input with a 3-channel model, rows() replicate the channel (what Pillow's convert("RGB") does).
Every random draw comes from its own counter-based generator, default_rng([seed, KIND, epoch,
batch]), so a resumed run replays the same order and the same augmentation from the position
stored in its checkpoint, without any generator state.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fsutil import atomic_write, sha256_file
from ..limits import check_npy, read_json
from .dataset_write import (CHANNELS, CLASSES_JSON, DATASET_JSON, FORMAT_VERSION, SPLITS,  # noqa: F401
                            write_dataset, write_splits)

RNG_SHUFFLE, RNG_AUGMENT = 1, 2      # the KIND of default_rng([seed, KIND, ...])


# ============================================================================ reader
@dataclass
class Split:
    """One split: memory-mapped image shards (rows in order) and all labels in memory."""
    name: str
    images: list            # np.memmap (m,H,W,C) uint8 per shard
    labels: np.ndarray      # (n,) int64
    offsets: np.ndarray     # (shards+1,) first row of each shard
    shape: tuple = ()       # (H, W, C) as stored
    channels_out: int = 0   # rows() give this many channels (3 from a C=1 split: replicated); 0 = as stored

    def __len__(self) -> int:
        return int(len(self.labels))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Images idx (k,) -> (k,H,W,C) uint8, in the order of idx; reads only those rows.
        C is channels_out when set (a grayscale split given to an RGB model: R = G = B)."""
        idx = np.asarray(idx, np.int64)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        shape = self.shape or self.images[0].shape[1:]
        out = np.empty((len(idx),) + tuple(shape), np.uint8)
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")      # read each shard front to back
            out[np.flatnonzero(sel)[order]] = self.images[s][local[order]]
        if self.channels_out and self.channels_out != out.shape[3]:
            out = np.repeat(out, self.channels_out, axis=3)
        return out

    def order(self, epoch: int, seed: int, shuffle: bool = True) -> np.ndarray:
        """The row order of an epoch (0-based): a permutation from default_rng([seed, 1, epoch])."""
        if not shuffle:
            return np.arange(len(self))
        return np.random.default_rng([seed, RNG_SHUFFLE, epoch]).permutation(len(self))

    def num_batches(self, batch: int, drop_last: bool = False) -> int:
        return len(self) // batch if drop_last else -(-len(self) // batch)

    def batches(self, batch: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = True,
                drop_last: bool = False, augment: bool = False, preprocess: dict | None = None,
                dtype=np.float32, start: int = 0):
        """Yield (x (b,C,H,W) normalised, y (b,) int64, rows (b,)) from batch index `start` on.
        The last partial batch is yielded unless drop_last."""
        order = self.order(epoch, seed, shuffle)
        for i in range(start, self.num_batches(batch, drop_last)):
            rows = order[i * batch:(i + 1) * batch]
            u8 = self.rows(rows)
            if augment:
                u8 = augment_batch(u8, np.random.default_rng([seed, RNG_AUGMENT, epoch, i]))
            yield normalize(u8, preprocess, dtype), self.labels[rows], rows


@dataclass
class Dataset:
    path: Path
    classes: list
    height: int
    width: int
    train: Split
    val: Split
    digest: str              # sha256 of dataset.json (which holds every shard's sha256)
    channels: int = 3        # as stored: 1 (grayscale) or 3 (RGB)
    test: Split | None = None
    split_source: str = ""   # "dataset" (kept as pushed) or "random val=F seed=S"

    @property
    def splits(self) -> dict:
        """{"train": Split, "val": Split[, "test": Split]}"""
        return {"train": self.train, "val": self.val, **({"test": self.test} if self.test is not None else {})}

    def check_input(self, shape: tuple, model: str = "model") -> None:
        """Raise DataError unless the images fit a model input (N,C,H,W), naming both sizes. A
        grayscale dataset fits a 3-channel model: from then on its rows() replicate the channel."""
        if len(shape) != 4 or shape[1] not in CHANNELS:
            raise DataError(f"{self.path}: {model} takes input {tuple(shape)}, not (N,1,H,W) or (N,3,H,W) images")
        if (shape[2], shape[3]) != (self.height, self.width):
            raise DataError(f"{self.path / DATASET_JSON}: images are {self.height}x{self.width}, "
                            f"{model} expects {shape[2]}x{shape[3]} (push the data again with --size "
                            f"{shape[2]}x{shape[3]})")
        if shape[1] == 1 and self.channels == 3:
            raise DataError(f"{self.path / DATASET_JSON}: images are RGB, {model} takes 1-channel (grayscale) "
                            f"input (push the data again with --channels 1)")
        for sp in self.splits.values():
            sp.channels_out = int(shape[1]) if shape[1] != self.channels else 0


VERIFIED_JSON = ".verified.json"   # shard -> [size, mtime_ns, sha256] already checked (a cache, never trusted alone)


def open_dataset(path, verify: bool = True) -> Dataset:
    """Open and validate a dataset directory; every problem is a one-line DataError naming the file.
    verify: check each shard's sha256 (one sequential read of the data) — once: a shard whose size and
    mtime still match what the last check recorded in VERIFIED_JSON is not read again."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset directory")
    seen = _read_verified(root) if verify else {}
    checked: dict = {}
    doc = _read_json(root / DATASET_JSON, dict)
    classes = _read_json(root / CLASSES_JSON, list)
    where = root / DATASET_JSON
    h, w, c, splits = _read_header(doc, where)
    if not all(isinstance(x, str) for x in classes):
        raise DataError(f"{root / CLASSES_JSON}: must be a list of class names")
    if len(classes) < 2:
        raise DataError(f"{root / CLASSES_JSON}: a classifier needs at least 2 classes, got {len(classes)}")
    if doc.get("num_classes", len(classes)) != len(classes):
        raise DataError(f"{where}: field 'num_classes' is {doc['num_classes']!r}, {CLASSES_JSON} names "
                        f"{len(classes)} classes")
    parts = {}
    for split in SPLITS:
        if split == "test" and "test" not in splits:
            continue
        s = splits.get(split, {"count": 0, "shards": []})
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list):
            raise DataError(f"{where}: field 'splits.{split}' must hold a 'shards' list")
        parts[split] = _open_split(root, split, s, (h, w, c), len(classes), verify, seen, checked)
    train = parts["train"]
    if len(train) == 0:
        raise DataError(f"{where}: the dataset has no training images")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise DataError(f"{where}: the training split holds a single class "
                        f"({classes[int(present[0])]!r}); a classifier needs at least 2")
    digest = hashlib.sha256((root / DATASET_JSON).read_bytes()).hexdigest()
    if verify and checked != seen:
        try:   # NOTE: best effort: a read-only dataset is verified again next time
            atomic_write(root / VERIFIED_JSON, lambda f: f.write(json.dumps(checked).encode()))
        except OSError:
            pass
    source = doc.get("split_source")
    if not isinstance(source, str):
        source = f"random val={doc.get('val_fraction', 0.2):g} seed={doc.get('seed', 0)}"   # format 1
    return Dataset(root, list(classes), h, w, train, parts["val"], digest, c, parts.get("test"), source)


def _read_header(doc: dict, where: Path) -> tuple:
    """(H, W, C, splits) of a dataset.json, checked."""
    try:
        fmt, h, w, c = doc["format"], doc["height"], doc["width"], doc["channels"]
        splits = doc["splits"]
    except KeyError as e:
        raise DataError(f"{where}: missing field {e}") from None
    if not isinstance(fmt, int) or fmt < 1:
        raise DataError(f"{where}: field 'format' must be an integer >= 1")
    if fmt > FORMAT_VERSION:
        raise DataError(f"{where}: dataset format {fmt} is newer than this agent reads ({FORMAT_VERSION})")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise DataError(f"{where}: fields 'height'/'width' must be positive integers")
    if c not in CHANNELS or isinstance(c, bool):
        raise DataError(f"{where}: field 'channels' must be 1 or 3, got {c!r}")
    if not isinstance(splits, dict):
        raise DataError(f"{where}: field 'splits' must be an object")
    return h, w, c, splits


def _read_verified(root: Path) -> dict:
    try:
        d = json.loads((root / VERIFIED_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _check_shard(f: Path, want: str, seen: dict, checked: dict) -> None:
    """sha256 of shard f against `want`, unless the same size/mtime was verified against it before."""
    st = f.stat()
    stamp = [st.st_size, st.st_mtime_ns, want]
    if seen.get(f.name) != stamp and sha256_file(f) != want:
        raise DataError(f"{f}: corrupt shard (sha256 differs from {DATASET_JSON})")
    checked[f.name] = stamp


def _read_json(path: Path, kind):
    if not path.exists():
        raise DataError(f"{path}: missing (not a dataset directory?)")
    v = read_json(path, DataError, what="dataset file")      # size and nesting limits, one line
    if not isinstance(v, kind):
        raise DataError(f"{path}: must be a JSON {'object' if kind is dict else 'list'}")
    return v


def _open_split(root: Path, split: str, s: dict, hwc: tuple, k: int, verify: bool, seen: dict,
                checked: dict) -> Split:
    images, labels, offsets = [], [], [0]
    for rec in s["shards"]:
        try:
            count = int(rec["count"])
            files = {key: root / rec[key] for key in ("images", "labels")}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{root / DATASET_JSON}: a '{split}' shard entry lacks 'images'/'labels'/'count'") from None
        for key, f in files.items():
            if not isinstance(rec[key], str) or Path(rec[key]).name != rec[key]:
                raise DataError(f"{root / DATASET_JSON}: shard file name {rec[key]!r} must not hold a path")
            if not f.is_file():
                raise DataError(f"{f}: missing shard")
            want = (rec.get("sha256") or {}).get(key)
            if verify and want:
                _check_shard(f, want, seen, checked)
        im = _load_npy(files["images"], np.uint8, (count,) + tuple(hwc))
        lab = np.array(_load_npy(files["labels"], np.int64, (count,)))
        if count and (lab.min() < 0 or lab.max() >= k):
            bad = int(lab.min() if lab.min() < 0 else lab.max())
            raise DataError(f"{files['labels']}: label {bad} is out of range for {k} classes")
        images.append(im)
        labels.append(lab)
        offsets.append(offsets[-1] + count)
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(lab) != s.get("count", len(lab)):
        raise DataError(f"{root / DATASET_JSON}: split '{split}' says {s.get('count')} images, "
                        f"its shards hold {len(lab)}")
    return Split(split, images, lab, np.asarray(offsets, np.int64), tuple(hwc))


def _load_npy(path: Path, dtype, shape: tuple):
    check_npy(path, DataError, shape, dtype)     # header vs real size, no object dtype: before the mmap
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated shard ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(a, np.ndarray):
        raise DataError(f"{path}: not a .npy array")
    if a.dtype != dtype or tuple(a.shape) != shape:
        raise DataError(f"{path}: holds {a.dtype} {tuple(a.shape)}, expected {np.dtype(dtype)} {shape}")
    return a


# ============================================================================ transforms
DEFAULT_PREPROCESS = {"scale": 1.0 / 255.0}    # a model without a preprocess spec (as `thomas infer`)


def augment_batch(u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """u8 (b,H,W,C) -> (b,H,W,C): random crop after zero-padding each side by ph = max(1, H//8) rows
    and pw = max(1, W//8) columns (4 at 32x32, as torchvision RandomCrop(32, padding=4); 8 and 32
    at 64x256), then a horizontal flip with probability 1/2.
    Draws: offsets (b,2) in [0, 2·ph] x [0, 2·pw], then flips (b,)."""
    b, h, w, c = u8.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    padded = np.zeros((b, h + 2 * ph, w + 2 * pw, c), np.uint8)
    padded[:, ph:ph + h, pw:pw + w] = u8
    # NOTE: one scalar bound when square keeps the draws of square datasets what they always were
    high = 2 * ph + 1 if ph == pw else np.array([2 * ph + 1, 2 * pw + 1])
    off = rng.integers(0, high, size=(b, 2))
    flip = rng.random(b) < 0.5
    out = np.empty_like(u8)
    for i in range(b):
        crop = padded[i, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def normalize(u8: np.ndarray, preprocess: dict | None, dtype=np.float32) -> np.ndarray:
    """u8 (b,H,W,C) -> x (b,C,H,W) of dtype, x = (u8·scale - mean) / std: the model's preprocess
    spec (DEFAULT_PREPROCESS when it has none), the same arithmetic as `thomas infer` on images."""
    dt = np.dtype(dtype)
    spec = preprocess or DEFAULT_PREPROCESS
    x = u8.astype(dt).transpose(0, 3, 1, 2) * dt.type(spec.get("scale", 1.0))
    if spec.get("mean") is not None:
        x -= np.asarray(spec["mean"], dt)[None, :, None, None]
    if spec.get("std") is not None:
        x /= np.asarray(spec["std"], dt)[None, :, None, None]
    return np.ascontiguousarray(x)
