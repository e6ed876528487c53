"""Shared pieces of the training tests: digits at any size, a tiny CNN, a device-like root."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from device_agent.model.builder import IMAGENET_PREPROCESS, GraphBuilder
from device_agent.training.data import write_dataset
from device_agent.model.graph import Graph, save_package

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=4)
def digits(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N,size,size,3) + int64 labels (bilinear resize, like the demo)."""
    from sklearn.datasets import load_digits
    from PIL import Image

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    if size != 8:
        imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in imgs])
    return np.repeat(imgs[..., None], 3, axis=3), d.target.astype(np.int64)


def tiny_cnn(num_classes: int = 10, size: int = 8, seed: int = 0, dropout: float = 0.2) -> Graph:
    """conv-bn-relu, a residual block, a strided conv, GAP, dropout, linear: every kind of stage cut."""
    b = GraphBuilder("tiny", input_shape=(None, 3, size, size), preprocess=dict(IMAGENET_PREPROCESS), seed=seed)
    x = b.relu(b.bn(b.conv(b.input, 8, 3, name="c1"), name="bn1"), name="r1")
    y = b.relu(b.bn(b.conv(x, 8, 3, name="c2"), name="bn2"), name="r2")
    y = b.bn(b.conv(y, 8, 3, name="c3"), name="bn3")
    x = b.relu(b.add(x, y, name="add"), name="r3")
    x = b.relu(b.bn(b.conv(x, 16, 3, stride=2, name="c4"), name="bn4"), name="r4")
    x = b.flatten(b.gap(x, name="gap"), name="flat")
    if dropout:
        x = b.dropout(x, dropout, name="drop")
    x = b.linear(x, num_classes, name="fc", init="torch")
    return b.finish({"logits": x}, labels=[str(i) for i in range(num_classes)], meta={"arch": "tiny"})


def make_root(tmp: Path, *, size: int = 8, classes=range(10), model: Graph | None = None,
              val_fraction: float = 0.2, limit: int | None = None) -> dict:
    """A device-like root: data/digits (the chosen classes, relabelled 0..k-1), models/m; job paths."""
    imgs, labels = digits(size)
    classes = list(classes)
    sel = np.isin(labels, classes)
    imgs, labels = imgs[sel], np.searchsorted(classes, labels[sel])
    if limit:
        imgs, labels = imgs[:limit], labels[:limit]
    write_dataset(tmp / "data" / "digits", imgs, labels, [str(c) for c in classes], val_fraction, seed=0)
    save_package(model if model is not None else tiny_cnn(len(classes), size), tmp / "models" / "m")
    return {"model": str(tmp / "models" / "m"), "data": str(tmp / "data" / "digits"), "out": str(tmp / "runs" / "r")}


def run_entry(job: dict, path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """python -m device_agent.training.train JOB.json in a subprocess."""
    path.write_text(json.dumps(job))
    env = dict(os.environ, THOMAS_THREADS="1")
    return subprocess.run([sys.executable, "-m", "device_agent.training.train", str(path)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def events(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def final_weights(out) -> dict[str, np.ndarray]:
    with np.load(Path(out) / "final" / "weights.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
