"""Eval on a device: a model measured on a dataset split (accuracy, loss, per-class precision/recall, the
confusion matrix), computed by `python -m device_agent eval` (OpenCL when the device has it).

    doc = run_eval(s, "./my_package", "flowers", split="val")    # eval.json: the report + run id, source

Each eval is a run record (kind "eval", through runs.py): events.jsonl and eval.json (the whole report).
An input the agent refuses at once (bad data, model, job) leaves no record.
"""
from __future__ import annotations

import time

from device_agent.errors import DataError
from device_agent.evaluate import SPLITS
from device_agent.protocol import ErrorEvent, EvalReportEvent

from . import runs, store
from .deploy import push_model
from .device import CallResult, RunFailed, Session
from .resolve import check_data, eval_model

BACKENDS = ("auto", "opencl", "numpy")
USER_CODES = ("bad_data", "bad_input", "bad_model", "bad_job")   # the agent refused the input: no record kept


def run_eval(s: Session, model: str, data: str, split: str = "val", batch: int = 64, top: int = 5,
             backend: str = "auto", timeout: float | None = 300.0, on_event=None) -> dict:
    """Evaluate on the device; returns the report (eval.json: the agent's report + run id and source).
    The eval is a run record under $THOMAS_HOME/runs/<id>/ (kind "eval")."""
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if backend not in BACKENDS:
        raise DataError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    m = eval_model(s, model)
    check_data(s, data, split, m["graph"])          # before anything is pushed
    if m.get("push"):
        src, name = m["push"]
        if not push_model(s, m["graph"], name, str(src))["skipped"]:
            s.note(f"pushed {src} to {s.t.serial}:{s.t.root}/models/{name}")
    run_id = store.new_run_id()
    job = {"model": m["remote"], "data": f"data/{data}", "split": split, "batch": batch, "top": top,
           "backend": backend, "out": f"runs/{run_id}"}
    rec = {"id": run_id, "kind": "eval", "created": time.strftime("%Y-%m-%d %H:%M:%S"), "device": s.t.describe(),
           "model": model, "which": m["which"], "data": data, "stage": f"eval {split}", "job": job,
           "status": "running"}
    runs.create(rec)
    args = ["eval", m["remote"], job["data"], f"{job['out']}/eval.json", "--split", split, "--batch", str(batch),
            "--top", str(top), "--backend", backend]
    res = runs.record_call(s, rec, args, on_event, timeout=timeout)
    if not isinstance(res.last, EvalReportEvent):
        return _failed(s, rec, res)
    runs.pull_run(s.t, run_id, ["eval.json"])
    doc = runs.read_result(run_id, "eval.json")
    if not isinstance(doc, dict) or "confusion" not in doc:
        raise RunFailed("error", f"eval {run_id}: the report pulled from {s.t.serial} is unreadable")
    doc = dict(doc, id=run_id, model_arg=model, source=m["source"], which=m["which"], dataset=data)
    runs.write_result(run_id, "eval.json", doc)
    runs.finish(rec, {"split": split, "count": doc["count"], "acc": doc["acc"], "top_k": doc["top_k"],
                      "top_k_acc": doc["top_k_acc"], "loss": doc["loss"],
                      "val_acc": doc["acc"] if split == "val" else None})   # `runs list` shows acc else
    return doc


def _failed(s: Session, rec: dict, res: CallResult) -> dict:
    """The agent ended without a report: a refused input removes the record, anything else keeps it."""
    run_id, last = rec["id"], res.last
    if isinstance(last, ErrorEvent):
        code, msg = last.code, last.message
    else:
        code, msg = "error", f"agent ended ({res.returncode}) without a result: {' | '.join(res.logs[-3:])}"
    if code in USER_CODES:
        runs.discard(s, run_id)
        raise RunFailed(code, f"{msg}")
    runs.settle(rec, "error", msg)
    raise RunFailed(code, f"eval {run_id} failed on {s.t.serial}: {msg}")
