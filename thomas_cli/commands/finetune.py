"""`thomas finetune`: write the job, push what is missing, run it on the device with live progress.

    thomas finetune mobilenet_v2 --data digits --layers last --epochs 3
    thomas finetune mine --data ./flowers --layers 3 --lr 0.01 --optimizer adam --backend opencl
    thomas finetune mobilenet_v2 --data digits --init scratch --set warmup_epochs=1 --set augment=true
    thomas finetune --resume 20260101-120000-ab12          # continue from its last checkpoint
    thomas finetune ... --json                             # the events, one JSON object a line

MODEL is a model on the device (`thomas models list`), a run of this computer (its best/ model, else
final/), a package directory, or a zoo name (built at the dataset's size and class count, then pushed). --data is a dataset on the device or, when the
device has none of that name, a local ImageFolder/.npz (pushed first). When the model's head does not match the dataset's classes, the job
asks for a fresh head (num_classes). Every TrainJob field can be set with --set FIELD=VALUE or a
--job FILE.json; both ends validate the job, and an error names the field.
"""
from __future__ import annotations

from pathlib import Path

import typer

from device_agent.confine import check_job_paths
from device_agent.errors import JobError
from device_agent.limits import MAX_JOB_BYTES, parse_json, read_json
from device_agent.protocol import TrainJob

from ..app import app, guarded, note
from ..device import DEFAULT_TIMEOUT, Session
from ..resolve import check_fit, ensure_dataset, ensure_model, model_input
from ..runs import check_device, new_run, resume_record, run_job
from ..views import RunView, show_done
from .common import session, transport

BACKENDS = {"auto": "auto", "cpu": "numpy", "numpy": "numpy", "opencl": "opencl"}
HOST_FIELDS = ("model", "data", "out", "resume")


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
        rec = resume_record(resume)
        t = transport()
        check_device(rec, t)
        s = Session(t, note=note)
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
        s = session()
        s.handshake()                       # fail fast (no python, old agent) before pushing anything
        dmeta = ensure_dataset(s, data, size, val, model_input(s, model))
        mmeta = ensure_model(s, model, dmeta, width, fields.get("seed", 0))
        check_fit(dmeta, mmeta)
        rec = new_run(s, mmeta, dmeta, fields)
    view = RunView(as_json)
    # NOTE: printed with the plan, so a run the agent refuses at once shows only its error line
    view.header = (f"run [bold]{rec['id']}[/] on {s.t.serial} ({s.t.kind}): {rec['model']} on {rec['data']}, "
                   f"stage {rec.get('stage', '?')}")
    with view:
        done = run_job(s, rec, on_event=view, timeout=timeout)
    show_done(view, rec, done)
