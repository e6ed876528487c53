"""The PNG of one run (matplotlib, Agg), for `thomas report RUN [-o report.png]` (commands/report.py).

    render("20260101-120000-ab12", Path("report.png"))

A training run: loss and accuracy per epoch (train and val) from its metrics.jsonl (else the `epoch`
events of events.jsonl), and its val confusion matrix (confusion.json) beside them. A bench run (`thomas
bench`): per-layer forward/backward time bars, one panel per backend. An eval run (`thomas eval`): its
confusion matrix and per-class precision/recall. A fleet run (`thomas fleet finetune`): accuracy per round (the devices' train/val, weighted by
examples, and the central evaluation) and each device's val accuracy per round. A run with none of
these is an error that says so.

Confusion matrices: rows = true class, columns = predicted; each cell is coloured by its share of the
true class (the row sums to 1: the diagonal is the recall), counts written in the cells up to
ANNOTATE_MAX classes, class names on the axes up to NAMES_MAX.
"""
from __future__ import annotations

import json
from pathlib import Path

from device_agent.errors import ThomasError
from device_agent.protocol import EpochEvent

from . import runs, store
from .bench import BenchResult

ANNOTATE_MAX = 20
NAMES_MAX = 40


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue            # a torn last line of an interrupted run
        if isinstance(d, dict):
            rows.append(d)
    return rows


def epoch_metrics(run_id: str) -> list[dict]:
    d = store.run_dir(run_id)
    rows = [r for r in _jsonl(d / "metrics.jsonl") if "epoch" in r]
    if not rows:
        rows = [e.to_dict() for e in runs.read_events(run_id) if isinstance(e, EpochEvent)]
    by_epoch = {r["epoch"]: r for r in rows}          # a resumed run may repeat an epoch: the last wins
    return [by_epoch[k] for k in sorted(by_epoch)]


def render(run_id: str, dest: Path) -> Path:
    """Write the PNG of run `run_id` to dest; ThomasError when the run has nothing to plot."""
    rec = runs.load_run(run_id)
    if rec.get("kind") == "eval":
        return render_eval(run_id, rec, dest)
    if rec.get("kind") == "fleet":
        return render_fleet(run_id, dest)
    doc = runs.read_result(run_id, "bench.json")
    bench = BenchResult.from_json(doc) if doc else None
    metrics = epoch_metrics(run_id)
    confusion = _confusion_doc(store.run_dir(run_id) / "confusion.json") if metrics else None
    if not metrics and not (bench and bench.layers):
        raise ThomasError(f"run {run_id} has no metrics to plot (no epoch finished: no metrics.jsonl or epoch "
                          f"events, and it is not a bench run)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({e.backend for e in bench.layers}, key=("opencl", "numpy").index) if bench else []
    panels = (2 if metrics else 0) + len(backends) + (confusion is not None)
    n_layers = max((sum(e.backend == b for e in bench.layers) for b in backends), default=0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, max(4.5, 0.14 * n_layers)), squeeze=False)
    axes = list(axes[0])
    title = f"run {run_id}: {rec.get('model')}" + (f" on {rec['data']}" if rec.get("data") else "") + \
        (f" ({rec['stage']})" if rec.get("stage") else "")
    if metrics:
        ep = [m["epoch"] for m in metrics]
        for ax, key, label in ((axes.pop(0), "loss", "loss"), (axes.pop(0), "acc", "accuracy")):
            for split, style in (("train", "o-"), ("val", "s--")):
                ys = [m.get(f"{split}_{key}") for m in metrics]
                pts = [(e, y) for e, y in zip(ep, ys) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=split)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(label)
            ax.grid(alpha=0.3)
            ax.legend()
    if confusion is not None:
        draw_confusion(axes.pop(0), confusion["matrix"], confusion["classes"],
                       f"{confusion.get('split', 'val')} confusion after the last epoch")
    if bench:
        for backend in backends:
            rows = [e for e in bench.layers if e.backend == backend]
            ax = axes.pop(0)
            ys = range(len(rows))
            fw = [e.fw_ms for e in rows]
            bw = [e.bw_ms for e in rows]
            ax.barh(ys, fw, label="forward")
            ax.barh(ys, bw, left=fw, label="backward")
            ax.set_yticks(list(ys), [e.layer for e in rows], fontsize=7)
            r = bench.summary.results.get(backend, {})
            ax.set_title(f"{backend}: {r.get('ms_step', 0):.1f} ms/step" + (f" ({r['device']})" if r.get("device") else ""))
            ax.set_xlabel("ms per layer")
            ax.set_ylim(len(rows) - 0.5, -0.5)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


# ============================================================================ confusion matrices
def _confusion_doc(path: Path) -> dict | None:
    """confusion.json of a training run ({"split", "classes", "matrix"}), None when absent or malformed."""
    doc = store.read_json(path) if path.is_file() else None
    if not isinstance(doc, dict):
        return None
    m, names = doc.get("matrix"), doc.get("classes")
    if not isinstance(m, list) or not isinstance(names, list) or len(m) != len(names) or not names:
        return None
    return doc


def draw_confusion(ax, matrix, classes: list, title: str) -> None:
    """One confusion matrix on `ax`: rows = true class, columns = predicted, row-normalised colours."""
    import numpy as np

    cm = np.asarray(matrix, dtype=np.int64)
    k = len(classes)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= ANNOTATE_MAX:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if k <= 10 else 6,
                            color="white" if frac[i, j] > 0.5 else "black")
    if k <= NAMES_MAX:
        names = [str(c)[:12] for c in classes]
        ax.set_xticks(range(k), names, rotation=90 if k > 8 else 45, ha="center" if k > 8 else "right",
                      fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}\n{cm.sum()} images, {k} classes, top-1 {acc:.3f}", fontsize=10)


def render_eval(run_id: str, rec: dict, dest: Path) -> Path:
    """The PNG of an eval run: the confusion matrix, and per-class precision/recall bars (K <= NAMES_MAX)."""
    doc = runs.read_result(run_id, "eval.json")
    if not isinstance(doc, dict) or "confusion" not in doc:
        raise ThomasError(f"run {run_id} is an eval run without its report eval.json ({rec.get('status')}"
                          f"{': ' + rec['error'] if rec.get('error') else ''})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(doc["classes"])
    bars = k <= NAMES_MAX
    side = min(max(5.0, 0.32 * k + 2), 14.0)
    fig, axes = plt.subplots(1, 2 if bars else 1, figsize=(side + (5 if bars else 0), side), squeeze=False,
                             gridspec_kw={"width_ratios": [side, 5]} if bars else None)
    which = f" ({doc['which']}/)" if doc.get("which") else ""
    draw_confusion(axes[0][0], doc["confusion"], doc["classes"], f"{doc['split']} split")
    if bars:
        ax = axes[0][1]
        ys = range(k)
        nan = float("nan")
        ax.barh([y - 0.2 for y in ys], [r["precision"] if r["precision"] is not None else nan
                                        for r in doc["per_class"]], height=0.4, label="precision")
        ax.barh([y + 0.2 for y in ys], [r["recall"] if r["recall"] is not None else nan
                                        for r in doc["per_class"]], height=0.4, label="recall")
        ax.set_yticks(list(ys), [str(c)[:12] for c in doc["classes"]], fontsize=8)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("per class")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    loss = f", loss {doc['loss']:.4f}" if doc.get("loss") is not None else ""
    fig.suptitle(f"eval {run_id}: {rec.get('model')}{which} on {rec.get('data')}/{doc['split']}: top-1 "
                 f"{doc['acc']:.3f}, top-{doc['top_k']} {doc['top_k_acc']:.3f}{loss}", fontsize=11)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


# ============================================================================ fleet runs
def render_fleet(run_id: str, dest: Path) -> Path:
    """Accuracy per round (aggregated, central) and per device, from the run's fleet.json."""
    doc = runs.read_result(run_id, "fleet.json") or {}
    hist = doc.get("history") or []
    if not hist:
        raise ThomasError(f"fleet run {run_id} has no completed round to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axd) = plt.subplots(1, 2, figsize=(12, 4.5))
    rounds = [e["round"] for e in hist]
    for key, style, label in (("train_acc", "o-", "train (devices)"), ("val_acc", "s--", "val (devices)"),
                              ("central_acc", "^-", "central")):
        pts = [(r, e.get(key)) for r, e in zip(rounds, hist) if e.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_title("accuracy per round")
    axd.set_title("val accuracy per device (its local run)")
    devices = doc.get("devices") or []
    for i, d in enumerate(devices):
        pts = [(e["round"], r["val_acc"]) for e in hist for r in e.get("per_device", [])
               if r.get("device") == i and r.get("val_acc") is not None]
        if pts:
            axd.plot(*zip(*pts), "o-", label=f"{i}: {d.get('serial')}")
    for a in (ax, axd):
        a.set_xlabel("round")
        a.set_ylabel("accuracy")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"fleet run {run_id}: {doc.get('model')} on {doc.get('data')} ({doc.get('strategy')}, "
                 f"{len(devices)} devices)")
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
