"""The on-device dataset: uint8 NHWC shards written once on the host, memory-mapped on the device.

    write_dataset("data/digits", images_u8, labels, classes, val_fraction=0.2, seed=0)
    ds = open_dataset("data/digits")                   # DataError (one line, names the file) if unusable
    for x, y in ds.train.batches(32, epoch=0, seed=0, preprocess=spec, augment=True): ...

Layout of a dataset directory (format 1):
    dataset.json   {"format": 1, "count": N, "height": H, "width": W, "channels": 3, "num_classes": K,
                    "seed": s, "val_fraction": f,
                    "splits": {"train": {"count": n, "shards": [{"images": "train-00000.images.npy",
                                 "labels": "train-00000.labels.npy", "count": m,
                                 "sha256": {"images": "...", "labels": "..."}}, ...]},
                               "val": {...}}}
    classes.json   ["zero", "one", ...]  (label i names class i)
    train-00000.images.npy  (m,H,W,3) uint8      train-00000.labels.npy  (m,) int64     val-...

Shards are read with np.load(mmap_mode="r", allow_pickle=False): a dataset larger than memory
trains, only the rows of a batch are read. Every random draw comes from its own counter-based
generator, default_rng([seed, KIND, epoch, batch]), so a resumed run replays the same order and
the same augmentation from the position stored in its checkpoint, without any generator state.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .fsutil import atomic_write, fsync_dir, sha256_file
from .limits import check_npy

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
CLASSES_JSON = "classes.json"
SPLITS = ("train", "val")
RNG_SHUFFLE, RNG_AUGMENT = 1, 2      # the KIND of default_rng([seed, KIND, ...])


# ============================================================================ writer
def write_dataset(path, images, labels, classes, val_fraction: float = 0.2, seed: int = 0,
                  shard_size: int = 4096) -> Path:
    """Write images (N,H,W,3) uint8 + labels (N,) int into the dataset directory `path`, replacing
    it whole (a reader sees the old or the new dataset, never a half-written one).

    Split: each class sends round(n_c · val_fraction) of its images (at least 1 when it has two or
    more and val_fraction > 0) to val, picked by default_rng(seed); both splits keep the input order."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    classes = [str(c) for c in classes]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"labels must be (N,) for {len(images)} images, got shape {labels.shape}")
    if len(images) == 0:
        raise DataError("no images to write")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got {labels.dtype}")
    if not classes:
        raise DataError("classes must name at least one class")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"label {int(labels.max() if labels.max() >= len(classes) else labels.min())} "
                        f"is outside [0, {len(classes)}) for {len(classes)} classes")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        k = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        is_val[rng.permutation(idx)[:k]] = True

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        splits = {}
        for split, sel in (("train", ~is_val), ("val", is_val)):
            idx = np.flatnonzero(sel)
            shards = []
            for i, lo in enumerate(range(0, len(idx), shard_size)):
                part = idx[lo:lo + shard_size]
                rec = {"images": f"{split}-{i:05d}.images.npy", "labels": f"{split}-{i:05d}.labels.npy",
                       "count": int(len(part)), "sha256": {}}
                for key, arr in (("images", np.ascontiguousarray(images[part])), ("labels", labels[part])):
                    with open(tmp / rec[key], "wb") as f:
                        np.save(f, arr, allow_pickle=False)
                        f.flush()
                        os.fsync(f.fileno())
                    rec["sha256"][key] = sha256_file(tmp / rec[key])
                shards.append(rec)
            splits[split] = {"count": int(len(idx)), "shards": shards}
        doc = {"format": FORMAT_VERSION, "count": int(len(images)), "height": int(images.shape[1]),
               "width": int(images.shape[2]), "channels": 3, "num_classes": len(classes), "seed": int(seed),
               "val_fraction": float(val_fraction), "splits": splits}
        for name, obj in ((CLASSES_JSON, classes), (DATASET_JSON, doc)):
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# ============================================================================ reader
@dataclass
class Split:
    """One split: memory-mapped image shards (rows in order) and all labels in memory."""
    name: str
    images: list            # np.memmap (m,H,W,3) uint8 per shard
    labels: np.ndarray      # (n,) int64
    offsets: np.ndarray     # (shards+1,) first row of each shard

    def __len__(self) -> int:
        return int(len(self.labels))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Images idx (k,) -> (k,H,W,3) uint8, in the order of idx; reads only those rows."""
        idx = np.asarray(idx, np.int64)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx),) + self.images[0].shape[1:], np.uint8)
        for s in np.unique(shard):
            sel = shard == s
            local = idx[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")      # read each shard front to back
            out[np.flatnonzero(sel)[order]] = self.images[s][local[order]]
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
        """Yield (x (b,3,H,W) normalised, y (b,) int64, rows (b,)) from batch index `start` on.
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

    def check_input(self, shape: tuple, model: str = "model") -> None:
        """Raise DataError unless the images fit a model input (N,3,H,W)."""
        if len(shape) != 4 or shape[1] != 3:
            raise DataError(f"{self.path}: {model} takes input {tuple(shape)}, not (N,3,H,W) images")
        if (shape[2], shape[3]) != (self.height, self.width):
            raise DataError(f"{self.path / DATASET_JSON}: images are {self.height}x{self.width}, "
                            f"{model} expects {shape[2]}x{shape[3]} (push the data again at that size)")


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
    try:
        fmt, h, w, c = doc["format"], doc["height"], doc["width"], doc["channels"]
        splits = doc["splits"]
        if not isinstance(fmt, int) or fmt < 1:
            raise DataError(f"{where}: field 'format' must be an integer >= 1")
        if fmt > FORMAT_VERSION:
            raise DataError(f"{where}: dataset format {fmt} is newer than this agent reads ({FORMAT_VERSION})")
        if not all(isinstance(v, int) and v > 0 for v in (h, w)) or c != 3:
            raise DataError(f"{where}: fields 'height'/'width' must be positive and 'channels' 3")
    except KeyError as e:
        raise DataError(f"{where}: missing field {e}") from None
    if not all(isinstance(x, str) for x in classes):
        raise DataError(f"{root / CLASSES_JSON}: must be a list of class names")
    if len(classes) < 2:
        raise DataError(f"{root / CLASSES_JSON}: a classifier needs at least 2 classes, got {len(classes)}")
    parts = {}
    for split in SPLITS:
        s = splits.get(split, {"count": 0, "shards": []}) if isinstance(splits, dict) else None
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list):
            raise DataError(f"{where}: field 'splits.{split}' must hold a 'shards' list")
        parts[split] = _open_split(root, split, s, (h, w), len(classes), verify, seen, checked)
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
    return Dataset(root, list(classes), h, w, train, parts["val"], digest)


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
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing (not a dataset directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(v, kind):
        raise DataError(f"{path}: must be a JSON {'object' if kind is dict else 'list'}")
    return v


def _open_split(root: Path, split: str, s: dict, hw: tuple, k: int, verify: bool, seen: dict,
                checked: dict) -> Split:
    images, labels, offsets = [], [], [0]
    for rec in s["shards"]:
        try:
            count = int(rec["count"])
            files = {key: root / rec[key] for key in ("images", "labels")}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{root / DATASET_JSON}: a '{split}' shard entry lacks 'images'/'labels'/'count'") from None
        for key, f in files.items():
            if Path(rec[key]).name != rec[key]:
                raise DataError(f"{root / DATASET_JSON}: shard file name {rec[key]!r} must not hold a path")
            if not f.is_file():
                raise DataError(f"{f}: missing shard")
            want = (rec.get("sha256") or {}).get(key)
            if verify and want:
                _check_shard(f, want, seen, checked)
        im = _load_npy(files["images"], np.uint8, (count,) + tuple(hw) + (3,))
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
    return Split(split, images, lab, np.asarray(offsets, np.int64))


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
def augment_batch(u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """u8 (b,H,W,3) -> (b,H,W,3): random crop after zero-padding by max(1, H//8) px (4 at 32, as
    torchvision RandomCrop(32, padding=4)), then a horizontal flip with probability 1/2.
    Draws: offsets (b,2) in [0, 2·pad], then flips (b,)."""
    b, h, w, _ = u8.shape
    pad = max(1, h // 8)
    padded = np.zeros((b, h + 2 * pad, w + 2 * pad, 3), np.uint8)
    padded[:, pad:pad + h, pad:pad + w] = u8
    off = rng.integers(0, 2 * pad + 1, size=(b, 2))
    flip = rng.random(b) < 0.5
    out = np.empty_like(u8)
    for i in range(b):
        crop = padded[i, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def normalize(u8: np.ndarray, preprocess: dict | None, dtype=np.float32) -> np.ndarray:
    """u8 (b,H,W,C) -> x (b,C,H,W) of dtype, x = (u8·scale - mean) / std (the model's preprocess spec)."""
    dt = np.dtype(dtype)
    spec = preprocess or {}
    x = u8.astype(dt).transpose(0, 3, 1, 2) * dt.type(spec.get("scale", 1.0))
    if spec.get("mean") is not None:
        x -= np.asarray(spec["mean"], dt)[None, :, None, None]
    if spec.get("std") is not None:
        x /= np.asarray(spec["std"], dt)[None, :, None, None]
    return np.ascontiguousarray(x)
