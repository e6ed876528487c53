"""protocol.py: the job schema (every bad field named in one line) and the event records."""
from __future__ import annotations

import json

import pytest

from device_agent.errors import JobError, ThomasError
from device_agent.protocol import (EVENTS, PROTOCOL_VERSION, CacheEvent, DoneEvent, ErrorEvent, PlanEvent,
                                   StepEvent, TrainJob, parse_event)

BASE = {"model": "models/m", "data": "data/d", "out": "runs/1"}


def test_defaults_and_round_trip():
    job = TrainJob.from_dict(BASE)
    assert (job.layers, job.init, job.optimizer, job.schedule, job.bn, job.backend, job.dtype) == \
        ("last", "pretrained", "sgd", "constant", "auto", "auto", "auto")
    assert job.feature_cache is True and job.drop_last is False and job.weight_decay == 0.0
    assert TrainJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert TrainJob.from_dict(dict(BASE, optimizer="adamw")).weight_decay == 0.01
    assert TrainJob.from_dict(dict(BASE, layers="3")).layers == 3
    assert PROTOCOL_VERSION == 1 and issubclass(JobError, ThomasError)


def test_bn_auto():
    assert not TrainJob.from_dict(BASE).bn_batch_stats
    assert TrainJob.from_dict(dict(BASE, init="scratch", layers="all")).bn_batch_stats
    assert TrainJob.from_dict(dict(BASE, bn="train")).bn_batch_stats
    assert not TrainJob.from_dict(dict(BASE, init="scratch", layers="all", bn="frozen")).bn_batch_stats


BAD = [
    ({"lr": -1}, "job field 'lr' must be > 0, got -1"),
    ({"lr": 0}, "'lr' must be > 0"),
    ({"lr": "0.1"}, "'lr' must be a finite number"),
    ({"lr": float("nan")}, "'lr' must be a finite number"),
    ({"epochs": 0}, "'epochs' must be >= 1"),
    ({"epochs": 2.5}, "'epochs' must be an integer"),
    ({"batch": True}, "'batch' must be an integer"),
    ({"layers": 0}, "'layers' must be 'last', 'all' or an integer >= 1"),
    ({"layers": "first"}, "'layers' must be one of"),
    ({"init": "random"}, "'init' must be one of"),
    ({"optimizer": "rmsprop"}, "'optimizer' must be one of"),
    ({"momentum": 1.0}, "'momentum' must be < 1"),
    ({"nesterov": True, "momentum": 0}, "'nesterov'"),
    ({"nesterov": 1}, "'nesterov' must be true or false"),
    ({"betas": [0.9]}, "'betas' must be a pair"),
    ({"betas": [0.9, 1.5]}, "'betas' must be < 1"),
    ({"schedule": "linear"}, "'schedule' must be one of"),
    ({"warmup_epochs": 10}, "'warmup_epochs' must be < epochs"),
    ({"clip_grad_norm": 0}, "'clip_grad_norm' must be > 0"),
    ({"label_smoothing": 1}, "'label_smoothing' must be < 1"),
    ({"bn": "on"}, "'bn' must be one of"),
    ({"augment": "yes"}, "'augment' must be true or false"),
    ({"backend": "cuda"}, "'backend' must be one of"),
    ({"dtype": "float16"}, "'dtype' must be one of"),
    ({"keep_checkpoints": 0}, "'keep_checkpoints' must be >= 1"),
    ({"checkpoint_every": -1}, "'checkpoint_every' must be >= 0"),
    ({"num_classes": 0}, "'num_classes' must be >= 1"),
    ({"weight_decay": -0.1}, "'weight_decay' must be >= 0"),
    ({"init": "scratch"}, "'layers' must be 'all' when init is 'scratch'"),
    ({"lrr": 0.1}, "unknown job field 'lrr' (did you mean 'lr'?)"),
    ({"model": 3}, "'model' must be a string"),
    ({"out": ""}, "'out' must not be empty"),
]


@pytest.mark.parametrize("change,msg", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_fields_are_named(change, msg):
    with pytest.raises(JobError) as e:
        TrainJob.from_dict(dict(BASE, **change))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_missing_and_non_object():
    with pytest.raises(JobError, match="job field 'data' is required"):
        TrainJob.from_dict({"model": "m", "out": "o"})
    with pytest.raises(JobError, match="JSON object"):
        TrainJob.from_dict([1, 2])


def test_events_are_one_json_object_a_line():
    s = StepEvent(step=3, epoch=1, batch=3, loss=0.41, acc=0.5, lr=0.01, ms=83.0)
    line = s.to_json()
    d = json.loads(line)
    assert d["ev"] == "step" and d["step"] == 3 and isinstance(d["t"], float) and "\n" not in line
    assert parse_event(line) == s
    e = ErrorEvent("bad_data", "x")
    assert json.loads(e.to_json()) == {"ev": "error", "code": "bad_data", "message": "x", "t": e.t}
    # non-finite numbers become null (JSON has no NaN)
    done = DoneEvent("o", "o/final", 1, 2, float("nan"), 0.5, None, None, 1.0)
    assert json.loads(done.to_json())["train_loss"] is None
    assert {"plan", "progress", "step", "epoch", "eval", "checkpoint", "cache", "done", "error"} <= set(EVENTS)
    assert json.loads(CacheEvent(True, "train", 2, "k", 10, 100, 0.1).to_json())["hit"] is True
    with pytest.raises(ValueError):
        parse_event('{"ev": "nope"}')
    assert PlanEvent.ev == "plan"
