"""`thomas fleet`: one model fine-tuned over many phones, each on its own data, through Flower
(docs/FLEET.md). Only thomas_cli/commands/fleet.py imports this package, and Flower (`flwr`, the
`fleet` extra) is imported only when a fleet runs.

    plan.py     --devices, checks (dataset on each device, same classes, options), base/ and fleet.json
    client.py   one device's round (push, an ordinary finetune run, pull) and the Flower ClientApp
    server.py   Flower's strategy (subclassed to record rounds and enforce --min-devices), the runtime
    central.py  --central-data: the global model evaluated here with the numpy engine
    record.py   the fleet run's folder: fleet.json, run.json, rounds/*.npz, final/
    view.py     the table per round, --json events

    doc = start(opts, global_target, view, note)      # a new fleet run, to its end
    doc = resume("20261206-223344-ab12", view, note)  # from its last completed round
"""
from __future__ import annotations

from pathlib import Path

from device_agent.errors import ThomasError

from . import record
from .plan import check_options, prepare, resolve_devices


def start(opts: dict, tgt, view, note) -> dict:
    check_options(opts["rounds"], opts["min_devices"], opts["fraction"], opts["strategy"], opts["bn"], opts["keep"],
                  opts.get("mu"))
    if opts.get("central") and not Path(opts["central"]).exists():
        raise ThomasError(f"--central-data {opts['central']}: no such folder or .npz file")
    targets = resolve_devices(opts["devices"], tgt)
    doc = prepare(opts, targets, note)
    return _go(doc, view)


def resume(run_id: str, view, note) -> dict:
    doc = record.load(run_id)
    if doc["status"] == "done":
        raise ThomasError(f"fleet run {run_id} is done ({doc['rounds_done']} of {doc['rounds']} rounds): nothing "
                          f"to resume")
    record.settle(doc, "running")
    return _go(doc, view)


def _go(doc: dict, view) -> dict:
    from .central import central_eval
    from .server import FleetStopped, run_fleet

    central = central_eval(doc, Path(doc["central"])) if doc.get("central") else None
    view.start(doc, resumed_from=int(doc.get("rounds_done", 0)))
    run_id = doc["id"]
    try:
        doc = run_fleet(doc, view, central)
    except FleetStopped as e:
        doc = record.load(run_id)
        record.settle(doc, "stopped", str(e))
        raise ThomasError(f"the fleet stopped: {e}; the {doc['rounds_done']} rounds done are kept in "
                          f"{record.fleet_dir(run_id)}; `thomas fleet finetune --resume {run_id}` continues") from None
    except KeyboardInterrupt:
        record.settle(record.load(run_id), "interrupted", "interrupted on the host")
        raise
    except ThomasError as e:
        record.settle(record.load(run_id), "error", str(e))
        raise
    record.settle(doc, "done")
    view.done(doc)
    return doc
