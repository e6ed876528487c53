"""Measure a model on a dataset split: the computation `thomas eval` runs on the device.

    ds = open_dataset("data/digits")
    res = evaluate(load_package("models/m"), ds.val, batch=64, backend="auto")
    res.acc, res.top_k_acc, res.loss          # top-1, top-k, mean cross-entropy
    res.confusion                             # (K, K) int64, rows = true class, columns = predicted
    python -m device_agent eval MODEL DATA OUT.json [--split val|train|test] [--batch 64] [--top 5]
                                [--backend auto|opencl|numpy]      # hello, progress..., eval_report | error

Eval mode: no dropout, BatchNorm with its running statistics. Images go through the data pipeline as
training's own evaluation reads them (Split.batches in row order, no augmentation, the model's
preprocess). The loss reads heads.loss_output(graph) — the logits before a final Softmax/LogSoftmax —
and is computed in float64: loss_i = logsumexp(z_i) - z_i[y_i]. Predictions are argmax(z) (the first
index on a tie, as in training); top-k counts a sample when its class is among the k first indices of a
stable descending sort. Per-class precision = TP / predicted, recall = TP / support; NaN (null in JSON)
where the denominator is 0, and the macro means over all K classes skip those (sklearn's
zero_division=nan).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numpy as np

from .errors import DataError, InputError, JobError
from .model.graph import Graph
from .model.heads import loss_graph, loss_output
from .model.heads import num_classes as logits_width

SPLITS = ("train", "val", "test")
PROGRESS_S = 10.0        # the longest the agent stays silent between `progress` events (after the first batch)


@dataclass
class EvalResult:
    """What one evaluation counted; every rate is derived from these counts."""
    split: str
    count: int                  # samples
    top_k: int                  # k of top_k_acc (min(--top, K))
    correct: int                # top-1
    correct_k: int              # top-k
    loss_sum: float             # sum over samples of the float64 cross-entropy of the logits
    confusion: np.ndarray       # (K, K) int64, rows = true class, columns = predicted
    loss_tensor: str            # the tensor the loss read
    backend: str                # numpy | opencl: what ran
    ms: float                   # wall time of the whole pass (data pipeline included)

    @property
    def acc(self) -> float:
        return self.correct / self.count

    @property
    def top_k_acc(self) -> float:
        return self.correct_k / self.count

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count

    @property
    def support(self) -> np.ndarray:
        """(K,) samples of each true class."""
        return self.confusion.sum(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """(K,) samples predicted as each class."""
        return self.confusion.sum(axis=0)

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.predicted

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.support

    @property
    def f1(self) -> np.ndarray:
        """2·TP / (support + predicted): 0 for a class missed or only ever predicted wrongly."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * np.diag(self.confusion) / (self.support + self.predicted)

    def to_dict(self, classes: list[str]) -> dict:
        """The JSON report (eval.json): summary, per-class rows, the confusion matrix."""
        def num(v):
            return None if not np.isfinite(v) else float(v)

        p, r, f = self.precision, self.recall, self.f1
        per_class = [{"index": i, "class": c, "precision": num(p[i]), "recall": num(r[i]), "f1": num(f[i]),
                      "support": int(self.support[i]), "predicted": int(self.predicted[i])}
                     for i, c in enumerate(classes)]
        macro = {k: num(np.nanmean(v)) if np.isfinite(v).any() else None
                 for k, v in (("precision", p), ("recall", r), ("f1", f))}
        return {"split": self.split, "count": self.count, "classes": list(classes), "acc": self.acc,
                "top_k": self.top_k, "top_k_acc": self.top_k_acc, "loss": num(self.loss),
                "loss_tensor": self.loss_tensor, "macro": macro, "per_class": per_class,
                "confusion": self.confusion.tolist(), "backend": self.backend, "ms": round(self.ms, 1),
                "img_s": round(self.count / max(self.ms, 1e-9) * 1e3, 1)}


def pick_split(ds, name: str):
    """The Split `name` of an open dataset; a one-line error when it has none (or it is empty)."""
    if name not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}, got {name!r}")
    part = ds.splits.get(name)              # no "test" key when the dataset has no test split
    if part is None or len(part) == 0:
        how = {"val": "it was pushed with --val 0 and no val/ split",
               "test": "push it from a folder with test/ or an .npz with x_test, y_test",
               "train": "it holds no training images"}[name]
        raise DataError(f"{ds.path}: the dataset has no '{name}' split ({how})")
    return part


def check_fit(graph: Graph, ds, model: str) -> None:
    """DataError (one line naming the model and the dataset) unless the model reads the dataset's images
    (channels, H×W) and predicts exactly its classes."""
    if len(graph.inputs) != 1:
        raise JobError(f"model {model} has {len(graph.inputs)} inputs; eval needs exactly one image input")
    shapes = graph.infer_shapes(batch=1)
    ds.check_input(shapes[graph.inputs[0].name], f"model {model}")
    width = logits_width(graph)
    if width != len(ds.classes):
        raise DataError(f"model {model} predicts {width} classes, dataset {ds.path} has {len(ds.classes)} "
                        f"({', '.join(ds.classes[:4])}{', ...' if len(ds.classes) > 4 else ''})")


def evaluate(graph: Graph, dataset_split, batch: int = 64, backend: str = "auto", top: int = 5,
             num_classes: int | None = None, progress=None) -> EvalResult:
    """Run `graph` over every image of `dataset_split` (a data.Split) in eval mode and count.
    backend: numpy, opencl or auto (OpenCL when usable); num_classes: K (default: the logits' width);
    progress(done, total) is called after each batch. A model with a fixed batch size runs that batch,
    the last one padded with copies of its last image (whose outputs are dropped)."""
    from .engine import engine_classes, lookahead, resolve_backend

    if batch < 1 or top < 1:
        raise InputError(f"batch and top must be >= 1, got {batch} and {top}")
    n = len(dataset_split)
    if n == 0:
        raise DataError(f"split '{dataset_split.name}' holds no images")
    g = loss_graph(graph)           # up to the logits (before a final Softmax), flattened to (N, K)
    tensor = g.outputs[0]
    spec = g.inputs[0]
    fixed = spec.shape[0]
    run_batch = batch if fixed is None else int(fixed)
    k_cls = num_classes or int(g.infer_shapes(batch=1)[tensor][1])
    k = min(top, k_cls)
    used = resolve_backend(backend, graph=g)
    engine = engine_classes(used)[1](g)
    cm = np.zeros((k_cls, k_cls), np.int64)
    correct = correct_k = 0
    loss_sum, done = 0.0, 0
    t0 = time.perf_counter()
    def padded(batches):     # a fixed batch size: the last batch padded with copies of its last image
        for x, y, _ in batches:
            b = len(y)
            yield (np.concatenate([x, np.repeat(x[-1:], run_batch - b, axis=0)]) if b < run_batch and fixed is not None
                   else x), y
    batches = padded(dataset_split.batches(run_batch, shuffle=False, preprocess=spec.preprocess))
    for (x, y), ahead in lookahead(batches):
        b = len(y)
        # the engine may make the next batch and upload it (ahead: its x) while this one runs
        z = np.asarray(engine.forward(x, ahead=lambda a=ahead: (a() or (None,))[0])[tensor])
        z = z[:b].reshape(b, -1).astype(np.float64)
        if z.shape[1] != k_cls:
            raise DataError(f"model '{graph.name}' gives {z.shape[1]} scores per image, the dataset has "
                            f"{k_cls} classes")
        order = np.argsort(-z, axis=1, kind="stable")[:, :k]
        pred = order[:, 0]
        np.add.at(cm, (y, pred), 1)
        correct += int(np.count_nonzero(pred == y))
        correct_k += int(np.count_nonzero((order == y[:, None]).any(axis=1)))
        with np.errstate(over="ignore", invalid="ignore"):
            m = z.max(axis=1)
            lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
            loss_sum += float((lse - z[np.arange(b), y]).sum())
        done += b
        if progress is not None:
            progress(done, n)
    return EvalResult(dataset_split.name, n, k, correct, correct_k, loss_sum, cm, loss_output(graph), used,
                      (time.perf_counter() - t0) * 1e3)


def labels_match(labels, classes) -> bool | None:
    """True: the model's labels are the dataset's classes in the same order; False: they name some of
    them in another order (output i is not class i: a likely mix-up); None: nothing to compare (no
    labels, or generic ones such as class_0 of a head never trained on these classes)."""
    if not labels:
        return None
    if list(labels) == list(classes):
        return True
    return False if set(labels) & set(classes) else None


def compute_device(backend: str) -> str:
    """Where a backend computes, in words: the OpenCL device, or this CPU."""
    if backend == "opencl":
        from .backends.opencl.runtime import shared_runtime

        return f"{shared_runtime().device.name.strip()} (OpenCL)"
    return f"{platform.machine() or 'cpu'} CPU, {os.cpu_count() or 1} cores (numpy)"


# ============================================================================ agent entry point
USAGE = ("usage: python -m device_agent eval MODEL DATA OUT.json [--split val|train|test] [--batch N] "
         "[--top K] [--backend auto|opencl|numpy]")


def _parse(args: list[str]) -> tuple[list[str], dict]:
    pos, opts = [], {"--split": "val", "--batch": "64", "--top": "5", "--backend": "auto"}
    it = iter(args)
    for a in it:
        if a in opts:
            opts[a] = next(it, "")
        elif a.startswith("--"):
            raise InputError(f"eval: unknown option {a!r}; {USAGE}")
        else:
            pos.append(a)
    if len(pos) != 3:
        raise InputError(USAGE)
    for k in ("--batch", "--top"):
        if not opts[k].isdigit() or int(opts[k]) < 1:
            raise InputError(f"eval {k} must be an integer >= 1, got {opts[k]!r}")
    if opts["--backend"] not in ("auto", "opencl", "numpy"):
        raise InputError(f"eval --backend must be auto, opencl or numpy, got {opts['--backend']!r}")
    if opts["--split"] not in SPLITS:
        raise InputError(f"eval --split must be one of {', '.join(SPLITS)}, got {opts['--split']!r}")
    return pos, opts


def main(args: list[str], emit) -> int:
    """eval MODEL DATA OUT.json [...]: the report goes to OUT.json (atomically), the summary to an
    `eval_report` event; `progress` events (phase "eval", every tenth of the split and at least every
    PROGRESS_S) keep the host's watchdog fed on long splits.
    MODEL, DATA and OUT are paths relative to the device root (the agent's working directory), already
    confined to it by __main__ (confine.confine_call)."""
    import json
    from pathlib import Path

    from .training.data import open_dataset
    from .engine import resolve_backend
    from .fsutil import atomic_write
    from .model.graph import load_package
    from .protocol import EvalReportEvent, ProgressEvent

    (model, data, out), opts = _parse(args)      # __main__ confined the paths to the device root (confine.py)
    ds = open_dataset(data)
    part = pick_split(ds, opts["--split"])
    graph = load_package(model)
    check_fit(graph, ds, f"'{graph.name}' ({model})")
    try:
        backend = resolve_backend(opts["--backend"], graph=graph)
    except JobError:
        raise InputError("eval --backend opencl: no OpenCL device is usable here (pyopencl, a device or the "
                         "OpenCL engines are missing); use numpy or auto") from None
    shown = [0, time.monotonic()]

    def progress(done: int, total: int) -> None:
        # every tenth of the split, and at least every PROGRESS_S (a slow phone must not starve the watchdog)
        if done == total or done - shown[0] >= total / 10 or time.monotonic() - shown[1] >= PROGRESS_S:
            shown[:] = [done, time.monotonic()]
            emit(ProgressEvent("eval", done, total))
    res = evaluate(graph, part, int(opts["--batch"]), backend, int(opts["--top"]), len(ds.classes), progress)
    doc = dict(res.to_dict(ds.classes), model=model, model_name=graph.name, data=data,
               device=compute_device(res.backend), batch=int(opts["--batch"]),
               labels_match=labels_match(graph.labels, ds.classes))
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda f: f.write((json.dumps(doc) + "\n").encode()))
    emit(EvalReportEvent(model, data, res.split, res.count, len(ds.classes), res.acc, res.top_k, res.top_k_acc,
                         doc["loss"], res.loss_tensor, doc["ms"], doc["img_s"], res.backend, doc["device"], out))
    return 0
