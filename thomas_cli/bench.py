"""Bench and tune on a device: `python -m device_agent bench|tune JOB.json` started, streamed, recorded.

    res = run_bench(target, "mobilenet_v2", "last", batch=8, size=224, steps=10, width=1.0, classes=1000)
    res.summary.speedup, [e.fw_ms for e in res.layers]       # BenchDoneEvent, LayerTimeEvent
    best, variants, conv = run_tune(s, "mobilenet_v2", batch=8, size=224, steps=3, width=1.0, classes=1000)

A bench is a run record (kind "bench", through runs.py) with bench.json = BenchResult.to_json().
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from device_agent.protocol import BenchDoneEvent, ErrorEvent, LayerTimeEvent, TuneEvent, TuneVariantEvent, parse_event

from . import runs, store
from .device import DEFAULT_TIMEOUT, CallResult, RunFailed, Session, Target, open_transport
from .resolve import bench_model


@dataclass
class BenchResult:
    """One bench on one device: its run id, the device, the `bench` event and the `layer_time` events."""
    id: str
    device: dict
    summary: BenchDoneEvent
    layers: list[LayerTimeEvent]

    def to_json(self) -> dict:
        """bench.json, and what `thomas bench --json` prints."""
        return {"id": self.id, "device": self.device, "summary": self.summary.to_dict(),
                "layers": [e.to_dict() for e in self.layers]}

    @classmethod
    def from_json(cls, doc: dict) -> BenchResult:
        """A bench.json read back (StoreError, one line, when it is not one)."""
        try:
            summary = parse_event(dict(doc["summary"], ev="bench"))
            layers = [parse_event(dict(e, ev="layer_time")) for e in doc["layers"]]
            return cls(str(doc["id"]), dict(doc["device"]), summary, layers)
        except (KeyError, TypeError, ValueError) as e:
            raise store.StoreError(f"bench.json of run {doc.get('id') if isinstance(doc, dict) else '?'} is not a "
                                   f"bench result ({e})") from None


def _failure(res: CallResult) -> tuple[str, str]:
    """(code, message) of an agent call that ended without its result."""
    last = res.last
    if isinstance(last, ErrorEvent):
        return last.code, last.message
    return "error", f"agent ended ({res.returncode}) without a result"


def run_bench(target: Target | None, model: str, stage: str, batch: int, size: int, steps: int, width: float,
              classes: int, on_event=None, note=None) -> BenchResult:
    """One bench on one device (a run record); returns its result."""
    s = Session(open_transport(target, note=note), note=note)
    pkg = bench_model(s, model, size, width, classes)
    run_id = store.new_run_id()
    job = {"model": pkg, "stage": stage, "batch": batch, "steps": steps, "out": f"runs/{run_id}"}
    rec = {"id": run_id, "kind": "bench", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "device": s.t.describe(), "model": model, "data": None, "stage": stage, "job": job, "status": "running"}
    runs.create(rec)
    job_rel = f"jobs/{run_id}.json"
    s.t.write_bytes(job_rel, (json.dumps(job, indent=1) + "\n").encode())
    res = runs.record_call(s, rec, ["bench", job_rel], on_event, timeout=DEFAULT_TIMEOUT)
    last = res.last
    if not isinstance(last, BenchDoneEvent):
        code, msg = _failure(res)
        runs.settle(rec, "error", msg)
        raise RunFailed(code, f"bench {run_id} failed on {s.t.serial}: {msg}")
    result = BenchResult(run_id, s.t.describe(), last, res.of(LayerTimeEvent))
    runs.write_result(run_id, "bench.json", result.to_json())
    runs.finish(rec, {"speedup": last.speedup}, bench=last.results)
    return result


def run_tune(s: Session, model: str, batch: int, size: int, steps: int, width: float, classes: int,
             on_event=None, conv: bool = True) -> tuple[TuneEvent, list[TuneVariantEvent], TuneEvent | None]:
    """Time the GEMM tile variants on the model's GEMMs once, then (`conv`) the convolution paths on its
    full steps; the device keeps the winners. Returns the GEMM winner (the last `tune` event), every
    variant timed (GEMM and convolution: TuneVariantEvent.op) and the convolution winner (None when no
    path changes this model's launches)."""
    pkg = bench_model(s, model, size, width, classes)
    job_rel = f"jobs/tune-{store.new_run_id()}.json"
    job = {"model": pkg, "batch": batch, "steps": steps, "conv": conv}
    s.t.write_bytes(job_rel, (json.dumps(job) + "\n").encode())
    res = s.call(["tune", job_rel], on_event=on_event, timeout=DEFAULT_TIMEOUT)
    if not isinstance(res.last, TuneEvent):
        code, msg = _failure(res)
        raise RunFailed(code, f"tune failed on {s.t.serial}: {msg}")
    conv_ev = next((e for e in res.of(TuneEvent) if e.op == "conv2d"), None)
    return res.last, res.of(TuneVariantEvent), conv_ev
