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

import typer

from device_agent.protocol import Event, ProgressEvent

from ..app import app, err, guarded, print_json, progress
from ..evaluate import run_eval
from ..runs import run_dir
from ..views import show_report
from .common import session


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
    s = session()
    with progress(f"eval {split}") as bar:
        task = bar.add_task("eval", total=None)

        def on_event(ev: Event) -> None:
            if isinstance(ev, ProgressEvent) and ev.phase == "eval":
                bar.update(task, completed=ev.done, total=ev.total)
        doc = run_eval(s, model, data, split, batch, top, backend, timeout, on_event=on_event)
    if as_json:
        print_json(doc)
        return
    show_report(doc)
    err.print(f"saved as run {doc['id']} ({run_dir(doc['id']) / 'eval.json'}); `thomas report {doc['id']}` "
              f"draws the confusion matrix", highlight=False, soft_wrap=True)
