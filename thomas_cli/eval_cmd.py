"""`thomas eval MODEL --data NAME`: accuracy, loss, per-class precision/recall and the confusion matrix
of a model on a dataset split, computed on the device (OpenCL when it has it).

    thomas eval ./my_package --data flowers                 # zero-shot, before a fine-tune (pushes the package)
    thomas eval 20260101-120000-ab12 --data flowers --split test   # a run's best/ model (else final/)
    thomas --device local eval mnv2 --data digits --json    # a model already on the device

MODEL is a package directory (pushed as `thomas push-model` would), a run (its id or folder: best/ when it
has one, else final/; the run's own copy is used in place on its device) or a model on the device.
Each eval is a run record (`thomas runs list/show`, kind "eval"): events.jsonl and eval.json (the whole
report); `thomas report RUN` draws its confusion matrix.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from device_agent.errors import DataError, PackageError, ThomasError
from device_agent.evaluate import SPLITS
from device_agent.graph import MODEL_JSON, Graph, load_package
from device_agent.limits import parse_json

from . import store
from .app import app, err, guarded, out, print_json
from .session import RunFailed, Session, console_note, open_transport, pull_run

BACKENDS = ("auto", "opencl", "numpy")
MATRIX_MAX = 20          # the full confusion matrix up to this many classes, else the top confusions
PER_CLASS_MAX = 50       # per-class rows shown (the lowest recall first beyond this; --json has all)
USER_CODES = ("bad_data", "bad_input", "bad_model", "bad_job")   # the agent refused the input: no record kept


# ============================================================================ which model
def _run_dir(model: str) -> tuple[str | None, Path | None]:
    """(run id, host folder) when MODEL names a run: a run id of this host or a run folder."""
    p = Path(model)
    if p.is_dir() and not (p / MODEL_JSON).is_file() and any((p / w / MODEL_JSON).is_file() or (p / w).is_dir()
                                                             for w in ("best", "final")):
        return p.resolve().name, p
    if not p.exists() and store.NAME.match(model) and (store.runs_dir() / model / "run.json").is_file():
        return model, store.run_dir(model)
    return None, None


def resolve_model(s: Session, model: str) -> dict:
    """Where the model to evaluate is (or will be) on the device. Returns {"remote", "source", "which"
    (best | final | None), "graph", "push": (local package, name) when it must be pushed first}."""
    p = Path(model)
    if (p / MODEL_JSON).is_file():
        name = store.check_name(p.resolve().name, "model")
        return {"remote": f"models/{name}", "source": str(p.resolve()), "which": None, "graph": load_package(p),
                "push": (p.resolve(), name)}
    run_id, host = _run_dir(model)
    if run_id is not None:
        return _run_model(s, run_id, host)
    if store.NAME.match(model) and s.t.exists(f"models/{model}/{MODEL_JSON}"):
        return {"remote": f"models/{model}", "source": f"{s.t.serial}:{s.t.root}/models/{model}", "which": None,
                "graph": _device_graph(s, f"models/{model}")}
    raise PackageError(f"{model}: no such package directory, run or model on {s.t.serial} "
                       f"(see `thomas runs list`, `thomas models list`)")


def _run_model(s: Session, run_id: str, host: Path) -> dict:
    """A run's best/ model when it has one, else final/: the run's own folder on its device, else the
    host's copy pushed as models/<run> (final) or models/<run>-best."""
    rec = store.read_json(host / "run.json") or {}
    if rec.get("kind") in ("eval", "bench"):
        raise PackageError(f"run {run_id} is a {rec['kind']} run: it trained no model")
    here = bool(rec.get("device")) and store.device_key(rec["device"]) == store.device_key(s.t.describe())
    for which in ("best", "final"):
        remote = f"runs/{run_id}/{which}"
        if here and s.t.exists(f"{remote}/{MODEL_JSON}"):
            return {"remote": remote, "source": f"run {run_id} {which}/", "which": which,
                    "graph": _device_graph(s, remote)}
        if (host / which / MODEL_JSON).is_file():
            name = store.check_name(run_id if which == "final" else f"{run_id}-best", "model")
            return {"remote": f"models/{name}", "source": f"run {run_id} {which}/", "which": which,
                    "graph": load_package(host / which), "push": ((host / which).resolve(), name)}
    raise PackageError(f"run {run_id} has no best/ or final/ model (still running, or it failed?)")


def _device_graph(s: Session, remote: str) -> Graph:
    """The graph of a package on the device, from its model.json alone (no weights)."""
    doc = parse_json(s.t.read_bytes(f"{remote}/{MODEL_JSON}"), f"{remote}/{MODEL_JSON} on {s.t.serial}",
                     PackageError)          # nesting depth: one line, never a RecursionError
    try:
        return Graph.from_json(doc, {})
    except ValueError as e:
        raise PackageError(f"{remote}/{MODEL_JSON} on {s.t.serial} is not a model ({e})") from None


# ============================================================================ the dataset, checked here first
def check_data(s: Session, data: str, split: str, g: Graph) -> dict:
    """dataset.json of data/<data> on the device; a one-line error naming model and dataset when the split is
    missing or the model does not fit (input H×W, classes). The agent checks again (channels too)."""
    from device_agent.heads import num_classes

    store.check_name(data, "dataset")
    rel = f"data/{data}/dataset.json"
    if not s.t.exists(rel):
        raise DataError(f"no dataset '{data}' on {s.t.serial} (push it with `thomas push-data`)")
    try:
        doc = parse_json(s.t.read_bytes(rel), f"{s.t.serial}:{s.t.root}/{rel}", DataError)
        counts = {k: int(v.get("count", 0)) for k, v in doc["splits"].items()}
        h, w, k = int(doc["height"]), int(doc["width"]), int(doc["num_classes"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{s.t.serial}:{s.t.root}/{rel} is not a dataset description ({e})") from None
    if not counts.get(split):
        how = {"val": "it was pushed with --val 0", "test": "push it with a test/ folder or x_test, y_test",
               "train": "it has no training images"}[split]
        raise DataError(f"dataset '{data}' has no '{split}' split ({how})")
    shapes = g.infer_shapes(batch=1)
    shape = shapes[g.inputs[0].name]
    if len(shape) == 4 and tuple(shape[2:]) != (h, w):
        raise DataError(f"model '{g.name}' takes {shape[2]}x{shape[3]} images, dataset '{data}' holds {h}x{w} "
                        f"(push the data again with --size {shape[2]}x{shape[3]})")
    if len(shape) == 4 and shape[1] == 1 and doc.get("channels", 3) == 3:
        raise DataError(f"model '{g.name}' takes 1-channel (grayscale) images, dataset '{data}' holds RGB "
                        f"(push the data again with --channels 1)")
    width = num_classes(g)
    if width != k:
        raise DataError(f"model '{g.name}' predicts {width} classes, dataset '{data}' has {k}")
    return doc


# ============================================================================ the run
def run_eval(s: Session, model: str, data: str, split: str = "val", batch: int = 64, top: int = 5,
             backend: str = "auto", timeout: float | None = 300.0, on_event=None) -> dict:
    """Evaluate on the device; returns the report (eval.json: the agent's report + run id and source).
    The eval is a run record under $THOMAS_HOME/runs/<id>/ (kind "eval")."""
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if backend not in BACKENDS:
        raise DataError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    m = resolve_model(s, model)
    check_data(s, data, split, m["graph"])          # before anything is pushed
    if m.get("push"):
        from .push_cmd import push_model

        src, name = m["push"]
        if not push_model(s, m["graph"], name, str(src))["skipped"]:
            console_note(f"pushed {src} to {s.t.serial}:{s.t.root}/models/{name}")
    run_id = store.new_run_id()
    job = {"model": m["remote"], "data": f"data/{data}", "split": split, "batch": batch, "top": top,
           "backend": backend, "out": f"runs/{run_id}"}
    rec = {"id": run_id, "kind": "eval", "created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": s.t.describe(),
           "model": model, "which": m["which"], "data": data, "stage": f"eval {split}", "job": job,
           "status": "running"}
    host = store.run_dir(run_id)
    host.mkdir(parents=True, exist_ok=True)
    store.save_run(rec)
    args = ["eval", m["remote"], job["data"], f"{job['out']}/eval.json", "--split", split, "--batch", str(batch),
            "--top", str(top), "--backend", backend]
    with open(host / "events.jsonl", "a") as evf:
        def event(ev: dict) -> None:
            evf.write(json.dumps(ev) + "\n")
            evf.flush()
            if on_event:
                on_event(ev)

        try:
            res = s.call(args, on_event=event, timeout=timeout)
        except ThomasError as e:
            rec.update(status="error", error=str(e))
            store.save_run(rec)
            raise
    last = res.events[-1] if res.events else {}
    if last.get("ev") != "eval_report":
        return _failed(s, rec, last, res)
    pull_run(s.t, run_id, ["eval.json"])
    doc = store.read_json(host / "eval.json")
    if not isinstance(doc, dict) or "confusion" not in doc:
        raise RunFailed("error", f"eval {run_id}: the report pulled from {s.t.serial} is unreadable")
    doc = dict(doc, id=run_id, model_arg=model, source=m["source"], which=m["which"], dataset=data)
    store.write_json(host / "eval.json", doc)
    rec.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"),
               summary={"split": split, "count": doc["count"], "acc": doc["acc"], "top_k": doc["top_k"],
                        "top_k_acc": doc["top_k_acc"], "loss": doc["loss"],
                        "val_acc": doc["acc"] if split == "val" else None})   # `runs list` shows acc else
    store.save_run(rec)
    return doc


def _failed(s: Session, rec: dict, last: dict, res) -> dict:
    """The agent ended without a report: a refused input removes the record, anything else keeps it."""
    run_id = rec["id"]
    if last.get("ev") == "error":
        code, msg = last.get("code", "error"), last.get("message")
    else:
        code, msg = "error", f"agent ended ({res.returncode}) without a result: {' | '.join(res.logs[-3:])}"
    if code in USER_CODES:
        s.t.remove(f"runs/{run_id}")
        store.remove_run(run_id)
        raise RunFailed(code, f"{msg}")
    rec.update(status="error", error=msg)
    store.save_run(rec)
    raise RunFailed(code, f"eval {run_id} failed on {s.t.serial}: {msg}")


# ============================================================================ showing a report
def _f(v, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def summary_table(doc: dict) -> Table:
    which = f" ({doc['which']}/)" if doc.get("which") else ""
    t = Table(show_header=False, title=f"eval {doc.get('id', '')}".strip())
    t.add_column(style="bold")
    t.add_column()
    mac = doc.get("macro") or {}
    rows = [("model", f"{doc.get('model_arg') or doc.get('model')}{which}: {doc.get('model_name', '')}"),
            ("data", f"{doc.get('dataset') or doc.get('data')} / {doc['split']}: {doc['count']} images, "
                     f"{len(doc['classes'])} classes"),
            ("top-1 accuracy", _f(doc["acc"], ".4f")),
            (f"top-{doc['top_k']} accuracy", _f(doc["top_k_acc"], ".4f")),
            ("mean loss", _f(doc["loss"], ".4f") + f"  (cross-entropy of '{doc.get('loss_tensor')}')"),
            ("macro precision / recall / F1", f"{_f(mac.get('precision'))} / {_f(mac.get('recall'))} / "
                                              f"{_f(mac.get('f1'))}"),
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
    for r in rows:
        t.add_row(str(r["index"]), r["class"], str(r["support"]), str(r["predicted"]), _f(r["precision"]),
                  _f(r["recall"]), _f(r["f1"]))
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


@app.command("eval")
@guarded
def eval_cmd(
    model: str = typer.Argument(..., help="A package directory, a run (best/ when it has one, else final/), "
                                          "or the name of a model on the device."),
    data: str = typer.Option(..., "--data", help="Dataset on the device (`thomas push-data`)."),
    split: str = typer.Option("val", "--split", help="val | train | test."),
    batch: int = typer.Option(64, "--batch", min=1, help="Images per forward pass."),
    top: int = typer.Option(5, "--top", min=1, help="k of the top-k accuracy."),
    backend: str = typer.Option("auto", "--backend", help="auto (OpenCL when the device has it), opencl or numpy."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Watchdog: seconds without an event."),
    as_json: bool = typer.Option(False, "--json", help="The whole report as JSON on stdout."),
):
    """Measure a model on a dataset split on the device: top-1/top-k accuracy, mean loss, per-class
    precision/recall and the confusion matrix; saved as a run (`thomas runs show`, `thomas report`)."""
    from .push_cmd import progress

    s = Session(open_transport(note=console_note), note=console_note)
    with progress(None, f"eval {split}") as bar:
        task = bar.add_task("eval", total=None)

        def on_event(ev: dict) -> None:
            if ev.get("ev") == "progress" and ev.get("phase") == "eval":
                bar.update(task, completed=ev["done"], total=ev["total"])
        doc = run_eval(s, model, data, split, batch, top, backend, timeout, on_event=on_event)
    if as_json:
        print_json(doc)
        return
    show_report(doc)
    err.print(f"saved as run {doc['id']} ({store.run_dir(doc['id']) / 'eval.json'}); `thomas report {doc['id']}` "
              f"draws the confusion matrix", highlight=False, soft_wrap=True)
