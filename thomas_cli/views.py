"""How results look on the terminal, shared by the commands that show them: a training run's live view
and epoch table, bench tables, eval reports, doctor's checks, a push's summary line. Reads typed events
(device_agent.protocol) and the result documents (bench.json, eval.json); prints nothing itself but
through the consoles of app.py.

    view = RunView(as_json=False)           # events -> a progress line on stderr (TTY) or epoch lines
    with view:
        done = runs.run_job(s, rec, on_event=view)
    show_done(view, rec, done)              # the epoch table and where final/ and best/ are
"""
from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from device_agent.protocol import (DoneEvent, EpochEvent, Event, PlanEvent, ProgressEvent, StepEvent,
                                   TelemetryEvent)

from . import store
from .app import err, out
from .bench import BenchResult

MATRIX_MAX = 20          # the full confusion matrix up to this many classes, else the top confusions
PER_CLASS_MAX = 50       # per-class rows shown (the lowest recall first beyond this; --json has all)


def _f(v, fmt: str = ".2f", none: str = "") -> str:
    return none if v is None else format(v, fmt)


# ============================================================================ a training run
class RunView:
    """Turns events into a rich progress line on stderr (TTY), plain epoch lines otherwise, or
    passes them through as JSONL (--json)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.tty = err.is_terminal and not as_json
        self.plan: PlanEvent | None = None
        self.header: str | None = None        # the run's first line, shown with its plan (see finetune)
        self.epochs: list[EpochEvent] = []
        self.img_s: float | None = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=err,
                                 disable=not self.tty, transient=False)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, ev: Event) -> None:
        if self.as_json:
            sys.stdout.write(ev.to_json() + "\n")
            sys.stdout.flush()
            return
        if isinstance(ev, PlanEvent):
            self._plan(ev)
        elif isinstance(ev, StepEvent) and self.task is not None:
            rate = self.plan.batch * 1000.0 / ev.ms if ev.ms else None
            if rate:
                self.img_s = rate if self.img_s is None else 0.8 * self.img_s + 0.2 * rate
            self.progress.update(self.task, completed=ev.step, description=f"epoch {ev.epoch}/{self.plan.epochs}",
                                 stats=f"loss {ev.loss:.4f}  acc {ev.acc:.3f}  {self.img_s or 0:.0f} img/s")
        elif isinstance(ev, ProgressEvent) and self.task is not None:
            self.progress.update(self.task, stats=f"{ev.phase} {ev.done}/{ev.total}")
        elif isinstance(ev, EpochEvent):
            self.epochs.append(ev)
            if not self.tty:
                err.print(f"epoch {ev.epoch}: train loss {ev.train_loss:.4f} acc {ev.train_acc:.3f}"
                          + (f", val loss {ev.val_loss:.4f} acc {ev.val_acc:.3f}" if ev.val_acc is not None else "")
                          + f", {ev.img_s or 0:.0f} img/s", highlight=False)
        elif isinstance(ev, TelemetryEvent) and not self.tty:
            parts = [f"{v:.1f} J {name}" for v, name in ((ev.battery_j, "battery"), (ev.rapl_j, "RAPL"))
                     if v is not None]
            if ev.temp_max is not None:
                parts.append(f"max {ev.temp_max:.0f} °C")
            if parts:
                err.print(f"epoch {ev.epoch} energy: " + ", ".join(parts), highlight=False)

    def _plan(self, p: PlanEvent) -> None:
        self.plan = p
        if self.header:
            err.print(self.header, highlight=False)
        err.print(f"[bold]{p.stage}[/] on {p.backend} ({p.dtype}): {p.trainable_params:,} trainable / "
                  f"{p.frozen_params:,} frozen parameters, {p.train} train / {p.val} val images, "
                  f"{p.classes} classes, {p.epochs} epochs x {p.steps_per_epoch} steps of {p.batch}"
                  + (", feature cache" if p.feature_cache else "")
                  + (f", resumed at step {p.start_step}" if p.start_step else ""), highlight=False)
        self.task = self.progress.add_task(f"epoch 1/{p.epochs}", total=p.total_steps, completed=p.start_step or 0,
                                           stats="")

    def table(self, rec: dict, done: DoneEvent) -> Table:
        t = Table("epoch", "train loss", "train acc", "val loss", "val acc", "img/s", "time",
                  title=f"run {rec['id']}: {rec['model']} on {rec['data']} ({rec.get('stage', '')})")
        for e in self.epochs:
            best = " *" if e.epoch == done.best_epoch else ""      # the epoch best/ holds
            t.add_row(f"{e.epoch}{best}", _f(e.train_loss, ".4f"), _f(e.train_acc, ".3f"), _f(e.val_loss, ".4f"),
                      _f(e.val_acc, ".3f"), _f(e.img_s, ".0f"), f"{e.ms / 1000:.1f} s")
        return t


def show_done(view: RunView, rec: dict, done: DoneEvent) -> None:
    if view.as_json:
        return
    out.print(view.table(rec, done))
    host = store.run_dir(rec["id"])
    out.print(f"done in {done.ms / 1000:.1f} s: train acc {done.train_acc:.3f}"
              + (f", val acc {done.val_acc:.3f}" if done.val_acc is not None else "")
              + f"; final model and metrics in {host}", highlight=False, soft_wrap=True)
    if done.stopped_early:
        out.print(f"stopped early after epoch {done.epochs}: no better {done.select} for "
                  f"{done.epochs - done.best_epoch} epoch(s) (patience)", highlight=False, soft_wrap=True)
    if done.best_epoch is not None and (host / "best").is_dir():
        out.print(f"best: epoch {done.best_epoch} ({done.select} {done.best_metric:.4f}, final "
                  f"{done.final_metric:.4f}) in {host / 'best'}; thomas infer, eval and export use it "
                  f"(infer/export --which final: the last epoch's)", highlight=False, soft_wrap=True)


def epoch_table(epochs: list[EpochEvent]) -> Table:
    """`thomas runs show`: one row per epoch event of the mirror."""
    t = Table("epoch", "train loss", "train acc", "val loss", "val acc", "img/s", "time")
    for e in epochs:
        t.add_row(str(e.epoch), _f(e.train_loss, ".4f"), _f(e.train_acc, ".3f"), _f(e.val_loss, ".4f"),
                  _f(e.val_acc, ".3f"), _f(e.img_s, ".0f"), f"{(e.ms or 0) / 1000:.1f} s")
    return t


# ============================================================================ bench
def layer_table(results: list[tuple[str, BenchResult]], title: str) -> Table:
    """One row per layer; per column set (label, result): fw ms, bw ms, GFLOP/s, GB/s, share."""
    cols: list[tuple[str, dict]] = []   # (heading, layer -> event)
    order: list[str] = []
    for label, r in results:
        for backend in ("opencl", "numpy"):
            rows = {e.layer: e for e in r.layers if e.backend == backend}
            if rows or backend in r.summary.results:
                cols.append((f"{label}{backend}", rows))
            order += [k for k in rows if k not in order]
    t = Table("layer", "op", title=title)
    for head, _ in cols:
        for h in ("fw ms", "bw ms", "GFLOP/s", "GB/s", "%"):
            t.add_column(f"{head}\n{h}", justify="right")
    if len(cols) == 2:   # cpu: numpy time / OpenCL time; desktop: device time / desktop time
        t.add_column("speed-up" if len(results) == 1 else "device ÷\ndesktop", justify="right")
    for name in order:
        op = next((rows[name].op for _, rows in cols if name in rows), "")
        cells, tot = [], []
        for _, rows in cols:
            e = rows.get(name)
            if e is None:
                cells += [""] * 5
                tot.append(None)
                continue
            cells += [_f(e.fw_ms), _f(e.bw_ms), _f(e.gflops, ".1f"), _f(e.gbs, ".1f"), _f(100 * e.share, ".0f")]
            tot.append(e.fw_ms + e.bw_ms)
        if len(cols) == 2:
            cells.append(f"{tot[1] / tot[0]:.1f}x" if tot[0] and tot[1] else "")
        t.add_row(name, op, *cells)
    return t


def totals_table(results: list[tuple[str, BenchResult]]) -> Table:
    t = Table("backend", "device", "ms/step", "img/s", "peak memory", "params", "grads", "optimizer",
              "activations", "workspace", title="totals")
    mib = lambda v: "" if v is None else f"{v / 2**20:.1f} MiB"  # noqa: E731
    for label, r in results:
        for backend, v in r.summary.results.items():
            if "error" in v:
                t.add_row(f"{label}{backend}", "", f"[red]{v['error']}[/]")
                continue
            m = v.get("memory", {})
            where = v.get("device") or (f"{v.get('threads')} thread" if v.get("threads") else "")
            t.add_row(f"{label}{backend}", str(where), _f(v["ms_step"], ".1f"), _f(v["img_s"], ".1f"),
                      mib(m.get("peak")), mib(m.get("params")), mib(m.get("grads")), mib(m.get("optimizer")),
                      mib(m.get("activations")), mib(m.get("workspace")))
    return t


# ============================================================================ eval reports
def summary_table(doc: dict) -> Table:
    which = f" ({doc['which']}/)" if doc.get("which") else ""
    t = Table(show_header=False, title=f"eval {doc.get('id', '')}".strip())
    t.add_column(style="bold")
    t.add_column()
    mac = doc.get("macro") or {}
    f3 = lambda v: _f(v, ".3f", "—")  # noqa: E731
    rows = [("model", f"{doc.get('model_arg') or doc.get('model')}{which}: {doc.get('model_name', '')}"),
            ("data", f"{doc.get('dataset') or doc.get('data')} / {doc['split']}: {doc['count']} images, "
                     f"{len(doc['classes'])} classes"),
            ("top-1 accuracy", _f(doc["acc"], ".4f", "—")),
            (f"top-{doc['top_k']} accuracy", _f(doc["top_k_acc"], ".4f", "—")),
            ("mean loss", _f(doc["loss"], ".4f", "—") + f"  (cross-entropy of '{doc.get('loss_tensor')}')"),
            ("macro precision / recall / F1", f"{f3(mac.get('precision'))} / {f3(mac.get('recall'))} / "
                                              f"{f3(mac.get('f1'))}"),
            ("computed on", f"{doc.get('device')}, {doc.get('backend')} backend, batch {doc.get('batch')}: "
                            f"{doc['ms'] / 1e3:.2f} s, {doc.get('img_s', 0):.1f} img/s")]
    for k, v in rows:
        t.add_row(k, v)
    return t


def per_class_table(doc: dict) -> Table:
    rows = doc["per_class"]
    title = "per class"
    if len(rows) > PER_CLASS_MAX:
        rows = sorted(rows, key=lambda r: (r["recall"] is None, r["recall"] or 0.0))[:PER_CLASS_MAX]
        title = f"per class: the {PER_CLASS_MAX} lowest recalls of {len(doc['per_class'])} (--json has all)"
    t = Table("#", "class", "support", "predicted", "precision", "recall", "F1", title=title)
    f3 = lambda v: _f(v, ".3f", "—")  # noqa: E731
    for r in rows:
        t.add_row(str(r["index"]), r["class"], str(r["support"]), str(r["predicted"]), f3(r["precision"]),
                  f3(r["recall"]), f3(r["f1"]))
    return t


def confusion_table(doc: dict) -> Table:
    """The matrix (rows = true class, columns = predicted) up to MATRIX_MAX classes, else the largest
    off-diagonal cells."""
    cm, names = doc["confusion"], doc["classes"]
    k = len(names)
    if k > MATRIX_MAX:
        cells = sorted(((cm[i][j], i, j) for i in range(k) for j in range(k) if i != j and cm[i][j]),
                       reverse=True)[:15]
        t = Table("true", "predicted as", "count", "of its class", title=f"top confusions ({k} classes)")
        for n, i, j in cells:
            t.add_row(f"{i} {names[i]}", f"{j} {names[j]}", str(n), f"{n / max(sum(cm[i]), 1):.1%}")
        return t
    short = k <= 6 and all(len(nm) <= 6 for nm in names)     # else the columns are the rows' numbers
    t = Table(title="confusion (rows: true, columns: predicted)")
    t.add_column("true \\ pred", no_wrap=True)
    for j, nm in enumerate(names):
        t.add_column(nm if short else str(j), justify="right")
    for i, nm in enumerate(names):
        cells = [("[bold green]" if i == j else "[red]") + f"{v}[/]" if v else "[dim]·[/]"
                 for j, v in enumerate(cm[i])]
        t.add_row(f"{i} {nm}", *cells)
    return t


def show_report(doc: dict) -> None:
    out.print(summary_table(doc))
    out.print(per_class_table(doc))
    out.print(confusion_table(doc))
    if doc.get("labels_match") is False:
        err.print("[yellow]note:[/] the model's labels name the dataset's classes in another order; they are "
                  "matched by index (class i of the dataset is output i of the model)", highlight=False,
                  soft_wrap=True)


# ============================================================================ doctor, push
def doctor_table(res: dict, t) -> Table:
    """run_doctor's checks as the table `thomas doctor` prints (one row a check, with its fix)."""
    tb = Table("", "check", "value", "fix", title=f"thomas doctor: {t.serial} ({t.kind})")
    marks = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for c in res["checks"]:
        tb.add_row(marks[c["state"]], c["check"], c["value"], c["fix"])
    return tb


def data_line(res: dict, where: str) -> str:
    """The one-line summary of a push: counts, split and its source, classes, size, where."""
    what = "already on" if res["skipped"] else "pushed to"
    bad = f", {len(res['bad'])} unreadable skipped" if res["bad"] else ""
    test = f" / {res['test']} test" if res.get("test") else ""
    src = res.get("split_source", "")
    split = "split from the dataset" if src == "dataset" else f"split {src}" if src else ""
    size = res.get("size") or ""
    size = f"{size}x{size}" if isinstance(size, int) else size
    kind = {1: " gray", 3: " RGB"}.get(res.get("channels", 3), "")
    return (f"{res['name']}: {res['count']} images ({res['train']} train / {res['val']} val{test}{bad}), {split}, "
            f"{len(res['classes'])} classes, {size}{kind}: {what} {where} ({res['bytes'] / 2**20:.1f} MiB)")


# ============================================================================ fleet runs (thomas fleet, runs show)
def _opt(v, fmt: str) -> str:
    return "" if v is None or v != v else format(v, fmt)


def rounds_table(history: list[dict], title: str | None = None) -> Table:
    """One row per completed round (also `thomas runs show` of a fleet run); the central column only
    when the fleet has --central-data."""
    central = any(e.get("central_acc") is not None for e in history)
    t = Table(title=title)
    cols = ["round", "devices", "train loss", "train acc", "val loss", "val acc"] + (["central"] if central else [])
    for col in cols + ["MiB", "s"]:
        t.add_column(col, justify="left" if col == "devices" else "right")
    for e in history:
        failed = len(e.get("failed") or [])
        dev = f"{e.get('done', '?')}/{e.get('devices', '?')}" + (f" [red]{failed} failed[/]" if failed else "")
        row = [str(e["round"]), dev, _opt(e.get("train_loss"), ".4f"), _opt(e.get("train_acc"), ".3f"),
               _opt(e.get("val_loss"), ".4f"), _opt(e.get("val_acc"), ".3f")]
        row += [_opt(e.get("central_acc"), ".3f")] if central else []
        mib = None if e.get("bytes") is None else e["bytes"] / 2**20
        t.add_row(*row, _opt(mib, ".1f"), _opt(e.get("seconds"), ".1f"))
    return t


def device_table(history: list[dict]) -> Table:
    """Val accuracy of each device's local run, per round."""
    devs = sorted({r["device"] for e in history for r in e.get("per_device", [])})
    t = Table(title="val acc per device (after local training)")
    t.add_column("round", justify="right")
    for d in devs:
        t.add_column(f"device {d}", justify="right")
    for e in history:
        got = {r["device"]: r for r in e.get("per_device", [])}
        t.add_row(str(e["round"]), *[_opt(got[d].get("val_acc"), ".3f") if d in got else "[red]failed[/]"
                                     for d in devs])
    return t
