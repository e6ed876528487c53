"""Runs: start, follow, attach, mirror, pull. The ONLY writer of the host's run records.

    rec = new_run(s, model_meta, data_meta, fields)      # a training run's record (TrainJob checked)
    done = run_job(s, rec, on_event=view)                # start, mirror, pull final/ best/: its DoneEvent
    done = attach_run(s, rec, on_event=view)             # follow a daemon run again after a drop
    res = record_call(s, rec, args, on_event)            # a bench / eval run: one agent call, mirrored
    pull_run(t, run_id, ["ckpt"])                        # files of the run into the host's folder

$THOMAS_HOME/runs/<id>/ holds run.json (the record: device, job, status, summary), events.jsonl (every
event received, appended as it arrives: the mirror), agent.log (the agent's other output) and what is
pulled from the device (job.json, metrics.jsonl, confusion.json, final/, best/, ckpt/, bench.json,
eval.json). Events read back from the mirror are typed (protocol.parse_event).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from device_agent.errors import ThomasError
from device_agent.protocol import DoneEvent, ErrorEvent, Event, TrainJob, event_of, parse_event

from . import store
from .device import DEFAULT_TIMEOUT, CallResult, RunFailed, Session, Target, open_transport, proc_outcome
from .store import run_dir, runs_dir  # noqa: F401  (where a run lives: part of this module's API)
from .transport.base import DeviceError, DeviceLost, Transport, WatchdogTimeout, check_rel, confined

RUN_FILES = ("job.json", "metrics.jsonl", "confusion.json")
SUMMARY = ("epochs", "steps", "train_loss", "train_acc", "val_loss", "val_acc", "ms", "best_epoch", "select",
           "best_metric", "stopped_early")
OnEvent = Callable[[Event], None]


# ============================================================================ the records
def load_run(run_id: str) -> dict:
    rec = store.read_json(run_dir(run_id) / "run.json")
    if rec is None:
        raise store.StoreError(f"no run '{run_id}' in {runs_dir()} (see `thomas runs list`)")
    return rec


def save_run(rec: dict) -> None:
    store.write_json(run_dir(rec["id"]) / "run.json", rec)


def create(rec: dict) -> Path:
    """A new run's folder with its record; returns the folder."""
    host = run_dir(rec["id"])
    host.mkdir(parents=True, exist_ok=True)
    save_run(rec)
    return host


def settle(rec: dict, status: str, error: str | None = None, **fields) -> None:
    """Record how a run ended (done / error / lost / timeout / interrupted / cancelled) and save it."""
    rec.update(status=status, error=error, **fields)
    save_run(rec)


def list_runs() -> list[dict]:
    d = runs_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        rec = store.read_json(p / "run.json") if p.is_dir() else None
        if rec is not None:
            out.append(rec)
    return out


def remove_run(run_id: str) -> None:
    shutil.rmtree(run_dir(run_id))


def read_events(run_id: str) -> list[Event]:
    """The mirror's events, typed; a line cut off by a crash (or not an event) is skipped."""
    p = run_dir(run_id) / "events.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(parse_event(line))
        except ValueError:
            continue          # the rest is still good
    return out


def write_result(run_id: str, name: str, doc: dict) -> Path:
    """A run's result file (bench.json, eval.json) in its host folder."""
    path = run_dir(run_id) / name
    store.write_json(path, doc)
    return path


def read_result(run_id: str, name: str):
    return store.read_json(run_dir(run_id) / name)


# ============================================================================ training runs
def new_run(s: Session, model_meta: dict, data_meta: dict, fields: dict) -> dict:
    """The run record of a job on models/<model> and data/<data> (a fresh head when the class
    counts differ). Run it with run_job(s, rec, on_event=...)."""
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


def resume_record(run_id: str) -> dict:
    """The record of run `run_id` with its job set to resume from the last checkpoint (not saved yet:
    run_job saves it); check_device before running it."""
    rec = load_run(run_id)
    rec["job"] = TrainJob.from_dict(dict(rec["job"], resume=True)).to_dict()
    return rec


def check_device(rec: dict, t: Transport) -> None:
    """One line when run `rec` does not live on device `t` (its checkpoints are there)."""
    if store.device_key(t.describe()) != store.device_key(rec["device"]):
        d = rec["device"]
        raise ThomasError(f"run {rec['id']} lives on {d['transport']} {d['serial']} ({d['root']}); "
                          f"select that device (-s / --device / --device-root)")


def run_job(s: Session, rec: dict, on_event: OnEvent | None = None,
            timeout: float | None = DEFAULT_TIMEOUT) -> DoneEvent:
    """Run rec["job"] (a TrainJob dict whose out is runs/<id>) on the device; mirror every event to
    $THOMAS_HOME/runs/<id>/events.jsonl as it arrives; pull the final and best models and metrics.
    Returns the `done` event; every failure updates run.json and keeps the events received."""
    run_id = rec["id"]
    host = run_dir(run_id)
    host.mkdir(parents=True, exist_ok=True)
    store.write_json(host / "job.json", rec["job"])
    job_rel = f"jobs/{run_id}.json"
    s.t.write_bytes(job_rel, (json.dumps(rec["job"], indent=1) + "\n").encode())
    rec.update(status="running", error=None)
    rec.pop("daemon_job", None)
    save_run(rec)

    def started(proc) -> None:
        if proc.job is not None:
            rec["daemon_job"] = proc.job     # `thomas runs attach` follows it after a drop
            save_run(rec)

    res = _mirror(s, rec, lambda ev, log: s.call(["run", job_rel], on_event=ev, on_log=log, timeout=timeout,
                                                 on_start=started), on_event)
    return _settle_training(s, rec, res)


def attach_run(s: Session, rec: dict, on_event: OnEvent | None = None,
               timeout: float | None = DEFAULT_TIMEOUT) -> DoneEvent:
    """Follow a run still going on a daemon (after the host dropped or was closed): the events the
    host's mirror lacks are replayed (each exactly once), then the run is followed to its end."""
    job = rec.get("daemon_job")
    if not job or not hasattr(s.t, "attach_agent"):
        raise ThomasError(f"run {rec['id']} was not started through a THOMAS daemon: nothing to attach to "
                          f"(shell and local runs end with their connection; `thomas finetune --resume {rec['id']}`)")
    seen = _mirrored_events(rec["id"])
    rec.update(status="running", error=None)
    save_run(rec)
    try:
        proc = s.t.attach_agent(job, events=seen)
    except ThomasError as e:
        if getattr(e, "code", "") == "no_job":
            raise ThomasError(f"the daemon on {s.t.serial} no longer knows job {job} of run {rec['id']} (it was "
                              f"restarted or the job is too old); `thomas finetune --resume {rec['id']}`") from None
        raise
    res = _mirror(s, rec, lambda ev, log: s.follow(proc, on_event=ev, on_log=log, timeout=timeout), on_event)
    return _settle_training(s, rec, res)


def _mirrored_events(run_id: str) -> int:
    """How many events the mirror holds (the daemon replays from there). A host killed mid-write leaves
    half a line: it is dropped (the daemon replays that event whole)."""
    mirror = run_dir(run_id) / "events.jsonl"
    if not mirror.is_file():
        return 0
    data = mirror.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(mirror, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[:data.rfind(b"\n") + 1]
    return sum(1 for line in data.decode("utf-8", "replace").splitlines() if event_of(line) is not None)


def _mirror(s: Session, rec: dict, stream: Callable, on_event: OnEvent | None) -> CallResult:
    """Run `stream(event, log)` appending events/logs to the host's run folder; a failure to reach the
    end (lost, watchdog, Ctrl-C, any ThomasError) settles the record and says what is kept."""
    run_id = rec["id"]
    host = run_dir(run_id)
    count = 0
    with open(host / "events.jsonl", "a") as evf, open(host / "agent.log", "a") as logf:
        def event(ev: Event) -> None:
            nonlocal count
            count += 1
            evf.write(ev.to_json() + "\n")
            evf.flush()
            if on_event:
                on_event(ev)

        def log(line: str) -> None:
            logf.write(line + "\n")
            logf.flush()

        try:
            res = stream(event, log)
        except (DeviceLost, WatchdogTimeout) as e:
            kept = f"{count} events so far are kept in {host / 'events.jsonl'}"
            settle(rec, "lost" if isinstance(e, DeviceLost) else "timeout", str(e))
            if rec.get("daemon_job") and isinstance(e, DeviceLost):
                raise DeviceLost(f"{e}; {kept}; the run may still be going on the daemon: `thomas runs attach "
                                 f"{run_id}` follows it; if the daemon was stopped, restart it and "
                                 f"`thomas finetune --resume {run_id}`") from None
            raise type(e)(f"{e}; {kept}; `thomas finetune --resume {run_id}` continues from the last "
                          f"checkpoint") from None
        except KeyboardInterrupt:
            settle(rec, "interrupted", "interrupted on the host")
            raise
        except ThomasError as e:
            settle(rec, "error", str(e))
            raise
    return res


def _settle_training(s: Session, rec: dict, res: CallResult) -> DoneEvent:
    """The end of a training run's stream: an error event, no done, or done (then final/, best/ and the
    metrics are pulled and the summary recorded)."""
    run_id, last = rec["id"], res.last
    rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(last, ErrorEvent):
        settle(rec, "error", f"{last.code}: {last.message}")
        raise RunFailed(last.code, f"run {run_id} failed on {s.t.serial}: {last.message}")
    if not isinstance(last, DoneEvent):
        settle(rec, "error", f"agent ended ({res.returncode}) without done/error")
        raise DeviceError(f"the agent on {s.t.serial} ended ({proc_outcome(res.returncode)}) without a done or "
                          f"error event: {res.tail()}; {len(res.events)} events so far are kept in "
                          f"{run_dir(run_id) / 'events.jsonl'}")
    pull_run(s.t, run_id, ["final", "best", *RUN_FILES])      # best/: the best epoch's model, when it has one
    settle(rec, "done", None, summary={k: getattr(last, k) for k in SUMMARY})
    return last


# ============================================================================ bench and eval runs
def record_call(s: Session, rec: dict, args: list[str], on_event: OnEvent | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> CallResult:
    """One agent call of a run (bench, eval) whose record exists (create): every event is mirrored to
    events.jsonl; a ThomasError on the way marks it failed. The caller settles it (finish / settle)."""
    with open(run_dir(rec["id"]) / "events.jsonl", "a") as evf:
        def event(ev: Event) -> None:
            evf.write(ev.to_json() + "\n")
            evf.flush()
            if on_event:
                on_event(ev)

        try:
            return s.call(args, on_event=event, timeout=timeout)
        except ThomasError as e:
            settle(rec, "error", str(e))
            raise


def finish(rec: dict, summary: dict, **fields) -> None:
    """A bench or eval run that ended with its result."""
    rec.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"), **fields, summary=summary)
    save_run(rec)


def discard(s: Session, run_id: str) -> None:
    """Remove a run the agent refused at once (bad input): nothing of it is kept, here or there."""
    s.t.remove(f"runs/{run_id}")
    remove_run(run_id)


# ============================================================================ runs on their device
def transport_for(rec: dict, target: Target | None = None, note=None) -> Transport:
    """The device the run lives on (the global options may name another root or device; their --python
    is used for it)."""
    d = rec["device"]
    python = (target.python if target else None) or d.get("python")
    if d["transport"] == "local":
        return open_transport(Target(device="local", root=d["root"], python=python))
    if d["transport"] == "daemon":
        return open_transport(Target(serial=d["serial"], device="adb", mode="daemon"), note=note)
    return open_transport(Target(serial=d["serial"], device="adb", root=d["root"], python=python,
                                 su=d.get("su", False), mode="shell"))


def daemon_job(rec: dict) -> str:
    """The daemon job of a run started through the Termux daemon (one line for any other run)."""
    job = rec.get("daemon_job")
    if not job:
        raise ThomasError(f"run {rec['id']} was not started through a THOMAS daemon: shell and local runs stop "
                          f"with their connection (Ctrl-C)")
    return job


def cancel_run(rec: dict, t: Transport) -> str:
    """Stop a daemon run; returns the job's state. A run that stopped is recorded as cancelled."""
    job = daemon_job(rec)
    state = t.cancel_job(job)
    if state in ("running", "queued"):
        raise ThomasError(f"run {rec['id']} (daemon job {job}) is still {state} on {t.serial}; it is being stopped "
                          f"(SIGKILL follows in 5 s): check with `thomas runs cancel {rec['id']}` again")
    if rec.get("status") in ("running", "lost", "timeout", "interrupted"):
        settle(rec, "cancelled", f"cancelled on the daemon ({state})")
    return state


def pull_run(t: Transport, run_id: str, paths: list[str] | None = None) -> list[Path]:
    """Pull runs/<id>/<path> for each path (all of it when None) into the host's run folder.
    Paths may not leave the run folder; the host's events.jsonl (the mirror) is never replaced."""
    host = run_dir(run_id)
    remote = f"runs/{run_id}"
    if not t.exists(remote):
        raise DeviceError(f"run {run_id} is not on {t.serial} (under {t.root}/runs)")
    if paths is None:
        paths = [e.name for e in t.listdir(remote) if e.name != "events.jsonl"]
    written: list[Path] = []
    for p in paths:
        # NOTE: the device's own events.jsonl lands beside the host's mirror, never over it
        dest = confined(host, "events.device.jsonl" if p == "events.jsonl" else p, "run path")
        if t.exists(f"{remote}/{check_rel(p, 'run path')}"):
            written += t.pull_tree(f"{remote}/{p}", dest)
    return written


def remove_everywhere(rec: dict, keep_device: bool, target: Target | None = None, note=None,
                      warn: Callable[[str], None] | None = None) -> None:
    """`thomas runs rm`: the device's run folder and job file (unless keep_device), then the host's copy;
    a device that cannot be reached is warned about, the host's copy goes anyway."""
    if not keep_device and rec.get("kind") != "fleet":   # a fleet run's device runs are runs of their own
        try:
            t = transport_for(rec, target, note)
            t.remove(f"runs/{rec['id']}")
            t.remove(f"jobs/{rec['id']}.json")
        except DeviceError as e:
            if warn:
                warn(f"the device copy stays ({e}); the host copy is removed")
    remove_run(rec["id"])
