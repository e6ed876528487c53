"""Typed events on the host (issue 16 item 4): every line the agent sends is read into its protocol
dataclass; the run mirror keeps the agent's lines byte for byte; a line the host cannot read is one
clear error, never a KeyError later. A scripted agent (llm's MockModel habit) drives the Session."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from device_agent import protocol
from device_agent.errors import ThomasError
from device_agent.protocol import (EVENTS, PROTOCOL_VERSION, DoneEvent, EpochEvent, ErrorEvent, HelloEvent, PlanEvent,
                                   StepEvent, parse_event)
from thomas_cli import runs
from thomas_cli.device import RunFailed, Session
from thomas_cli.transport.base import AgentProcess, DeviceError, ProtocolMismatch

HELLO = HelloEvent(PROTOCOL_VERSION, "0.1.0", None, "3.11.0", 42)
_DUMMY = {int: 3, float: 0.5, str: "x", bool: True, dict: {"peak": 1}, list: [1]}


def _dummy(cls):
    """An instance of an event class with every field set (optional ones too)."""
    hints = typing.get_type_hints(cls)
    vals = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base = next((t for t in typing.get_args(tp) or (tp,) if t in _DUMMY), float)
        vals[f.name] = _DUMMY[base]
    return cls(**vals)


@pytest.mark.parametrize("cls", list(EVENTS.values()), ids=lambda c: c.ev)
def test_every_event_round_trips_through_its_line(cls):
    ev = _dummy(cls)
    assert cls.__name__.endswith("Event")                      # no clash with plan.Plan, telemetry.Telemetry, ...
    line = ev.to_json()
    assert parse_event(line) == ev and parse_event(json.loads(line)) == ev
    assert json.loads(line) == ev.to_dict() and list(ev.to_dict())[0] == "ev"


@pytest.mark.parametrize("bad, words", [
    ('{"ev": "step", "step": 1}', "without epoch"),
    (dict(json.loads(StepEvent(1, 1, 1, 0.5, 0.5, 0.1, 3.0).to_json()), bogus=1), "unknown field(s) bogus"),
    ('{"ev": "nope"}', "not a THOMAS event"),
    ('[1, 2]', "not a THOMAS event"),
])
def test_parse_event_refuses_what_is_not_an_event(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_event(bad)


# ============================================================================ a scripted agent
class Scripted(AgentProcess):
    def __init__(self, lines: list[str], rc: int = 0):
        super().__init__()
        self.rc, self.cancelled = rc, False
        for ln in lines:
            self._q.put(ln)
        self._q.put(self._EOF)

    def _finish(self) -> None:
        self.returncode = self.rc

    def cancel(self) -> None:
        self.cancelled = True


class FakeTransport:
    """Just what Session and runs touch: the agent's lines are scripted, files land nowhere."""
    kind, serial, root, python = "local", "fake", "/fake", "python3"

    def __init__(self, *scripts: list[str]):
        self.scripts = list(scripts)
        self.procs: list[Scripted] = []
        self.installed = 0

    def start_agent(self, args):
        self.procs.append(Scripted(self.scripts.pop(0)))
        return self.procs[-1]

    def exists(self, rel):
        return rel.startswith("runs/") and rel.count("/") == 1       # the run folder, nothing in it

    def install_payload(self, path):
        self.installed += 1

    def write_bytes(self, rel, data):
        pass

    def describe(self):
        return {"transport": self.kind, "serial": self.serial, "root": self.root, "python": self.python}


def session(*scripts) -> Session:
    s = Session(FakeTransport(*scripts))
    s._state = {"hash": "h", "agent": "0.1.0", "pushed": False, "bytes": 0}    # the payload is there
    return s


def test_call_hands_out_dataclasses_and_keeps_logs_apart():
    plan = _dummy(PlanEvent)
    lines = [HELLO.to_json(), "a log line", plan.to_json(), '{"not": "an event"}', ErrorEvent("bad_job", "x").to_json()]
    seen = []
    r = session(lines).call(["run", "jobs/j.json"], on_event=seen.append)
    assert r.hello == HELLO and r.events == [HELLO, plan, ErrorEvent("bad_job", "x", t=r.events[-1].t)]
    assert seen == r.events and all(isinstance(e, protocol.Event) for e in seen)
    assert r.logs == ["a log line", '{"not": "an event"}'] and r.of(PlanEvent) == [plan]
    assert isinstance(r.last, ErrorEvent) and r.last.code == "bad_job"


def test_an_event_the_host_cannot_read_is_one_clear_error():
    bad = dict(json.loads(_dummy(StepEvent).to_json()), extra=1)
    s = session([HELLO.to_json(), json.dumps(bad)])
    with pytest.raises(DeviceError) as e:
        s.call(["run", "jobs/j.json"])
    assert "cannot read" in str(e.value) and "'step' event" in str(e.value) and "\n" not in str(e.value)
    assert s.t.procs[0].cancelled


def test_a_hello_of_another_protocol_is_read_as_its_object_then_refused():
    other = json.dumps({"ev": "hello", "protocol": 99, "agent": "9.9", "brand_new_field": 1})
    s = session([other], [other])
    with pytest.raises(ProtocolMismatch) as e:
        s.call(["hello"])
    assert "protocol 99" in str(e.value) and e.value.exit_code == 3 and s.t.installed == 1   # pushed once again


def test_agent_event_returns_the_record_or_the_agents_error():
    dev = _dummy(protocol.DeviceEvent)
    assert session([HELLO.to_json(), dev.to_json()]).agent_event(["doctor"], protocol.DeviceEvent) == dev
    with pytest.raises(RunFailed, match="agent: no numpy") as e:
        session([HELLO.to_json(), ErrorEvent("bad", "no numpy").to_json()]).agent_event(["doctor"], protocol.DeviceEvent)
    assert e.value.code == "bad"


# ============================================================================ a run, mirrored
def _record(s: Session) -> dict:
    model, data = {"name": "m", "classes": 2}, {"name": "d", "classes": ["a", "b"]}
    return runs.new_run(s, model, data, {"epochs": 1, "batch": 2, "backend": "numpy"})


def test_run_job_mirrors_the_agents_lines_and_returns_the_done_event():
    epoch = EpochEvent(1, 0.7, 0.5, 0.6, 0.75, 0.01, 12.0, 100.0)
    done = DoneEvent("runs/r", "runs/r/final", 1, 2, 0.7, 0.5, 0.6, 0.75, 30.0, best_epoch=1, best_metric=0.75)
    lines = [HELLO.to_json(), _dummy(PlanEvent).to_json(), "log: epoch 1", StepEvent(1, 1, 1, 0.7, 0.5, 0.01, 5.0).to_json(),
             epoch.to_json(), done.to_json()]
    s = session(lines)
    rec = _record(s)
    got = runs.run_job(s, rec, on_event=None)
    assert got == done and isinstance(got, DoneEvent)
    host = runs.run_dir(rec["id"])
    assert (host / "events.jsonl").read_text().splitlines() == [ln for ln in lines if ln.startswith("{")]
    assert (host / "agent.log").read_text() == "log: epoch 1\n"
    saved = runs.load_run(rec["id"])
    assert saved["status"] == "done" and saved["error"] is None
    assert saved["summary"]["val_acc"] == 0.75 and saved["summary"]["best_epoch"] == 1
    assert runs.read_events(rec["id"])[-2:] == [epoch, done]


def test_run_job_settles_the_record_on_the_agents_error():
    s = session([HELLO.to_json(), ErrorEvent("diverged", "loss 1e10 at step 3").to_json()])
    rec = _record(s)
    with pytest.raises(RunFailed) as e:
        runs.run_job(s, rec)
    assert e.value.code == "diverged" and f"run {rec['id']} failed on fake: loss 1e10" in str(e.value)
    assert runs.load_run(rec["id"])["status"] == "error"
    assert runs.load_run(rec["id"])["error"] == "diverged: loss 1e10 at step 3"


def test_run_job_without_done_keeps_the_events_and_says_so():
    s = session([HELLO.to_json(), _dummy(PlanEvent).to_json()])
    rec = _record(s)
    with pytest.raises(ThomasError, match="without a done or error event.*2 events so far are kept"):
        runs.run_job(s, rec)
    assert len(runs.read_events(rec["id"])) == 2
