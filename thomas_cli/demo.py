"""`thomas demo`: the main job, run in-process on the local machine with the numpy reference engine.

Builds a MobileNetV2 (width 0.5, 32x32 input, 10 classes) from the zoo, feeds it scikit-learn's
digits (real 8x8 scans, upscaled; no download), runs an inference pass, then a few SGD-momentum
steps of all layers, and prints what happened and where the time went.
"""
from __future__ import annotations

import time

import numpy as np
from rich.table import Table

from device_agent.backends.numpy_ref import NumpyRef
from device_agent.errors import ThomasError
from device_agent.graph import Graph

from . import zoo
from .main import out

SIZE = 32


def digits_dataset(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 NHWC (N,size,size,3) images and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ThomasError("the demo needs scikit-learn: pip install 'thomas[demo]'") from None
    from PIL import Image

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in imgs])
    return np.repeat(big[..., None], 3, axis=3), d.target.astype(np.int64)


def preprocess(g: Graph, images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW with the model's preprocessing spec."""
    spec = g.inputs[0].preprocess or {}
    x = images.astype(np.float32).transpose(0, 3, 1, 2) * np.float32(spec.get("scale", 1.0))
    if spec.get("mean") is not None:
        x -= np.asarray(spec["mean"], np.float32)[None, :, None, None]
    if spec.get("std") is not None:
        x /= np.asarray(spec["std"], np.float32)[None, :, None, None]
    return x


def run_demo(steps: int = 30, batch: int = 32, lr: float = 2e-3, betas=(0.9, 0.999), eps=1e-8) -> dict:
    g = zoo.build("mobilenet_v2", num_classes=10, size=SIZE, width=0.5, seed=0)
    images, labels = digits_dataset()
    out.print(f"[bold]THOMAS demo[/]: {g.name} (width 0.5, {SIZE}x{SIZE}, {g.num_params():,} parameters) "
              f"on {len(labels)} digit scans, numpy reference backend")
    be = NumpyRef(g, profile=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))

    x0 = preprocess(g, images[order[:batch]])
    t0 = time.perf_counter()
    logits = be.forward(x0)[g.outputs[0]]
    infer_ms = (time.perf_counter() - t0) * 1e3

    table = Table("step", "loss", "batch top-1", "forward ms", "backward ms", title="training all layers from scratch (Adam)")
    m = {k: np.zeros_like(be.weights[k]) for k in be.trainable}
    v = {k: np.zeros_like(be.weights[k]) for k in be.trainable}
    losses = []
    for step in range(steps):
        idx = order[(step * batch) % len(order):][:batch]
        x, y = preprocess(g, images[idx]), labels[idx]
        t0 = time.perf_counter()
        logits = be.forward(x, training=True, grad=True, seed=step)[g.outputs[0]]
        loss = be.loss(y)
        t1 = time.perf_counter()
        grads = be.backward()
        t2 = time.perf_counter()
        for k, gk in grads.items():  # Adam (optim.py will own this)
            m[k] = betas[0] * m[k] + (1 - betas[0]) * gk
            v[k] = betas[1] * v[k] + (1 - betas[1]) * gk * gk
            mhat, vhat = m[k] / (1 - betas[0] ** (step + 1)), v[k] / (1 - betas[1] ** (step + 1))
            be.weights[k] -= lr * mhat / (np.sqrt(vhat) + eps)
        losses.append(loss)
        acc = float(np.mean(np.argmax(logits, 1) == y))
        table.add_row(str(step + 1), f"{loss:.4f}", f"{acc:.2%}", f"{(t1 - t0) * 1e3:.0f}", f"{(t2 - t1) * 1e3:.0f}")
    out.print(f"inference, batch {batch}: {infer_ms:.0f} ms ({batch / infer_ms * 1e3:.0f} img/s)")
    out.print(table)

    by_op: dict[str, list[float]] = {}
    for n in g.nodes:
        f, b = be.timings.get(n.name, (0.0, 0.0))
        acc_t = by_op.setdefault(n.op, [0.0, 0.0, 0])
        acc_t[0] += f
        acc_t[1] += b
        acc_t[2] += 1
    total = sum(v[0] + v[1] for v in by_op.values()) or 1.0
    t = Table("op", "nodes", "forward ms", "backward ms", "share", title="time by op (all passes)")
    for op, (f, b, n) in sorted(by_op.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        t.add_row(op, str(n), f"{f * 1e3:.0f}", f"{b * 1e3:.0f}", f"{(f + b) / total:.0%}")
    out.print(t)
    return {"losses": losses, "infer_ms": infer_ms}
