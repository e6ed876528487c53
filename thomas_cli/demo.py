"""`thomas demo`: the main job on this machine, through the device agent's training loop.

scikit-learn's digits (real 8x8 scans, resized to 32x32; no download) are written in the device
dataset format under $THOMAS_HOME/demo/data: digits 0-4 and digits 5-9, 80/20 train/val.
A MobileNetV2 (width 0.5, 32x32) is trained from scratch on 0-4, then that model is fine-tuned on
5-9 with a new 5-class head in three stages: last layer, last 3 layers, all layers. The table
compares the stages: val accuracy, time per epoch, peak memory, per backend.

It runs through the CLI's own machinery on the local device (or the device the global options
name, e.g. `thomas -s SERIAL demo`): the model and both datasets are pushed like `thomas push-model` /
`push-data` do, each stage is a `thomas finetune` run (agent payload, handshake, streamed events,
watchdog), mirrored to $THOMAS_HOME/runs/<id>/ and listed by `thomas runs list`.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from device_agent.errors import ThomasError

from device_agent.protocol import CacheEvent, DoneEvent, EpochEvent, Event, PlanEvent, StepEvent

from . import zoo
from .app import err, out
from .deploy import push_arrays, push_model
from .device import Session, Target, open_transport
from .runs import new_run, run_job

SIZE, WIDTH = 32, 0.5

# The recipes (the parity test trains the same ones in PyTorch: tests/test_train_parity.py).
RECIPES: dict[str, dict] = {
    "scratch": dict(layers="all", init="scratch", epochs=8, batch=32, optimizer="adam", lr=3e-3,
                    schedule="cosine"),
    "last": dict(layers="last", epochs=20, batch=32, optimizer="sgd", lr=0.1, momentum=0.9, schedule="cosine"),
    "N=3": dict(layers=3, epochs=10, batch=32, optimizer="adam", lr=0.01, schedule="cosine"),
    "all": dict(layers="all", epochs=5, batch=32, optimizer="adam", lr=1e-3, schedule="cosine"),
}
FINE_TUNE = ("last", "N=3", "all")


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


@dataclass
class StageResult:
    stage: str
    backend: str
    data: str
    epochs: int = 0
    val_acc: float | None = None
    epoch_s: list = field(default_factory=list)
    peak: int = 0
    cache: str = "-"
    total_s: float = 0.0
    final: str = ""


def prepare(s: Session) -> tuple[dict, dict]:
    """Push the two datasets and the untrained model; returns ({name: data meta}, model meta)."""
    imgs, labels = digits_dataset()
    data = {}
    for name, lo in (("digits0-4", 0), ("digits5-9", 5)):
        sel = (labels >= lo) & (labels < lo + 5)
        data[name] = push_arrays(s, imgs[sel], labels[sel] - lo, [str(d) for d in range(lo, lo + 5)], name,
                                 val=0.2, seed=0, source="scikit-learn digits")
    g = zoo.build("mobilenet_v2", num_classes=5, size=SIZE, width=WIDTH, seed=0)
    model = push_model(s, g, "demo_mobilenet_v2_w05", source="zoo mobilenet_v2 width 0.5")
    return data, model


def run_stage(s: Session, stage: str, backend: str, model: dict, data: dict, base_run: str | None,
              progress: Progress | None) -> StageResult:
    fields = dict(RECIPES[stage], backend=backend)
    if stage != "scratch":
        fields["num_classes"] = 5          # a fresh 5-class head for digits 5-9
    rec = new_run(s, model, data, fields)
    if base_run:                           # fine-tune the scratch run's final model, on the device
        rec["job"]["model"] = f"runs/{base_run}/final"
        rec["model"] = f"{base_run}/final"
    res = StageResult(stage, backend, data["name"], rec["job"]["epochs"])
    task = progress.add_task(f"{stage:>7} {backend}", total=None, info="") if progress else None

    def on_event(ev: Event) -> None:
        if isinstance(ev, PlanEvent) and progress:
            progress.update(task, total=ev.total_steps)
        elif isinstance(ev, StepEvent) and progress:
            progress.update(task, completed=ev.step, info=f"epoch {ev.epoch} loss {ev.loss:.3f}")
        elif isinstance(ev, EpochEvent):
            res.epoch_s.append(ev.ms / 1e3)
        elif isinstance(ev, CacheEvent) and ev.split == "train" and ev.epoch == 1:
            res.cache = "hit" if ev.hit else "miss"
        elif isinstance(ev, DoneEvent):
            res.val_acc, res.final = ev.val_acc, rec["id"]
            mem = ev.memory or {}
            res.peak = mem.get("peak", 0) + mem.get("prefix", 0)

    t0 = time.perf_counter()
    run_job(s, rec, on_event=on_event)
    res.total_s = time.perf_counter() - t0
    if progress:
        progress.update(task, info=f"val {res.val_acc:.1%}")
    return res


def run_demo(backends=("numpy",), target: Target | None = None) -> list[StageResult]:
    """Every stage on every backend (a backend = one more row per stage in the table), on the device the
    target names (the global options; the local device unless one is named)."""
    tgt = target or Target()
    target = tgt if tgt.device != "auto" else Target(device="local", root=tgt.root, python=tgt.python)
    s = Session(open_transport(target), note=lambda m: err.print(m, highlight=False))
    t0 = time.perf_counter()
    s.ensure_agent()
    data, model = prepare(s)
    out.print(f"[bold]THOMAS demo[/]: MobileNetV2 (width {WIDTH}, {SIZE}x{SIZE}) on scikit-learn's digits: "
              f"from scratch on 0-4, then fine-tuned on 5-9 (new 5-class head), on the {s.t.kind} device "
              f"{s.t.serial} ({s.t.root}); runs are listed by `thomas runs list`")
    results = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err,
                        disable=not sys.stderr.isatty())
    with progress:
        for backend in backends:
            base = run_stage(s, "scratch", backend, model, data["digits0-4"], None, progress)
            results.append(base)
            _line(base)
            for stage in FINE_TUNE:
                r = run_stage(s, stage, backend, model, data["digits5-9"], base.final, progress)
                results.append(r)
                _line(r)
    out.print(table(results))
    out.print(f"total {time.perf_counter() - t0:.0f} s. 'last' and 'N=3' run the frozen layers once into the "
              f"feature cache (first epoch), later epochs and runs only train the head.")
    return results


def _line(r: StageResult) -> None:
    err.print(f"{r.stage} ({r.backend}): val {r.val_acc:.1%} after {r.epochs} epochs, {r.total_s:.1f} s",
              highlight=False)


def table(results: list[StageResult]) -> Table:
    t = Table(title=f"training stages, MobileNetV2 w{WIDTH} {SIZE}x{SIZE}", box=box.SIMPLE_HEAD, padding=0,
              collapse_padding=True, pad_edge=False)
    for name in ("stage", "digits", "backend", "epochs", "val acc", "s/epoch", "1st epoch", "cache",
                 "peak MiB", "total s"):
        t.add_column(name, no_wrap=True, justify="left" if name in ("stage", "digits", "backend", "cache") else "right")
    for r in results:
        later = r.epoch_s[1:] or r.epoch_s
        t.add_row(r.stage, r.data.replace("digits", ""), r.backend, str(r.epochs),
                  f"{r.val_acc:.1%}" if r.val_acc is not None else "-", f"{statistics.median(later):.2f}",
                  f"{r.epoch_s[0]:.2f}" if r.epoch_s else "-", r.cache, f"{r.peak / 2 ** 20:.1f}", f"{r.total_s:.1f}")
    return t
