"""`thomas fleet finetune`: one model fine-tuned over many phones through Flower (docs/FLEET.md).

    thomas fleet finetune mnv2 --data digits --devices SERIAL1,SERIAL2,local --rounds 5 --local-epochs 1
    thomas fleet finetune mnv2 --data digits --devices all --strategy fedadam --min-devices 2 --json
    thomas fleet finetune --resume 20261206-223344-ab12      # from its last completed round

Each device trains on its own dataset (--data: the same name on every device, the same classes); only
the trainable parameters travel. Flower (the `fleet` extra) is imported only here, only when it runs.
"""
from __future__ import annotations

from pathlib import Path

import typer

from device_agent.errors import JobError, ThomasError
from device_agent.limits import parse_json

from ..app import app, guarded, note
from ..device import DEFAULT_TIMEOUT
from .common import target

fleet_app = typer.Typer(no_args_is_help=True, help="Fine-tune one model over many phones, each on its own data "
                                                   "(Flower).")
app.add_typer(fleet_app, name="fleet")
HOST_FIELDS = ("model", "data", "out", "resume", "epochs", "prox_mu")
BACKENDS = {"auto": "auto", "cpu": "numpy", "numpy": "numpy", "opencl": "opencl"}


def _engine():
    try:
        import flwr  # noqa: F401
    except ImportError:
        # NOTE: the backslash keeps rich (the one-line error printer) from reading [fleet] as markup
        raise ThomasError("thomas fleet needs the fleet extra: pip install 'thomas\\[fleet]'") from None
    from .. import fleet

    return fleet


def _job(layers, local_epochs, batch, lr, optimizer, backend, seed, sets) -> dict:
    if layers is not None and layers not in ("last", "all") and not layers.isdigit():
        raise typer.BadParameter(f"must be last, all or a number of layers, not '{layers}'", param_hint="--layers")
    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"must be auto, opencl or cpu, not '{backend}'", param_hint="--backend")
    job = {"layers": int(layers) if layers and layers.isdigit() else (layers or "last"), "epochs": local_epochs,
           "batch": batch, "lr": lr, "optimizer": optimizer, "seed": seed,
           "backend": BACKENDS.get(backend, backend) if backend else None}
    job = {k: v for k, v in job.items() if v is not None}
    for item in sets or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise JobError(f"--set takes FIELD=VALUE, got '{item}'")
        if k in HOST_FIELDS:
            raise JobError(f"job field '{k}' is set by thomas fleet (MODEL, --data, --local-epochs, --proximal-mu), "
                           f"not by --set")
        job[k] = parse_json(v, f"--set {k}", JobError, bare_ok=True)
    return job


@fleet_app.command("finetune")
@guarded
def fleet_finetune(
    model: str = typer.Argument(None, help="Model on a device of the fleet, a run, a package directory or a zoo name."),
    data: str = typer.Option(None, "--data", help="The dataset's name on every device (each holds its own part)."),
    devices: str = typer.Option(None, "--devices", help="SERIAL,SERIAL,...: adb serials, local, or all."),
    rounds: int = typer.Option(3, "--rounds", help="Federated rounds."),
    local_epochs: int = typer.Option(1, "--local-epochs", min=1, help="Epochs each device trains per round."),
    layers: str = typer.Option(None, "--layers", help="last | all | N: what trains (and travels)."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg | fedprox | fedadam (Flower's)."),
    mu: float = typer.Option(None, "--proximal-mu", help="FedProx's mu (the devices' prox_mu; default 0.01)."),
    min_devices: int = typer.Option(1, "--min-devices", help="A round needs this many devices to reply."),
    fraction: float = typer.Option(1.0, "--fraction", help="Fraction of the devices asked each round, in (0, 1]."),
    bn: str = typer.Option("local", "--bn", help="local (FedBN: BN statistics stay per device) | global (averaged)."),
    central_data: Path = typer.Option(None, "--central-data", help="A folder or .npz evaluated here each round."),
    keep: int = typer.Option(3, "--keep", help="Per-round global models kept in the run."),
    batch: int = typer.Option(None, "--batch", min=1, help="Batch size (default: 32)."),
    lr: float = typer.Option(None, "--lr", help="Local learning rate (default: 0.01)."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd | adam | adamw (default: sgd)."),
    backend: str = typer.Option(None, "--backend", help="auto | opencl | cpu (default: auto)."),
    seed: int = typer.Option(None, "--seed", help="Seed (round r trains with seed + r - 1; default 0)."),
    sets: list[str] = typer.Option(None, "--set", help="Any job field: FIELD=VALUE (JSON value), repeatable."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier when MODEL is a zoo name."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=1,
                                  help="Watchdog of each device's run: seconds without an event."),
    resume: str = typer.Option(None, "--resume", help="Continue fleet run RUN from its last completed round."),
    as_json: bool = typer.Option(False, "--json", help="JSON events on stdout, one a line."),
):
    """Fine-tune MODEL on several devices at once, each on its own copy of --data, averaged by Flower
    each round; the fleet run (per-round global models, per-device runs, final/) is in $THOMAS_HOME/runs/<id>/."""
    fleet = _engine()
    from ..fleet.view import FleetView

    view = FleetView(as_json)
    if resume:
        fleet.resume(resume, view, note)
        return
    if not model or not data or not devices:
        raise typer.BadParameter("give MODEL, --data and --devices (or --resume RUN)")
    opts = {"model": model, "data": data, "devices": devices, "rounds": rounds, "min_devices": min_devices,
            "fraction": fraction, "strategy": strategy, "bn": bn, "keep": keep, "width": width, "timeout": timeout,
            "mu": mu,
            "central": str(central_data) if central_data else None,
            "job": _job(layers, local_epochs, batch, lr, optimizer, backend, seed, sets)}
    fleet.start(opts, target(), view, note)
