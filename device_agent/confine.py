"""Confinement: every path an agent call names stays inside the device root.

The device root is the agent's working directory in every mode: the local transport starts the agent
with cwd = its folder, adb shell `cd`s to --device-root first, the daemon runs each job with cwd = its
--root. A path the agent is given — a positional argument of run/bench/tune/infer/eval, a TrainJob
field marked PATH in job.py (model, data, out, cache_dir and any marked later), a bench/tune job's
`model`/`out` — must pass the rule of the wire (protocol.path_problem: relative, '/'-separated, no '',
'.' or '..' parts), must not reach the root's own folders (RESERVED: the daemon's state and the agent
payload), and must stay inside the root once symbolic links are followed. Otherwise JobError (code
`bad_job`) naming the field:

    confine_call("bench", ["jobs/b1.json"], root) # the job file, then every path field inside it
    read_train_job("jobs/r1.json", root)          # a `run` job: limits, schema, path fields confined
    confined(root, "runs/r1", "job field 'out'")   # -> root/runs/r1, or JobError
    check_job_paths({"cache_dir": "/tmp/x"})       # the host's early check: the syntax rule only

`python -m device_agent.training.train JOB.json` (the in-tree developer entry, used by tests with absolute
paths) does not confine; every transport calls `python -m device_agent run`, which does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import JobError
from .job import TrainJob
from .limits import MAX_JOB_BYTES, read_json
from .protocol import DAEMON_DIR, path_problem

RESERVED = (DAEMON_DIR, "agent", "agent.new", "agent.old")   # the daemon's state, the agent payload
JOB_FILE_FIELDS = {"bench": ("model", "out"), "tune": ("model",)}   # bench.read_job's path fields
# every positional argument of these agent commands is a path (named in errors as below)
CONFINED_COMMANDS = {"run": ("JOB.json",), "bench": ("JOB.json",), "tune": ("JOB.json",),
                     "infer": ("MODEL", "X.npy", "OUT.npy"), "eval": ("MODEL", "DATA", "OUT.json")}


def path_fields(cls=TrainJob) -> list[str]:
    """The job fields marked as paths in the schema (job.PATH metadata)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("path")]


def path_rule(rel, what: str) -> str | None:
    """Why `rel` is not a path the agent may use (None when it is): the wire's rule plus RESERVED."""
    why = path_problem(rel, what)
    if why is None and rel.split("/", 1)[0] in RESERVED:
        why = f"{what} '{rel}' reaches the device root's own folder '{rel.split('/', 1)[0]}'"
    return why


def confined(root, rel, what: str) -> Path:
    """root/rel after the rule and the symlink check; JobError naming `what` otherwise."""
    why = path_rule(rel, what)
    if why:
        raise JobError(why)
    base = Path(root).resolve()
    p = base / rel
    try:
        p.resolve().relative_to(base)      # strict=False: parts that do not exist yet are kept as written
    except ValueError:
        raise JobError(f"{what} '{rel}' leads outside the device root through a symbolic link") from None
    except (OSError, RuntimeError):        # a symlink loop
        raise JobError(f"{what} '{rel}' cannot be resolved (a symbolic link loop)") from None
    return p


def check_job_paths(fields: dict) -> None:
    """The syntax rule on the path fields a job sets (the host checks before touching a device)."""
    for k in path_fields():
        if fields.get(k) is not None and isinstance(fields[k], str):
            why = path_rule(fields[k], f"job field '{k}'")
            if why:
                raise JobError(why)


def confine_job(job: TrainJob, root) -> TrainJob:
    for k in path_fields(type(job)):
        v = getattr(job, k)
        if v is not None:
            confined(root, v, f"job field '{k}'")
    return job


def read_train_job(path: str, root=None) -> TrainJob:
    """A `run` job file: size and depth limits, the schema, then (with a root) every path field confined."""
    job = TrainJob.from_dict(read_json(path, JobError, max_bytes=MAX_JOB_BYTES, what="job"))
    return job if root is None else confine_job(job, root)


def positionals(args: list[str]) -> list[str]:
    """The positional arguments of an agent call (every --option of run/bench/tune/infer/eval takes a value)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("--"):
            skip = "=" not in a
        else:
            out.append(a)
    return out


def confine_call(cmd: str, args: list[str], root) -> None:
    """Before an agent command runs: its path arguments and the path fields of its job file."""
    if cmd not in CONFINED_COMMANDS:
        return
    pos, names = positionals(args), CONFINED_COMMANDS[cmd]
    for i, rel in enumerate(pos):
        confined(root, rel, f"{cmd} {names[i] if i < len(names) else f'argument {i + 1}'}")
    if cmd in JOB_FILE_FIELDS and pos:     # run: train.main(root=) confines the TrainJob's fields
        doc = read_json(Path(root) / pos[0], JobError, max_bytes=MAX_JOB_BYTES, what=f"{cmd} job")
        if isinstance(doc, dict):          # anything else: bench.read_job says what is wrong
            for k in JOB_FILE_FIELDS[cmd]:
                if isinstance(doc.get(k), str):
                    confined(root, doc[k], f"{cmd} field '{k}'")
