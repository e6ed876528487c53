"""The on-device dataset format and its writer (the host runs it; device_agent.training.data reads it back).

    write_dataset("data/digits", images_u8, labels, classes, val_fraction=0.2, seed=0)   # random split
    write_splits("data/cars", {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te)},
                 classes, split_source="dataset")                                     # a split kept as is

Layout of a dataset directory (format 2; format 1 = the same with channels 3, no test, no split_source):
    dataset.json   {"format": 2, "count": N, "height": H, "width": W, "channels": C (1 or 3),
                    "num_classes": K, "split_source": "dataset" | "random val=F seed=S",
                    ["seed": S, "val_fraction": F,]          (random splits only)
                    "splits": {"train": {"count": n, "shards": [{"images": "train-00000.images.npy",
                                 "labels": "train-00000.labels.npy", "count": m,
                                 "sha256": {"images": "...", "labels": "..."}}, ...]},
                               "val": {...}, ["test": {...}]}}
    classes.json   ["zero", "one", ...]  (label i names class i)
    train-00000.images.npy  (m,H,W,C) uint8      train-00000.labels.npy  (m,) int64     val-... test-...

Each split keeps the order it was given in. A directory is replaced whole: a reader sees the old
dataset or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fsutil import fsync_dir, sha256_file

FORMAT_VERSION = 2
DATASET_JSON = "dataset.json"
CLASSES_JSON = "classes.json"
SPLITS = ("train", "val", "test")
CHANNELS = (1, 3)                 # grayscale (N,H,W,1) or RGB (N,H,W,3)


def random_split(labels: np.ndarray, num_classes: int, val_fraction: float, seed: int) -> np.ndarray:
    """labels (N,) -> is_val (N,) bool, stratified: each class sends round(n_c · val_fraction) of its
    images (at least 1 when it has two or more and val_fraction > 0) to val, picked by default_rng(seed)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        k = int(round(len(idx) * val_fraction))
        if val_fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        is_val[rng.permutation(idx)[:k]] = True
    return is_val


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """DataError (naming the real value, -1 as -1) unless every label is an integer in [0, num_classes).
    Runs on the raw labels before anything is counted or allocated per class."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    if len(labels) == 0:
        return
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= num_classes:
        bad = int(lo) if lo < 0 else int(hi)
        raise DataError(f"{where}: label {bad} is outside [0, {num_classes}) for {num_classes} classes")


def check_subset(parts: dict, classes: list, where: str = "dataset") -> None:
    """Every class that val (or test) holds must have images in train: DataError naming the first one."""
    have = set(np.unique(parts["train"][1]).tolist())
    for split in SPLITS[1:]:
        if split in parts:
            extra = sorted(set(np.unique(parts[split][1]).tolist()) - have)
            if extra:
                raise DataError(f"{where}: split '{split}' holds class {classes[extra[0]]!r} (label {extra[0]}) "
                                f"that 'train' has no image of")


def write_dataset(path, images, labels, classes, val_fraction: float = 0.2, seed: int = 0,
                  shard_size: int = 4096) -> Path:
    """Write images (N,H,W,C) uint8 (C 1 or 3) + labels (N,) int as a dataset directory split at
    random (random_split); both splits keep the input order."""
    images, labels = np.asarray(images), np.asarray(labels)
    classes = [str(c) for c in classes]
    _check_split("images", images, labels, len(classes))
    is_val = random_split(labels, len(classes), val_fraction, seed)
    parts = {"train": (images, labels, np.flatnonzero(~is_val)), "val": (images, labels, np.flatnonzero(is_val))}
    return write_splits(path, parts, classes, f"random val={val_fraction:g} seed={seed}", shard_size,
                        extra={"seed": int(seed), "val_fraction": float(val_fraction)})


def write_splits(path, parts: dict, classes, split_source: str = "dataset", shard_size: int = 4096,
                 extra: dict | None = None) -> Path:
    """Write the splits {"train": (images, labels[, rows]), "val": ..., "test": ...} as they are:
    images (n,H,W,C) uint8, labels (n,) int, rows (k,) the rows of this split in that order (default
    all). "val" may be absent (empty val); "test" is written only when given and non-empty."""
    classes = [str(c) for c in classes]
    if not classes:
        raise DataError("classes must name at least one class")
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if "train" not in parts or set(parts) - set(SPLITS):
        raise DataError(f"splits must be train[, val, test], got {sorted(parts)}")
    norm = {}
    for split, p in parts.items():
        images, labels = np.asarray(p[0]), np.asarray(p[1])
        _check_split(split, images, labels, len(classes))
        rows = np.arange(len(labels)) if len(p) < 3 or p[2] is None else np.asarray(p[2], np.int64)
        if split != "test" or len(rows):
            norm[split] = (images, labels.astype(np.int64, copy=False), rows)
    norm.setdefault("val", (norm["train"][0], norm["train"][1], np.zeros(0, np.int64)))
    shapes = {s: p[0].shape[1:] for s, p in norm.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"every split must hold images of one shape (H,W,C), got {shapes}")
    if len(norm["train"][2]) == 0:
        raise DataError("no images to write (the training split is empty)")
    check_subset({s: (None, p[1][p[2]]) for s, p in norm.items()}, classes)
    h, w, c = shapes["train"]
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        splits = {s: _write_shards(tmp, s, *p, shard_size) for s, p in norm.items()}
        doc = {"format": FORMAT_VERSION, "count": int(sum(sp["count"] for sp in splits.values())),
               "height": int(h), "width": int(w), "channels": int(c), "num_classes": len(classes),
               "split_source": str(split_source), **(extra or {}), "splits": splits}
        for name, obj in ((CLASSES_JSON, classes), (DATASET_JSON, doc)):
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_split(split: str, images: np.ndarray, labels: np.ndarray, k: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in CHANNELS:
        raise DataError(f"{split}: images must be uint8 (N,H,W,1) or (N,H,W,3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{split}: labels must be (N,) for {len(images)} images, got shape {labels.shape}")
    check_labels(labels, k, split)


def _write_shards(tmp: Path, split: str, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                  shard_size: int) -> dict:
    shards = []
    for i, lo in enumerate(range(0, len(rows), shard_size)):
        part = rows[lo:lo + shard_size]
        rec = {"images": f"{split}-{i:05d}.images.npy", "labels": f"{split}-{i:05d}.labels.npy",
               "count": int(len(part)), "sha256": {}}
        for key, arr in (("images", np.ascontiguousarray(images[part])), ("labels", labels[part])):
            with open(tmp / rec[key], "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            rec["sha256"][key] = sha256_file(tmp / rec[key])
        shards.append(rec)
    return {"count": int(len(rows)), "shards": shards}


def _swap_in(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
