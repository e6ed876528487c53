"""`thomas runs list|show|pull|rm|attach|cancel`: the runs this host started, mirrored under $THOMAS_HOME/runs.

    thomas runs list --json
    thomas runs show RUN                 # job, status, the epoch table
    thomas runs pull RUN [PATH ...]      # everything (checkpoints too), or some paths of the run
    thomas runs rm RUN [--keep-device]
    thomas runs attach RUN               # follow a daemon run again after this computer lost it
    thomas runs cancel RUN               # stop a daemon run (its checkpoints stay)
"""
from __future__ import annotations

import typer
from rich.table import Table

from device_agent.protocol import EpochEvent, PlanEvent

from .. import runs
from ..app import app, err, guarded, note, out, print_json
from ..bench import BenchResult
from ..device import DEFAULT_TIMEOUT, Session
from ..transport.base import check_rel
from ..views import (RunView, device_table, epoch_table, layer_table, rounds_table, show_done, show_report,
                     totals_table)
from .common import target

runs_app = typer.Typer(no_args_is_help=True, help="Runs started from this computer.")
app.add_typer(runs_app, name="runs")


def _row(rec: dict) -> dict:
    s = rec.get("summary") or {}
    d = rec.get("device", {})
    return {"id": rec["id"], "created": rec.get("created"), "status": rec.get("status"), "model": rec.get("model"),
            "data": rec.get("data"), "stage": rec.get("stage"), "kind": rec.get("kind", "train"),
            "epochs": s.get("epochs"), "val_acc": s.get("val_acc"),
            "acc": s.get("acc"),   # an eval run's top-1 on its split (stage "eval SPLIT")
            "train_acc": s.get("train_acc"), "device": f"{d.get('transport')}:{d.get('serial')}",
            "error": rec.get("error")}


def _fmt(v, f):
    return "" if v is None else format(v, f)


@runs_app.command("list")
@guarded
def runs_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List runs, newest last."""
    rows = [_row(r) for r in runs.list_runs()]
    if as_json:
        print_json(rows)
        return
    t = Table(title=f"runs in {runs.runs_dir()}")
    t.add_column("run", no_wrap=True)
    for col in ("status", "model", "data", "stage", "epochs", "val acc"):
        t.add_column(col)
    t.add_column("device", no_wrap=True)
    colors = {"done": "green", "running": "cyan", "error": "red", "lost": "red", "timeout": "red"}
    for r in rows:
        c = colors.get(r["status"], "yellow")
        t.add_row(r["id"], f"[{c}]{r['status']}[/]", r["model"], r["data"], r["stage"],
                  _fmt(r["epochs"], "d"), _fmt(r["val_acc"] if r["val_acc"] is not None else r["acc"], ".3f"),
                  r["device"])
    out.print(t)


@runs_app.command("show")
@guarded
def runs_show(run: str = typer.Argument(..., help="Run id (see `thomas runs list`)."),
              as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Show a run: its job, status, and per-epoch metrics."""
    rec = runs.load_run(run)
    events = runs.read_events(run)
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    report = runs.read_result(run, "eval.json") if rec.get("kind") == "eval" else None
    fleet = runs.read_result(run, "fleet.json") if rec.get("kind") == "fleet" else None
    if as_json:
        print_json(dict(rec, epochs=[e.to_dict() for e in epochs], events=len(events),
                        **({"eval": report} if report else {}), **({"fleet": fleet} if fleet else {})))
        return
    row = _row(rec)
    out.print(f"[bold]run {run}[/]: {row['status']}  {row['model']} on {row['data']} ({row['stage']}), "
              f"device {row['device']} {rec.get('device', {}).get('root', '')}", highlight=False)
    if rec.get("error"):
        out.print(f"[red]error:[/] {rec['error']}", highlight=False, soft_wrap=True)
    job = rec.get("job", {})
    out.print("job: " + ", ".join(f"{k}={job[k]}" for k in ("layers", "init", "epochs", "batch", "lr", "optimizer",
                                                              "backend", "seed", "steps") if k in job), highlight=False)
    bench = runs.read_result(run, "bench.json") if rec.get("kind") == "bench" else None
    if fleet:                           # thomas fleet: a row per round, each device's val acc per round
        out.print(rounds_table(fleet.get("history", [])))
        out.print(device_table(fleet.get("history", [])))
        return
    if bench:
        res = BenchResult.from_json(bench)
        out.print(layer_table([("", res)], f"{rec.get('model')} {rec.get('stage')}, batch {job.get('batch')}"))
        out.print(totals_table([("", res)]))
    elif report:
        show_report(report)
    else:
        out.print(epoch_table(epochs))
    out.print(f"{len(events)} events in {runs.run_dir(run) / 'events.jsonl'}", highlight=False)


@runs_app.command("cancel")
@guarded
def runs_cancel(run: str = typer.Argument(..., help="Run id (a run started through the Termux daemon).")):
    """Stop a run that goes on in the phone's daemon (e.g. after this computer lost it); its checkpoints
    stay, so `thomas finetune --resume RUN` can continue it later."""
    rec = runs.load_run(run)
    job = runs.daemon_job(rec)
    t = runs.transport_for(rec, target(), note)
    state = runs.cancel_run(rec, t)
    out.print(f"run {run}: daemon job {job} is {state} on {t.serial}; `thomas finetune --resume {run}` continues "
              f"it from its last checkpoint", highlight=False, soft_wrap=True)


@runs_app.command("attach")
@guarded
def runs_attach(
    run: str = typer.Argument(..., help="Run id (a run started through the Termux daemon)."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=1,
                                  help="Watchdog: stop following after this many seconds without an event."),
    as_json: bool = typer.Option(False, "--json", help="Stream the events as JSON lines on stdout."),
):
    """Follow a run that keeps going on the phone's daemon after this computer lost it (unplugged,
    closed, Ctrl-C): the events missed meanwhile are replayed, each exactly once, then the run is
    followed to its end and its results are pulled. Ctrl-C detaches again; the run goes on."""
    rec = runs.load_run(run)
    s = Session(runs.transport_for(rec, target(), note), note=note)
    view = RunView(as_json)
    if not as_json:
        err.print(f"attaching to run [bold]{run}[/] (daemon job {rec.get('daemon_job')}) on {s.t.serial}",
                  highlight=False)
    with view:
        if not as_json:
            for ev in runs.read_events(run):        # the progress bar picks up where the mirror ends
                if isinstance(ev, (PlanEvent, EpochEvent)):
                    view(ev)
        done = runs.attach_run(s, rec, on_event=view, timeout=timeout)
    show_done(view, rec, done)


@runs_app.command("pull")
@guarded
def runs_pull(
    run: str = typer.Argument(..., help="Run id."),
    paths: list[str] = typer.Argument(None, help="Paths inside the run folder (default: all of it)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Pull a run's files from the device into $THOMAS_HOME/runs/RUN (checkpoints included)."""
    rec = runs.load_run(run)
    for p in paths or []:
        check_rel(p, "run path")
    t = runs.transport_for(rec, target(), note)
    files = runs.pull_run(t, run, list(paths) if paths else None)
    host = runs.run_dir(run)
    if as_json:
        print_json({"run": run, "dir": str(host), "files": [str(f.relative_to(host)) for f in files]})
        return
    total = sum(f.stat().st_size for f in files)
    out.print(f"pulled {len(files)} files ({total / 2**20:.1f} MiB) from {t.serial}:{t.root}/runs/{run} "
              f"into {host}", highlight=False, soft_wrap=True)


@runs_app.command("rm")
@guarded
def runs_rm(
    run: str = typer.Argument(..., help="Run id."),
    keep_device: bool = typer.Option(False, "--keep-device", help="Remove only the host's copy."),
):
    """Remove a run: the host's folder and the device's run folder."""
    rec = runs.load_run(run)
    runs.remove_everywhere(rec, keep_device, target(), note, warn=lambda msg: err.print(
        f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True))
    out.print(f"removed run {run}", highlight=False)
