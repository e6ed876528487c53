"""One device's part of a round, and the Flower ClientApp that runs it (one supernode per device).

    arrays, metrics, info = train_round(doc, 2, 5, global_arrays, log)    # device 2, round 5

A round on a device: the global arrays are written into the fleet's base package (device_agent's own
save_package: the one writer of the format), with this device's own BN statistics when --bn local;
the package is pushed as models/fleet-<id> (skipped when the device holds that content), an ordinary
finetune run (runs.new_run/run_job, seed + round - 1) trains it for the local epochs on the device's
dataset, and its final/ is pulled: the arrays that travel go back to the server with the example
count and the run's metrics. The data never leaves the device; the device is reached through the
same Session and transports as `thomas finetune` (daemon, shell or local).
"""
from __future__ import annotations

import math
import time

import numpy as np

from device_agent.errors import ThomasError
from device_agent.model.graph import load_package

from .. import store
from ..deploy import push_model, tree_bytes
from ..device import Session
from ..runs import new_run, run_job, transport_for
from . import record
from .plan import device_dataset

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def local_path(doc: dict, idx: int):
    return record.fleet_dir(doc["id"]) / "devices" / str(idx) / "local.npz"


def train_round(doc: dict, idx: int, rnd: int, arrays: dict, log,
                mu: float | None = None) -> tuple[dict, dict, dict]:
    """(arrays back, metrics {num-examples, train/val loss/acc, bytes, seconds}, info {device, serial,
    run}) of device `idx` in round `rnd`; `mu`: FedProx's proximal-mu (the job's prox_mu: the agent adds
    mu·(w - w0) to the gradients, w0 = the global weights it was pushed). Raises ThomasError (or OSError)
    when the device fails."""
    t0 = time.monotonic()
    dev = doc["devices"][idx]
    s = Session(transport_for({"device": dev["describe"]}, note=log), note=log)
    g = record.with_arrays(record.base_graph(doc["id"]), arrays)
    own = local_path(doc, idx)
    if doc["local"] and own.is_file():
        record.with_arrays(g, record.load_arrays(own))
    pushed = push_model(s, g, doc["device_model"], f"fleet {doc['id']} round {rnd}")
    dmeta = device_dataset(s, doc["data"])
    fields = dict(doc["job"], seed=int(doc["job"].get("seed", 0)) + rnd - 1)
    if mu:
        fields["prox_mu"] = float(mu)
    rec = new_run(s, dict(pushed, name=doc["device_model"]), dmeta, fields)
    rec["fleet"] = {"run": doc["id"], "round": rnd, "device": idx}
    log(f"round {rnd}: device {idx} ({s.t.serial}) runs {rec['id']}")
    done = run_job(s, rec, timeout=doc.get("timeout"))
    final = load_package(store.run_dir(rec["id"]) / "final")
    out = {k: np.asarray(final.weights[k]) for k in doc["travel"]}
    if doc["local"]:
        record.save_npz(own, {k: np.asarray(final.weights[k]) for k in doc["local"]})
    n = dmeta.get("train") or dev.get("train") or done.steps
    moved = (0 if pushed.get("skipped") else int(pushed.get("bytes") or 0)) + tree_bytes(store.run_dir(rec["id"]))
    metrics = {"num-examples": int(n), "bytes": int(moved), "seconds": time.monotonic() - t0}
    for k in METRICS:
        v = getattr(done, k)
        metrics[k] = float("nan") if v is None else float(v)
    return out, metrics, {"device": idx, "serial": s.t.serial, "run": rec["id"]}


def client_app(log_path: str):
    """The ClientApp: supernode i (node_config partition-id) drives device i of the fleet. A device that
    fails answers with its error in the `info` record (no arrays): the server leaves it out of the round."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = msg.content["config"]
        idx = int(context.node_config["partition-id"])
        rnd = int(cfg["fleet-round"])
        doc = record.load(str(cfg["fleet-run"]))

        def log(line: str) -> None:
            record.append_log(log_path, f"[device {idx}] {line}")

        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        try:
            mu = float(cfg["proximal-mu"]) if "proximal-mu" in cfg else None      # FedProx's config key
            out, metrics, info = train_round(doc, idx, rnd, arrays, log, mu)
        except (ThomasError, OSError) as e:
            log(f"round {rnd}: failed: {e}")
            return Message(RecordDict({"info": ConfigRecord({"device": idx, "error": str(e) or type(e).__name__})}),
                           reply_to=msg)
        rec = RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out.items()}),
                          "metrics": MetricRecord(metrics), "info": ConfigRecord(info)})
        return Message(rec, reply_to=msg)

    return app


def mean_of(rows: list[dict], key: str) -> float | None:
    """The example-weighted mean of `key` over device metrics (NaN values, e.g. no val split, skipped)."""
    pairs = [(r["num-examples"], r[key]) for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    total = sum(w for w, _ in pairs)
    return None if not pairs or total <= 0 else sum(w * v for w, v in pairs) / total
