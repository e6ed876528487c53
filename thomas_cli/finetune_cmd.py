"""`thomas finetune`: write the job, push what is missing, run it on the device with live progress.

    thomas finetune mobilenet_v2 --data digits --layers last --epochs 3
    thomas finetune mine --data ./flowers --layers 3 --lr 0.01 --optimizer adam --backend opencl
    thomas finetune mobilenet_v2 --data digits --init scratch --set warmup_epochs=1 --set augment=true
    thomas finetune --resume 20260101-120000-ab12          # continue from its last checkpoint
    thomas finetune ... --json                             # the events, one JSON object a line

MODEL is a model on the device (`thomas models list`), a package directory, or a zoo name (built at
the dataset's size and class count, then pushed). --data is a dataset on the device or, when the
device has none of that name, a local ImageFolder/.npz (pushed first). When the model's head does not match the dataset's classes, the job
asks for a fresh head (num_classes). Every TrainJob field can be set with --set FIELD=VALUE or a
--job FILE.json; both ends validate the job, and an error names the field.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from device_agent.errors import DataError, JobError, ThomasError
from device_agent.graph import MODEL_JSON, load_package
from device_agent.confine import check_job_paths
from device_agent.limits import MAX_JOB_BYTES, parse_json, read_json
from device_agent.protocol import TrainJob

from . import store, zoo
from .images import parse_size
from .app import app, err, guarded, out
from .push_cmd import device_meta, push_data, push_model, resolve_model_source
from .session import DEFAULT_TIMEOUT, Session, console_note, open_transport, run_job

BACKENDS = {"auto": "auto", "cpu": "numpy", "numpy": "numpy", "opencl": "opencl"}
HOST_FIELDS = ("model", "data", "out", "resume")


# ============================================================================ live view
class RunView:
    """Turns events into a rich progress line on stderr (TTY), plain epoch lines otherwise, or
    passes them through as JSONL (--json)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.tty = err.is_terminal and not as_json
        self.plan: dict | None = None
        self.header: str | None = None        # the run's first line, shown with its plan (see finetune)
        self.epochs: list[dict] = []
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

    def __call__(self, ev: dict) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
            return
        kind = ev["ev"]
        if kind == "plan":
            self.plan = ev
            if self.header:
                err.print(self.header, highlight=False)
            p = ev
            err.print(f"[bold]{p['stage']}[/] on {p['backend']} ({p['dtype']}): {p['trainable_params']:,} trainable / "
                      f"{p['frozen_params']:,} frozen parameters, {p['train']} train / {p['val']} val images, "
                      f"{p['classes']} classes, {p['epochs']} epochs x {p['steps_per_epoch']} steps of {p['batch']}"
                      + (", feature cache" if p.get("feature_cache") else "")
                      + (f", resumed at step {p['start_step']}" if p.get("start_step") else ""), highlight=False)
            self.task = self.progress.add_task(f"epoch 1/{p['epochs']}", total=p["total_steps"],
                                               completed=p.get("start_step", 0), stats="")
        elif kind == "step" and self.task is not None:
            rate = self.plan["batch"] * 1000.0 / ev["ms"] if ev.get("ms") else None
            if rate:
                self.img_s = rate if self.img_s is None else 0.8 * self.img_s + 0.2 * rate
            self.progress.update(self.task, completed=ev["step"],
                                 description=f"epoch {ev['epoch']}/{self.plan['epochs']}",
                                 stats=f"loss {ev['loss']:.4f}  acc {ev['acc']:.3f}  "
                                       f"{self.img_s or 0:.0f} img/s")
        elif kind == "progress" and self.task is not None:
            self.progress.update(self.task, stats=f"{ev['phase']} {ev['done']}/{ev['total']}")
        elif kind == "epoch":
            self.epochs.append(ev)
            if not self.tty:
                err.print(f"epoch {ev['epoch']}: train loss {ev['train_loss']:.4f} acc {ev['train_acc']:.3f}"
                          + (f", val loss {ev['val_loss']:.4f} acc {ev['val_acc']:.3f}" if ev.get('val_acc') is not None else "")
                          + f", {ev.get('img_s') or 0:.0f} img/s", highlight=False)
        elif kind == "telemetry" and not self.tty:
            parts = [f"{ev[k]:.1f} J {name}" for k, name in (("battery_j", "battery"), ("rapl_j", "RAPL"))
                     if ev.get(k) is not None]
            if ev.get("temp_max") is not None:
                parts.append(f"max {ev['temp_max']:.0f} °C")
            if parts:
                err.print(f"epoch {ev['epoch']} energy: " + ", ".join(parts), highlight=False)

    def table(self, rec: dict, done: dict) -> Table:
        t = Table("epoch", "train loss", "train acc", "val loss", "val acc", "img/s", "time",
                  title=f"run {rec['id']}: {rec['model']} on {rec['data']} ({rec.get('stage', '')})")
        for e in self.epochs:
            fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
            best = " *" if e["epoch"] == done.get("best_epoch") else ""      # the epoch best/ holds
            t.add_row(f'{e["epoch"]}{best}', fmt(e["train_loss"], ".4f"), fmt(e["train_acc"], ".3f"),
                      fmt(e.get("val_loss"), ".4f"), fmt(e.get("val_acc"), ".3f"), fmt(e.get("img_s"), ".0f"),
                      f"{e['ms'] / 1000:.1f} s")
        return t


# ============================================================================ the job
def _parse_set(items: list[str]) -> dict:
    fields = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise JobError(f"--set takes FIELD=VALUE, got '{item}'")
        fields[k] = parse_json(v, f"--set {k}", JobError, bare_ok=True)   # a bare word: a string
    return fields


def job_fields(job_file: Path | None, opts: dict, sets: list[str]) -> dict:
    """defaults < --job FILE < options < --set; checked now with placeholder paths (JobError names
    the field), before anything touches the device."""
    fields: dict = {}
    if job_file is not None:
        doc = read_json(job_file, JobError, max_bytes=MAX_JOB_BYTES, what="job")   # size, depth: one line
        if not isinstance(doc, dict):
            raise JobError(f"{job_file}: a job must be a JSON object")
        fields.update(doc)
    fields.update({k: v for k, v in opts.items() if v is not None})
    fields.update(_parse_set(sets))
    for k in HOST_FIELDS:
        if k in fields:
            raise JobError(f"job field '{k}' is set by thomas (MODEL, --data, --resume), not by a job file or --set")
    if fields.get("init") == "scratch" and "layers" not in fields:
        fields["layers"] = "all"
    TrainJob.from_dict(dict(fields, model="m", data="d", out="o"))
    check_job_paths(fields)          # cache_dir: relative to the device root, no '..' (the agent checks too)
    return fields


def model_input(s: Session, model: str) -> tuple | None:
    """(C, H, W) of MODEL's input when it is known before anything is pushed (a model on the device,
    a package directory), None for a zoo name (built at the dataset's size)."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        have = device_meta(s.t, f"models/{model}")
        return tuple(have["input"]) if have and len(have.get("input") or ()) == 3 else None
    if Path(model).is_dir():
        shape = load_package(Path(model)).inputs[0].shape
        return tuple(shape[1:]) if len(shape) == 4 else None
    return None


def _dataset(s: Session, data: str, size, val: float | None, model_in: tuple | None = None) -> dict:
    """The dataset's meta on the device (a name it holds wins), else push the local folder/.npz at
    --size or the model's H x W, in the model's channels (a gray model gets gray data)."""
    name = data
    local = Path(data)
    on_device = store.NAME.match(data) and s.t.exists(f"data/{data}/dataset.json")
    if not on_device and local.exists() and (local.is_dir() or local.suffix == ".npz"):
        name = local.stem
        hw = parse_size(size) or (tuple(model_in[1:]) if model_in else None)
        meta = push_data(s, local, name, hw, val, channels=model_in[0] if model_in else 3)
        if not meta.get("skipped"):
            console_note(f"pushed dataset '{name}' ({meta['count']} images, {meta['size']}, "
                         f"split {meta['split_source']})")
        return meta
    if val is not None or size is not None:
        raise ThomasError(f"--size and --val apply to a local folder or .npz; '{data}' is already on "
                          f"{s.t.serial} (push it again with `thomas push-data` to change it)")
    store.check_name(name, "dataset")
    meta = device_meta(s.t, f"data/{name}")
    if meta is None:
        if not s.t.exists(f"data/{name}/dataset.json"):
            raise ThomasError(f"no dataset '{name}' on {s.t.serial} and no local folder or .npz of that name "
                              f"(push one with `thomas push-data DIR`)")
        classes = json.loads(s.t.read_bytes(f"data/{name}/classes.json"))
        meta = {"name": name, "classes": classes, "size": None}
    return dict(meta, name=name)           # NOTE: a copied folder's thomas.json names the original


def check_fit(data_meta: dict, model_meta: dict) -> None:
    """One line before any run when the dataset's images do not fit the model's input (size, or RGB
    data for a 1-channel model); a gray dataset fits an RGB model (replicated on the device)."""
    inp, h, w = model_meta.get("input"), data_meta.get("height"), data_meta.get("width")
    if not inp or len(inp) != 3 or h is None:
        return                                 # the agent checks it (Dataset.check_input)
    c, mh, mw = inp
    if (mh, mw) != (h, w):
        raise DataError(f"dataset '{data_meta['name']}' is {h}x{w}, model '{model_meta['name']}' takes {mh}x{mw}: "
                        f"push the data again with --size {mh}x{mw}")
    if c == 1 and data_meta.get("channels", 3) == 3:
        raise DataError(f"dataset '{data_meta['name']}' is RGB, model '{model_meta['name']}' takes 1-channel "
                        f"(grayscale) input: push the data again with --channels 1")


def _model(s: Session, model: str, data_meta: dict, width: float, seed: int) -> dict:
    """The model's meta on the device (a name it holds wins), else push a package directory or a
    zoo build at the dataset's size and classes."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        return dict(device_meta(s.t, f"models/{model}") or {}, name=model)
    run_pkg = _run_package(model)
    if run_pkg is not None:                    # fine-tune again from a run: its best/ (else final/) model
        pkg, name = run_pkg
        return push_model(s, load_package(pkg), name, f"run {pkg.parent.name} {pkg.name}/")
    if Path(model).is_dir():
        g, name, source = resolve_model_source(model, 0, 0, 1.0, 0)
        return push_model(s, g, name, source)
    if model in zoo.ZOO:
        h, w = data_meta.get("height"), data_meta.get("width")
        if h is not None and h != w:
            raise DataError(f"zoo models take square inputs, dataset '{data_meta['name']}' is {h}x{w}: push it "
                            f"with --size S, or import a model of that input (thomas import)")
        g, name, source = resolve_model_source(model, len(data_meta["classes"]), h or data_meta.get("size") or 224,
                                               width, seed)
        res = push_model(s, g, model, source)
        console_note(f"pushed {source} as '{model}'")
        return res
    raise ThomasError(f"no model '{model}' on {s.t.serial}: push it with `thomas push-model`, or give a "
                      f"package directory or a zoo name ({', '.join(zoo.ZOO)})")


def _run_package(model: str) -> tuple[Path, str] | None:
    """(package, device model name) when MODEL names a training run of this computer (its id or its
    folder): the run's best/ model when it has one, else final/, pushed as models/<run>-best or
    models/<run>. None when MODEL is something else."""
    from .onnx_cmd import resolve_package

    p = Path(model)
    if (p / MODEL_JSON).is_file():
        return None
    run = p if p.is_dir() else store.runs_dir() / model if store.NAME.match(model) else None
    if run is None or not any((run / w / MODEL_JSON).is_file() for w in ("best", "final")):
        return None
    pkg = resolve_package(run, note=console_note)
    rid = run.resolve().name
    return pkg, store.check_name(f"{rid}-best" if pkg.name == "best" else rid, "model")


def new_run(s: Session, model_meta: dict, data_meta: dict, fields: dict) -> dict:
    """The run record of a job on models/<model> and data/<data> (a fresh head when the class
    counts differ). Run it with session.run_job(s, rec, on_event=RunView(...))."""
    fields = dict(fields)
    n = len(data_meta["classes"])
    if "num_classes" not in fields and model_meta.get("classes") not in (None, n):
        fields["num_classes"] = n
    run_id = store.new_run_id()
    job = TrainJob.from_dict(dict(fields, model=f"models/{model_meta['name']}", data=f"data/{data_meta['name']}",
                                  out=f"runs/{run_id}")).to_dict()
    stage = "scratch" if job["init"] == "scratch" else (job["layers"] if isinstance(job["layers"], str)
                                                        else f"N={job['layers']}")
    return {"id": run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": s.t.describe(),
            "model": model_meta["name"], "data": data_meta["name"], "stage": stage, "job": job}


@app.command()
@guarded
def finetune(
    model: str = typer.Argument(None, help="Model on the device, package directory, or zoo name."),
    data: str = typer.Option(None, "--data", help="Dataset on the device, or a local ImageFolder / .npz."),
    layers: str = typer.Option(None, "--layers", help="last (classifier) | all | N (last N layers) (default: last)."),
    init: str = typer.Option(None, "--init", help="pretrained | scratch (re-initialise; trains all layers)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Epochs (default: 10)."),
    batch: int = typer.Option(None, "--batch", min=1, help="Batch size (default: 32)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: 0.01)."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd | adam | adamw (default: sgd)."),
    backend: str = typer.Option(None, "--backend", help="auto | opencl | cpu (default: auto: OpenCL when the device has it)."),
    seed: int = typer.Option(None, "--seed", help="Seed of everything random in the run (default: 0)."),
    sets: list[str] = typer.Option(None, "--set", help="Any job field: FIELD=VALUE (JSON value), repeatable."),
    job_file: Path = typer.Option(None, "--job", help="A JSON file of job fields (under the options)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN from its last checkpoint."),
    size: str = typer.Option(None, "--size", help="S or HxW when --data is a local folder (default: the model's input)."),
    val: float = typer.Option(None, "--val", help="Validation fraction when --data is a local folder without its "
                                                  "own split (default 0.2)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier when MODEL is a zoo name."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=1,
                                  help="Watchdog: stop the run after this many seconds without an event."),
    as_json: bool = typer.Option(False, "--json", help="Stream the events as JSON lines on stdout."),
):
    """Fine-tune MODEL on a dataset on the device, with live progress; the run is mirrored to
    $THOMAS_HOME/runs/<id>/ and its final model and metrics are pulled at the end."""
    if resume:
        rec = store.load_run(resume)
        job = TrainJob.from_dict(dict(rec["job"], resume=True)).to_dict()
        t = open_transport(note=console_note)
        if store.device_key(t.describe()) != store.device_key(rec["device"]):
            d = rec["device"]
            raise ThomasError(f"run {resume} lives on {d['transport']} {d['serial']} ({d['root']}); "
                              f"select that device (-s / --device / --device-root)")
        rec["job"] = job
        s = Session(t, note=console_note)
    else:
        if not model or not data:
            raise typer.BadParameter("give MODEL and --data (or --resume RUN)")
        if layers is not None and layers not in ("last", "all") and not layers.isdigit():
            raise typer.BadParameter(f"must be last, all or a number of layers, not '{layers}'", param_hint="--layers")
        if backend is not None and backend not in BACKENDS:
            raise typer.BadParameter(f"must be auto, opencl or cpu, not '{backend}'", param_hint="--backend")
        opts = {"layers": int(layers) if layers and layers.isdigit() else layers, "init": init, "epochs": epochs,
                "batch": batch, "lr": lr, "optimizer": optimizer, "seed": seed,
                "backend": BACKENDS.get(backend, backend) if backend else None}
        fields = job_fields(job_file, opts, sets)
        s = Session(open_transport(note=console_note), note=console_note)
        s.handshake()                       # fail fast (no python, old agent) before pushing anything
        dmeta = _dataset(s, data, size, val, model_input(s, model))
        mmeta = _model(s, model, dmeta, width, fields.get("seed", 0))
        check_fit(dmeta, mmeta)
        rec = new_run(s, mmeta, dmeta, fields)
    view = RunView(as_json)
    # NOTE: printed with the plan, so a run the agent refuses at once shows only its error line
    view.header = (f"run [bold]{rec['id']}[/] on {s.t.serial} ({s.t.kind}): {rec['model']} on {rec['data']}, "
                   f"stage {rec.get('stage', '?')}")
    with view:
        done = run_job(s, rec, on_event=view, timeout=timeout)
    show_done(view, rec, done)


def show_done(view: RunView, rec: dict, done: dict) -> None:
    if view.as_json:
        return
    out.print(view.table(rec, done))
    host = store.run_dir(rec["id"])
    val_acc = done.get("val_acc")
    out.print(f"done in {done['ms'] / 1000:.1f} s: train acc {done['train_acc']:.3f}"
              + (f", val acc {val_acc:.3f}" if val_acc is not None else "")
              + f"; final model and metrics in {host}", highlight=False, soft_wrap=True)
    if done.get("stopped_early"):
        out.print(f"stopped early after epoch {done['epochs']}: no better {done.get('select')} for "
                  f"{done['epochs'] - done['best_epoch']} epoch(s) (patience)", highlight=False, soft_wrap=True)
    if done.get("best_epoch") is not None and (host / "best").is_dir():
        out.print(f"best: epoch {done['best_epoch']} ({done['select']} {done['best_metric']:.4f}, final "
                  f"{done['final_metric']:.4f}) in {host / 'best'}; thomas infer, eval and export use it "
                  f"(infer/export --which final: the last epoch's)", highlight=False, soft_wrap=True)
