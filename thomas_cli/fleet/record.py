"""A fleet run on this computer: $THOMAS_HOME/runs/<id>/ (the fleet engine is its only writer).

    run.json          the run record `thomas runs list/show` read (kind "fleet", status, summary)
    fleet.json        the fleet: job fields, devices, options, state, one entry per completed round
    base/             the starting package (the model with its head for the fleet's classes)
    rounds/round-K.npz  the global arrays after round K (the last `keep` rounds), and the strategy's
                      server state (FedAdam's moments) under "state/..." keys
    devices/<i>/local.npz  what device i keeps for itself between rounds (--bn local: its BN statistics)
    final/            the global model after the last round, an ordinary package (export/infer/eval)
    fleet.log         Flower's and Ray's own logs, and every device's notes
    tmp/              Ray's temp dir while the fleet runs

Rounds are numbered from 1; a round is recorded (npz first, then fleet.json) only once it is complete,
so `--resume` continues from the last recorded round.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from device_agent.fsutil import atomic_write
from device_agent.limits import load_npz
from device_agent.model.graph import Graph, load_package, save_package

from .. import store

STATE = "state/"          # npz keys of the strategy's server state (never sent to a device)


def fleet_dir(run_id: str) -> Path:
    return store.run_dir(run_id)


def load(run_id: str) -> dict:
    doc = store.read_json(fleet_dir(run_id) / "fleet.json")
    if doc is None:
        raise store.StoreError(f"run '{run_id}' is not a fleet run (no fleet.json in {fleet_dir(run_id)})")
    return doc


def save(doc: dict) -> None:
    """fleet.json and the run.json `thomas runs list/show` read."""
    d = fleet_dir(doc["id"])
    store.write_json(d / "fleet.json", doc)
    hist = doc.get("history", [])
    last = hist[-1] if hist else {}
    store.write_json(d / "run.json", {
        "id": doc["id"], "kind": "fleet", "created": doc["created"], "status": doc["status"],
        "error": doc.get("error"), "model": doc["model"], "data": doc["data"],
        "stage": f"fleet {doc['strategy']}",
        "device": {"transport": "fleet", "serial": f"{len(doc['devices'])} devices", "root": ""},
        "job": dict(doc["job"], rounds=doc["rounds"]),
        "summary": {"epochs": len(hist), "rounds": len(hist), "train_loss": last.get("train_loss"),
                    "train_acc": last.get("train_acc"), "val_loss": last.get("val_loss"),
                    "val_acc": last.get("val_acc"), "central_acc": last.get("central_acc")},
        **({"finished": doc["finished"]} if doc.get("finished") else {})})


def settle(doc: dict, status: str, error: str | None = None) -> None:
    doc.update(status=status, error=error)
    if status != "running":
        doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save(doc)


# ============================================================================ arrays
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez through a temp file and one rename (fsutil.atomic_write): a killed host never leaves
    half a round."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()}),
                 suffix=".npz")


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """An npz written by save_npz (never unpickled)."""
    return load_npz(path, store.StoreError)


def round_path(run_id: str, rnd: int) -> Path:
    return fleet_dir(run_id) / "rounds" / f"round-{rnd}.npz"


def save_round(doc: dict, rnd: int, arrays: dict, state: dict, entry: dict) -> None:
    """Round `rnd` complete: its global arrays (+ the strategy's state) then its fleet.json entry; only
    the last `keep` round files stay."""
    save_npz(round_path(doc["id"], rnd), dict(arrays, **{STATE + k: v for k, v in state.items()}))
    doc["history"].append(entry)
    doc["rounds_done"] = rnd
    save(doc)
    for old in range(1, rnd - int(doc["keep"]) + 1):
        round_path(doc["id"], old).unlink(missing_ok=True)


def last_round(doc: dict) -> tuple[int, dict, dict]:
    """(round, global arrays, strategy state) of the last completed round; round 0 = the base model."""
    rnd = int(doc.get("rounds_done", 0))
    if rnd == 0:
        return 0, travel_arrays(base_graph(doc["id"]), doc["travel"]), {}
    z = load_arrays(round_path(doc["id"], rnd))
    arrays = {k: v for k, v in z.items() if not k.startswith(STATE)}
    state = {k[len(STATE):]: v for k, v in z.items() if k.startswith(STATE)}
    return rnd, arrays, state


# ============================================================================ packages
def base_graph(run_id: str) -> Graph:
    return load_package(fleet_dir(run_id) / "base")


def travel_arrays(g: Graph, keys: list[str]) -> dict[str, np.ndarray]:
    return {k: np.asarray(g.weights[k]) for k in keys}


def with_arrays(g: Graph, arrays: dict[str, np.ndarray]) -> Graph:
    """`g` with some of its weights replaced (same names, shapes and dtypes: checked)."""
    for k, a in arrays.items():
        have = g.weights.get(k)
        if have is None or tuple(have.shape) != tuple(a.shape):
            raise store.StoreError(f"array '{k}' {tuple(a.shape)} does not fit the fleet's model "
                                   f"({None if have is None else tuple(have.shape)})")
        g.weights[k] = np.asarray(a, dtype=have.dtype)
    return g


def write_final(doc: dict, arrays: dict[str, np.ndarray]) -> Path:
    """final/: the base package with the global arrays, an ordinary package."""
    return save_package(with_arrays(base_graph(doc["id"]), arrays), fleet_dir(doc["id"]) / "final")


def append_log(log_path, line: str) -> None:
    """One line of the fleet run's fleet.log (each device's client writes its own lines)."""
    with open(log_path, "a") as f:
        f.write(line + "\n")


def open_log(log_path):
    """fleet.log opened for appending bytes (the server points fds 1 and 2 at it)."""
    return open(log_path, "ab")
