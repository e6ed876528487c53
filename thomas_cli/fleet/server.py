"""The server side: Flower's own strategy (FedAvg, FedProx, FedAdam) through Flower's simulation runtime
on this computer, one supernode per device (client.py), and what a fleet run records each round.

    run_fleet(doc, view)        # rounds doc["rounds_done"]+1 .. doc["rounds"]; raises FleetStopped

The strategy is Flower's, subclassed only to (a) number rounds across --resume, (b) leave out the
devices that failed (their reply carries an error, no arrays) and stop when fewer than --min-devices
replied, (c) record per-device metrics, and (d) save each round's global arrays (and FedAdam's moments)
once the round is complete. Flower's and Ray's logs go to the run's fleet.log; Ray's temp dir is the
run's tmp/ (through a short link in the system temp dir: Ray's socket paths must stay under 107 bytes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from device_agent.errors import ThomasError

from . import record
from .client import METRICS, client_app, mean_of

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")     # NOTE: Flower reports usage to its servers otherwise
TIMEOUT = 7 * 24 * 3600.0                                # a round waits for its devices (their watchdog stops hangs)


class FleetStopped(ThomasError):
    """Fewer than --min-devices devices replied in a round: the fleet stops, the rounds done are kept."""


def strategy_class(name: str):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[name]

    class Fleet(FleetRounds, base):
        pass

    return Fleet


class FleetRounds:
    """The mixin over a Flower strategy (see the module doc)."""

    def setup(self, doc: dict, view, central) -> None:
        self.doc, self.view, self.central = doc, view, central
        self.offset = int(doc.get("rounds_done", 0))
        self.stopped: str | None = None
        self.interrupted = False          # a first Ctrl-C: stop before the next round
        self.pending: dict | None = None
        self.t0 = time.monotonic()

    def configure_train(self, server_round, arrays, config, grid):
        rnd = server_round + self.offset
        if self.interrupted:
            self.stopped = f"interrupted on this computer (Ctrl-C) after round {rnd - 1}"
            raise FleetStopped(self.stopped)
        # NOTE: Flower sizes the sample from the nodes registered at this moment, and the simulation registers
        # its supernodes while the server starts: wait for every device's, or round 1 may ask fewer
        while len(list(grid.get_node_ids())) < len(self.doc["devices"]):
            time.sleep(0.05)
        random.seed(int(self.doc["job"].get("seed", 0)) * 100003 + rnd)    # --fraction: the same devices on --resume
        config["fleet-round"] = rnd
        config["fleet-run"] = self.doc["id"]
        msgs = list(super().configure_train(rnd, arrays, config, grid))
        self.t0 = time.monotonic()
        self.view.round_start(rnd, len(msgs))
        return msgs

    def aggregate_train(self, server_round, replies):
        rnd = server_round + self.offset
        replies = list(replies)
        ok, rows, failed = [], [], []
        for m in replies:
            if m.has_error():
                failed.append({"device": None, "error": f"node {m.metadata.src_node_id}: {m.error.reason}"})
                continue
            info = m.content["info"]
            if "error" in info:
                failed.append({"device": int(info["device"]), "error": str(info["error"])})
                continue
            row = {k: (None if isinstance(v, float) and v != v else v)      # NaN: no val split
                   for k, v in next(iter(m.content.metric_records.values())).items()}
            row.update(device=int(info["device"]), serial=str(info["serial"]), run=str(info["run"]))
            ok.append(m)
            rows.append(row)
        for row in sorted(rows, key=lambda r: r["device"]):
            self.view.device_done(rnd, row)
        for f in failed:
            self.view.device_failed(rnd, f)
        need = int(self.doc["min_devices"])
        if len(ok) < need:
            why = "; ".join(f"device {f['device']}: {f['error']}" for f in failed) or "no device replied"
            self.stopped = (f"round {rnd}: {len(ok)} of {len(replies)} devices replied, --min-devices is {need} "
                            f"({why})")
            raise FleetStopped(self.stopped)
        arrays, metrics = super().aggregate_train(rnd, ok)
        self.pending = {"round": rnd, "devices": len(replies), "done": len(ok), "failed": failed,
                        "per_device": sorted(rows, key=lambda r: r["device"]),
                        **{k: mean_of(rows, k) for k in METRICS},
                        "bytes": int(sum(r["bytes"] for r in rows)), "seconds": time.monotonic() - self.t0}
        return arrays, metrics

    def server_state(self) -> dict:
        """FedAdam's (FedOpt's) moments, to be saved with the round; {} for FedAvg and FedProx."""
        out = {}
        for name in ("m_t", "v_t"):
            for k, v in (getattr(self, name, None) or {}).items():
                out[f"{name}/{k}"] = np.asarray(v)
        return out

    def restore_state(self, state: dict) -> None:
        for name in ("m_t", "v_t"):
            got = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + "/")}
            if got:
                setattr(self, name, got)

    def end_round(self, server_round: int, arrays) -> None:
        """Flower's evaluate_fn: round 0 is the starting model; after each round the central evaluation
        (when asked for), then the round is recorded (npz, then fleet.json) and shown."""
        from flwr.app import MetricRecord

        rnd = server_round + self.offset
        got = {k: a.numpy() for k, a in arrays.items()}
        res = self.central(got) if self.central is not None else None
        if server_round == 0:
            if res is not None and self.offset == 0:
                self.doc["central_start"] = res
            return None
        entry = dict(self.pending or {"round": rnd}, round=rnd)
        if res is not None:
            entry.update(central_acc=res["acc"], central_loss=res["loss"])
        record.save_round(self.doc, rnd, got, self.server_state(), entry)
        self.view.round_done(entry)
        return MetricRecord({k: v for k, v in (res or {}).items() if isinstance(v, (int, float))}) if res else None


def make_strategy(doc: dict, view, central):
    n = len(doc["devices"])
    kw = dict(fraction_train=float(doc["fraction"]), fraction_evaluate=0.0,
              min_train_nodes=min(n, int(doc["min_devices"])), min_available_nodes=n)
    if doc["strategy"] == "fedprox":
        kw["proximal_mu"] = float(doc["proximal_mu"])   # sent to the clients in each round's config
    s = strategy_class(doc["strategy"])(**kw)
    s.setup(doc, view, central)
    return s


@contextlib.contextmanager
def quiet(log_path: Path):
    """File descriptors 1 and 2 (Ray's and Flower's own output, native code included) go to the run's
    log; yields (stdout, stderr) files on the real ones for the view."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(1), os.dup(2)
    out, err = os.fdopen(os.dup(saved[0]), "w", buffering=1), os.fdopen(os.dup(saved[1]), "w", buffering=1)
    flwr_log = logging.getLogger("flwr")
    handlers = list(flwr_log.handlers)
    fh = logging.FileHandler(log_path)
    with record.open_log(log_path) as f:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    for h in handlers:
        flwr_log.removeHandler(h)
    flwr_log.addHandler(fh)
    try:
        yield out, err
    finally:
        flwr_log.removeHandler(fh)
        fh.close()
        for h in handlers:
            flwr_log.addHandler(h)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()
        err.close()


def ray_config(doc: dict, tmp_link: str) -> dict:
    n = len(doc["devices"])
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": n, "num_gpus": 0, "_temp_dir": tmp_link, "logging_level": logging.ERROR,
                          "log_to_driver": False, "object_store_memory": 128 * 2**20,
                          "configure_logging": True}}


def _on_sigint(strategy, view, doc: dict, temp: list[Path]):
    """Ctrl-C: the first stops the fleet before its next round (the devices finish this one); the second
    stops now — the record says interrupted, the rounds done are kept, Ray's processes die with this one
    (Ray ties them to it) and a device's run of this round is not waited for."""
    def handler(signum, frame) -> None:
        if not strategy.interrupted:
            strategy.interrupted = True
            view.note("Ctrl-C: the fleet stops after this round (Ctrl-C again: stop now); "
                      f"`thomas fleet finetune --resume {doc['id']}` continues")
            return
        fresh = record.load(doc["id"])
        record.settle(fresh, "interrupted", f"interrupted on this computer during round {fresh['rounds_done'] + 1}")
        view.note(f"stopped during round {fresh['rounds_done'] + 1}; the {fresh['rounds_done']} rounds done are "
                  f"kept; `thomas fleet finetune --resume {doc['id']}` continues")
        strategy.view = _Quiet()              # the round under way fails as Ray stops: nothing more is shown
        _ray_down()
        for p in temp:
            shutil.rmtree(p, ignore_errors=True)
        os._exit(130)           # NOTE: Flower's runtime swallows KeyboardInterrupt in its worker pool's join

    return handler


class _Quiet:
    """A view that shows nothing (after a second Ctrl-C)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _ray_down(wait: float = 15.0) -> None:
    """Stop this process's Ray processes (its agents outlive an os._exit otherwise), waiting at most `wait` s."""
    import threading

    import ray

    t = threading.Thread(target=ray.shutdown, daemon=True)
    t.start()
    t.join(wait)


def _sweep_links() -> None:
    """The links of fleets whose process was killed (their run's tmp/ is gone or they point nowhere)."""
    for p in Path(tempfile.gettempdir()).glob("thomas-ray-*"):
        link = p / "t"
        if p.is_dir() and (not link.is_symlink() or not link.exists()):
            shutil.rmtree(p, ignore_errors=True)


def run_fleet(doc: dict, view, central=None) -> dict:
    """Run the rounds left (doc["rounds_done"] + 1 .. doc["rounds"]) through Flower; returns the final
    global arrays (final/ written). Raises FleetStopped when a round has too few devices."""
    from flwr.app import Array, ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    d = record.fleet_dir(doc["id"])
    done, arrays, state = record.last_round(doc)
    tmp = d / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    _sweep_links()
    link = Path(tempfile.mkdtemp(prefix="thomas-ray-")) / "t"
    link.symlink_to(tmp.resolve())
    try:
        with quiet(d / "fleet.log") as (out, err):
            view.attach(out, err)
            strategy = make_strategy(doc, view, central)       # NOTE: Flower logs from its constructor
            strategy.restore_state(state)
            server = ServerApp()

            @server.main()
            def main(grid: Grid, context: Context) -> None:
                initial = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
                strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(doc["rounds"]) - done,
                               timeout=TIMEOUT, evaluate_fn=strategy.end_round)

            before = signal.signal(signal.SIGINT, _on_sigint(strategy, view, doc, [link.parent, tmp]))
            try:
                run_simulation(server_app=server, client_app=client_app(str(d / "fleet.log")),
                               num_supernodes=len(doc["devices"]), backend_config=ray_config(doc, str(link)))
            except (ThomasError, RuntimeError, SystemExit) as e:   # NOTE: Flower re-raises the server thread's
                if strategy.stopped:
                    raise FleetStopped(strategy.stopped) from None
                if isinstance(e, ThomasError):
                    raise
                if isinstance(e, SystemExit):       # Flower turns SIGTERM into SystemExit(15)
                    done_now = record.load(doc["id"])["rounds_done"]
                    raise ThomasError(f"the fleet was stopped ({e.code}) after round {done_now}; "
                                      f"`thomas fleet finetune --resume {doc['id']}` continues") from None
                raise ThomasError(f"the fleet's Flower runtime failed ({type(e).__name__}: {e}); "
                                  f"see {d / 'fleet.log'}") from None
            finally:
                signal.signal(signal.SIGINT, before)
                view.attach(None, None)
    finally:
        shutil.rmtree(link.parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if strategy.stopped:
        raise FleetStopped(strategy.stopped)
    doc = record.load(doc["id"])
    if int(doc.get("rounds_done", 0)) < int(doc["rounds"]):
        raise ThomasError(f"the fleet ended after round {doc.get('rounds_done', 0)} of {doc['rounds']}; "
                          f"see {d / 'fleet.log'}")
    _, final_arrays, _ = record.last_round(doc)
    record.write_final(doc, final_arrays)
    return doc
