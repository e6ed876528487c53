"""Before any round: which devices (`--devices`), each one reachable with the dataset, the same classes
everywhere, the starting model on this computer, and the fleet run's record. Every problem is one line.

    targets = resolve_devices("local,emulator-5554", Target())
    doc = prepare(opts, targets, note)          # checks everything, writes runs/<id>/{fleet.json, base/}
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from device_agent.errors import DataError, JobError, ThomasError
from device_agent.limits import parse_json
from device_agent.model.builder import replace_head
from device_agent.model.graph import Graph, load_package, save_package
from device_agent.model.heads import num_classes
from device_agent.protocol import TrainJob
from device_agent.training.stages import trainable_params

from .. import store, zoo
from ..deploy import device_meta
from ..device import Session, Target, open_transport
from ..resolve import check_fit, pull_model, run_package
from . import record

STRATEGIES = ("fedavg", "fedprox", "fedadam")
BN_MODES = ("local", "global")
PROX_MU = 0.01            # --strategy fedprox without --proximal-mu


def check_options(rounds: int, min_devices: int, fraction: float, strategy: str, bn: str, keep: int,
                  mu: float | None = None) -> None:
    if rounds < 1:
        raise ThomasError(f"--rounds must be >= 1, got {rounds}")
    if not 0 < fraction <= 1:
        raise ThomasError(f"--fraction must be in (0, 1], got {fraction:g}")
    if min_devices < 1:
        raise ThomasError(f"--min-devices must be >= 1, got {min_devices}")
    if strategy not in STRATEGIES:
        raise ThomasError(f"--strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if bn not in BN_MODES:
        raise ThomasError(f"--bn must be local or global, got '{bn}'")
    if keep < 1:
        raise ThomasError(f"--keep must be >= 1, got {keep}")
    if mu is not None and strategy != "fedprox":
        raise ThomasError(f"--proximal-mu is FedProx's: give --strategy fedprox (got '{strategy}')")
    if mu is not None and not (mu >= 0 and mu < float("inf")):
        raise ThomasError(f"--proximal-mu must be a number >= 0, got {mu:g}")


# ============================================================================ devices
def resolve_devices(spec: str, tgt: Target) -> list[Target]:
    """`--devices`: adb serials, `local` (the local device) and `all` (every attached phone), comma
    separated, parsed as push-data's (targets.py); with --mode daemon each phone must also be paired."""
    from ..targets import device_targets
    from ..transport import daemon

    out = device_targets(spec, tgt)
    for t in out:
        if t.device == "adb" and tgt.mode == "daemon" and daemon.load_pairing(t.serial) is None:
            raise ThomasError(f"device '{t.serial}' is not paired with a THOMAS daemon (`thomas -s {t.serial} pair`)")
    return out


def device_dataset(s: Session, data: str) -> dict:
    """The dataset's meta on one device (classes, counts); one line when it has none."""
    store.check_name(data, "dataset")
    rel = f"data/{data}"
    if not s.t.exists(f"{rel}/dataset.json"):
        raise DataError(f"device {s.t.serial} has no dataset '{data}' (push it there with "
                        f"`thomas -s {s.t.serial} push-data SRC --name {data}`)")
    meta = device_meta(s.t, rel) or {}
    if "classes" not in meta or meta.get("train") is None:
        doc = parse_json(s.t.read_bytes(f"{rel}/dataset.json"), f"{s.t.serial}:{rel}/dataset.json", DataError)
        counts = {k: int(v.get("count", 0)) for k, v in doc.get("splits", {}).items()}
        meta = dict(meta, classes=meta.get("classes") or doc.get("classes") or
                    json.loads(s.t.read_bytes(f"{rel}/classes.json")), train=counts.get("train"),
                    val=counts.get("val"), height=doc.get("height"), width=doc.get("width"),
                    channels=doc.get("channels"))
    return dict(meta, name=data)


def open_devices(targets: list[Target], data: str, note) -> list[dict]:
    """Reach every device (handshake: the agent is pushed where needed), check its dataset and that
    every device holds the same classes. Returns one entry per device, in --devices order."""
    devices = []
    for i, tg in enumerate(targets):
        s = Session(open_transport(tg, note), note)
        s.handshake()
        meta = device_dataset(s, data)
        devices.append({"index": i, "serial": s.t.serial, "kind": s.t.kind, "describe": s.t.describe(),
                        "classes": list(meta["classes"]), "train": meta.get("train"), "val": meta.get("val"),
                        "height": meta.get("height"), "width": meta.get("width"),
                        "channels": meta.get("channels")})
    first = devices[0]
    for d in devices[1:]:
        if d["classes"] != first["classes"]:
            raise DataError(f"dataset '{data}' has classes {_show(d['classes'])} on {d['serial']} but "
                            f"{_show(first['classes'])} on {first['serial']}: every device must hold the same "
                            f"classes in the same order")
    return devices


def _show(classes: list) -> str:
    return "[" + ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "") + "]"


# ============================================================================ the starting model
def base_model(model: str, data: str, devices: list[dict], targets: list[Target], width: float, seed: int,
               note) -> Graph:
    """The model every device starts from, built here: a run of this computer, a package directory, a
    model on a device of the fleet (pulled) or a zoo name (built at the data's size and classes); with
    a fresh head (seeded) when its classes are not the data's."""
    d0 = devices[0]
    classes = d0["classes"]
    run_pkg = run_package(model, note=note)
    if run_pkg is not None:
        g = load_package(run_pkg[0])
    elif Path(model).is_dir():
        g = load_package(Path(model))
    else:
        g = _device_or_zoo(model, devices, targets, width, seed, note)
    if num_classes(g) != len(classes):
        try:
            g = replace_head(g, len(classes), seed=seed, labels=classes)
        except ValueError as e:
            raise JobError(f"model '{model}' predicts {num_classes(g)} classes, the data has {len(classes)} "
                           f"and its head cannot be replaced ({e})") from None
    shapes = g.infer_shapes(batch=1)
    inp = list(shapes[g.inputs[0].name][1:])
    for d in devices:
        check_fit({"name": f"{data} on {d['serial']}", "height": d["height"],
                   "width": d["width"], "channels": d["channels"]}, {"name": model, "input": inp})
    return g


def _device_or_zoo(model: str, devices, targets, width: float, seed: int, note) -> Graph:
    if store.NAME.match(model):
        for d, tg in zip(devices, targets):
            t = open_transport(tg, note)
            if t.exists(f"models/{model}/model.json"):
                with tempfile.TemporaryDirectory(prefix="thomas-fleet-") as tmp:
                    return load_package(pull_model(t, model, Path(tmp)))
    if model in zoo.ZOO:
        d0 = devices[0]
        h, w = d0.get("height"), d0.get("width")
        if h is None or h != w:
            raise DataError(f"zoo models take square inputs, the data is {h}x{w}: push it with --size S")
        return zoo.build(model, num_classes=len(d0["classes"]), size=h, width=width, seed=seed)
    raise ThomasError(f"no model '{model}' on any device of the fleet, and it is no run, package directory "
                      f"or zoo name ({', '.join(zoo.ZOO)})")


def travel_keys(g: Graph, layers, bn: str) -> tuple[list[str], list[str]]:
    """(what travels: the trainable parameters of the stage, plus their layers' BN statistics with
    --bn global; what each device keeps: those statistics with --bn local)."""
    trainable = trainable_params(g, layers)
    groups = {g.params[k].group for k in trainable}
    stats = sorted(k for k, p in g.params.items() if not p.trainable and p.group in groups)
    keys = sorted(trainable)
    return (keys + stats, []) if bn == "global" else (keys, stats)


# ============================================================================ the record
def prepare(opts: dict, targets: list[Target], note) -> dict:
    """Check everything, then create the fleet run: runs/<id>/{fleet.json, run.json, base/}."""
    job = dict(opts["job"])
    TrainJob.from_dict(dict(job, model="m", data="d", out="o"))      # JobError naming the field
    if job.get("init") == "scratch":
        raise JobError("init 'scratch' would re-initialise the model in every round: train the starting model "
                       "first (`thomas finetune MODEL --init scratch`) and give its run as MODEL")
    if "prox_mu" in job:
        raise JobError("job field 'prox_mu' is set by thomas fleet (--strategy fedprox --proximal-mu MU)")
    if opts["min_devices"] > len(targets):
        raise ThomasError(f"--min-devices {opts['min_devices']} is more than the fleet's {len(targets)} "
                          f"device{'s' if len(targets) > 1 else ''}")
    devices = open_devices(targets, opts["data"], note)
    g = base_model(opts["model"], opts["data"], devices, targets, opts.get("width", 1.0), job.get("seed", 0), note)
    travel, local = travel_keys(g, job.get("layers", "last"), opts["bn"])
    run_id = store.new_run_id()
    doc = {"id": run_id, "kind": "fleet", "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running",
           "error": None, "model": opts["model"], "data": opts["data"], "device_model": f"fleet-{run_id}",
           "job": job, "rounds": opts["rounds"], "strategy": opts["strategy"], "min_devices": opts["min_devices"],
           "fraction": opts["fraction"], "bn": opts["bn"], "keep": opts["keep"], "central": opts.get("central"),
           "proximal_mu": (opts.get("mu") if opts.get("mu") is not None else PROX_MU)
           if opts["strategy"] == "fedprox" else None,
           "timeout": opts.get("timeout"), "travel": travel, "local": local, "devices": devices,
           "classes": devices[0]["classes"], "rounds_done": 0, "history": []}
    d = record.fleet_dir(run_id)
    d.mkdir(parents=True, exist_ok=True)
    save_package(g, d / "base")
    record.save(doc)
    return doc
