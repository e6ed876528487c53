"""The wire between the host and a running agent: PROTOCOL_VERSION, the job schema (job.py, re-exported
here), the events, the daemon's framing.

Standard library only (the host imports it too).

    job = TrainJob.from_dict(json.load(f))     # JobError naming the field on any bad value
    print(StepEvent(step=3, epoch=1, batch=3, loss=0.41, acc=0.88, lr=0.01, ms=83).to_json())
    # {"ev": "step", "step": 3, "epoch": 1, ..., "t": 1764000000.123}

Events go to stdout one JSON object a line, `ev` + `t` (unix seconds) + fields; the first line of
every agent command is `hello` (the handshake), the last line of a run is `done` or `error`.
`parse_event(line)` turns a line back into its dataclass (`...Event`, one per `ev` name: EVENTS), which
is how the host reads every event: attributes, never string keys.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

from .job import (BACKENDS, BN_MODES, DTYPES, INITS, LAYERS, OPTIMIZERS, PATH,  # noqa: F401  (the job
                  SCHEDULES, SELECTS, TrainJob)                                # schema is part of the wire)

PROTOCOL_VERSION = 1


# ============================================================================ events
def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None                       # JSON has no NaN/Inf
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


@dataclass
class Event:
    ev: ClassVar[str] = ""

    def to_dict(self) -> dict:
        """The JSON object of the event: `ev`, then the fields in order (NaN/inf as None)."""
        d = {"ev": self.ev}
        d.update({f.name: _clean(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))


def _now() -> float:
    return round(time.time(), 3)


@dataclass
class PlanEvent(Event):
    """What the run will do, before the first step."""
    ev: ClassVar[str] = "plan"
    backend: str
    dtype: str
    stage: str                    # "last" | "N=3" | "all" | "scratch"
    trainable_params: int
    frozen_params: int
    groups: list                  # trainable layer groups, graph order
    cut: list                     # tensors the trainable part starts from ([] = the model input)
    feature_cache: bool           # the frozen prefix's outputs come from the cache
    train: int                    # images
    val: int
    classes: int
    batch: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    start_step: int               # > 0 when resumed
    memory: dict                  # bytes by category + "peak"
    t: float = field(default_factory=_now)


@dataclass
class ProgressEvent(Event):
    ev: ClassVar[str] = "progress"
    phase: str                    # "features" (filling the cache), "eval"
    done: int
    total: int
    t: float = field(default_factory=_now)


@dataclass
class StepEvent(Event):
    ev: ClassVar[str] = "step"
    step: int                     # global, 1-based
    epoch: int                    # 1-based
    batch: int                    # 1-based within the epoch
    loss: float
    acc: float                    # top-1 on this batch
    lr: float
    ms: float
    t: float = field(default_factory=_now)


@dataclass
class EpochEvent(Event):
    ev: ClassVar[str] = "epoch"
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    ms: float                     # training time of the epoch (no eval)
    img_s: float
    t: float = field(default_factory=_now)


@dataclass
class EvalEvent(Event):
    ev: ClassVar[str] = "eval"
    epoch: int
    split: str
    loss: float
    acc: float
    count: int
    ms: float
    t: float = field(default_factory=_now)


@dataclass
class CheckpointEvent(Event):
    ev: ClassVar[str] = "checkpoint"
    step: int
    epoch: int
    path: str
    bytes: int
    ms: float
    t: float = field(default_factory=_now)


@dataclass
class CacheEvent(Event):
    """Feature cache use for one split: hit = read from the cache, miss = the prefix ran now."""
    ev: ClassVar[str] = "cache"
    hit: bool
    split: str
    epoch: int
    key: str
    rows: int
    bytes: int
    ms: float
    t: float = field(default_factory=_now)


@dataclass
class DoneEvent(Event):
    ev: ClassVar[str] = "done"
    out: str
    final: str                    # the trained model package
    epochs: int
    steps: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    ms: float
    memory: dict = field(default_factory=dict)   # measured bytes by category + "peak"
    best: str | None = None            # the best epoch's package (best/); None without a val split
    best_epoch: int | None = None      # 1-based
    select: str = "val_acc"            # the metric that chose it (job field select)
    best_metric: float | None = None   # its value at best_epoch
    final_metric: float | None = None  # its value after the last epoch trained (final/)
    stopped_early: bool = False        # patience ran out: `epochs` is less than the job's
    t: float = field(default_factory=_now)


@dataclass
class ErrorEvent(Event):
    ev: ClassVar[str] = "error"
    code: str
    message: str
    t: float = field(default_factory=_now)


# ============================================================================ handshake and doctor
@dataclass
class HelloEvent(Event):
    """The first line of every agent command, before anything else runs: the host compares
    `protocol` with its own PROTOCOL_VERSION and stops (exit 3) when they differ."""
    ev: ClassVar[str] = "hello"
    protocol: int
    agent: str                    # device_agent.__version__
    payload: str | None           # hash of the pushed payload (None: run from a source tree)
    python: str                   # "3.11.7"
    pid: int                      # the agent process, for cancelling it
    t: float = field(default_factory=_now)


@dataclass
class DeviceEvent(Event):
    """`python -m device_agent doctor`: what this device offers the agent."""
    ev: ClassVar[str] = "device"
    os: str                       # platform.platform()
    machine: str                  # "aarch64"
    cpus: int
    python: str
    numpy: str | None             # version, None when missing
    pyopencl: str | None
    opencl: list                  # one dict per device: platform, device, kind, global_mem, max_alloc, fp16, ...
    opencl_error: str | None      # why the OpenCL list is empty (no pyopencl, no ICD, ...)
    root: str                     # the agent's working directory (the device root)
    free_bytes: int | None
    t: float = field(default_factory=_now)


@dataclass
class InferEvent(Event):
    """`infer`: the model ran on a batch; its first output was saved as .npy on the device."""
    ev: ClassVar[str] = "infer"
    model: str
    count: int                    # samples
    output: str                   # the .npy written
    shape: list
    ms: float
    backend: str = ""             # numpy | opencl: what ran
    device: str = ""              # the OpenCL device, or the CPU
    t: float = field(default_factory=_now)


@dataclass
class EvalReportEvent(Event):
    """`eval` (device_agent/evaluate.py): a model measured on a dataset split; the whole report
    (per-class precision/recall, the confusion matrix) is the JSON file `output` on the device."""
    ev: ClassVar[str] = "eval_report"
    model: str                    # the package directory
    data: str                     # the dataset directory
    split: str                    # train | val | test
    count: int                    # samples
    classes: int
    acc: float                    # top-1
    top_k: int
    top_k_acc: float
    loss: float | None            # mean cross-entropy of the logits (None: not finite)
    loss_tensor: str              # the tensor the loss read (the logits before a final Softmax)
    ms: float
    img_s: float
    backend: str                  # numpy | opencl: what ran
    device: str                   # the OpenCL device, or the CPU
    output: str                   # the report written
    t: float = field(default_factory=_now)


@dataclass
class LayerTimeEvent(Event):
    """`bench`: one layer of one backend (medians over the profiled steps)."""
    ev: ClassVar[str] = "layer_time"
    backend: str                  # "opencl" | "numpy"
    layer: str                    # node name, or "optimizer"
    op: str
    fw_ms: float
    bw_ms: float
    gflops: float | None          # from the op FLOPs
    gbs: float | None             # from the node's tensor bytes (a lower bound)
    share: float                  # of the profiled step, 0..1
    t: float = field(default_factory=_now)


@dataclass
class BenchDoneEvent(Event):
    """`bench`: the last line; results[backend] = {ms_step, img_s, memory, device | threads} or {error}."""
    ev: ClassVar[str] = "bench"
    model: str
    stage: str
    batch: int
    steps: int
    results: dict
    speedup: float | None         # numpy ms/step over opencl ms/step
    t: float = field(default_factory=_now)


@dataclass
class TelemetryEvent(Event):
    """After each `epoch` (device_agent/training/telemetry.py): energy and temperatures over that epoch;
    a sensor the device does not expose (or does not let us read) is null."""
    ev: ClassVar[str] = "telemetry"
    epoch: int
    seconds: float
    battery_j: float | None       # |current_now x voltage_now| integrated (power_supply)
    battery_w: float | None       # its mean
    rapl_j: float | None          # Linux RAPL powercap energy_uj difference
    temps: dict                   # thermal zone type -> °C at the epoch's end (None: unreadable)
    temp_max: float | None        # highest zone temperature seen during the epoch
    t: float = field(default_factory=_now)


@dataclass
class TuneVariantEvent(Event):
    """`tune`: one timed variant (ms None and `error` set when it did not build or computed otherwise)."""
    ev: ClassVar[str] = "tune_variant"
    index: int
    params: dict
    ms: float | None              # gemm: median of the model's GEMM launches, finish() around them;
                                  # conv2d: median of full training steps
    gemms: int                    # gemm: GEMM launches timed; conv2d: steps timed
    error: str | None
    op: str = "gemm"              # what is tuned: "gemm" (tiles) or "conv2d" (convolution paths)
    t: float = field(default_factory=_now)


@dataclass
class TuneEvent(Event):
    """`tune`: the winner, saved in the device's tuning file under `key` ("<device>|<driver>")."""
    ev: ClassVar[str] = "tune"
    key: str
    op: str
    index: int
    params: dict
    ms: float
    default_ms: float | None
    path: str
    shapes: dict = field(default_factory=dict)   # GEMM shape key -> its own tiles (where another variant won)
    tuned_ms: float | None = None                # the winner with those per-shape tiles (the sum of its parts)
    t: float = field(default_factory=_now)


EVENTS = {c.ev: c for c in (HelloEvent, DeviceEvent, PlanEvent, ProgressEvent, StepEvent, EpochEvent, EvalEvent,
                          CheckpointEvent, CacheEvent, DoneEvent, InferEvent, EvalReportEvent, ErrorEvent,
                          LayerTimeEvent, BenchDoneEvent, TelemetryEvent, TuneVariantEvent, TuneEvent)}


def parse_event(line: str | dict) -> Event:
    """One JSONL line (or its decoded object) back into its event dataclass; ValueError when it is not
    one: not JSON, no known `ev`, a field missing or one the event does not have."""
    d = json.loads(line) if isinstance(line, (str, bytes)) else line
    d = dict(d) if isinstance(d, dict) else None
    cls = EVENTS.get(d.pop("ev", None)) if d is not None else None
    if cls is None:
        raise ValueError(f"not a THOMAS event: {str(line)[:80]!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing or set(d) - names:
        extra = sorted(set(d) - names)
        raise ValueError(f"a '{cls.ev}' event " + (f"without {', '.join(missing)}" if missing else
                                                    f"with unknown field(s) {', '.join(extra)}"))
    return cls(**d)


# ============================================================================ the daemon wire (issue 6)
# `python -m device_agent serve` (device_agent/daemon/) listens on 127.0.0.1:DAEMON_PORT of the phone,
# inside Termux; the host reaches it through `adb forward tcp:L tcp:DAEMON_PORT`
# (thomas_cli/transport/daemon.py). Everything below is the whole contract between the two.
#
# Frames: one JSON object on one '\n'-terminated UTF-8 line (at most MAX_HEADER bytes). A frame with
# "n": N > 0 is followed by exactly N raw bytes (a file chunk). Requests carry "op" and "id" (the host's
# counter); the answer carries the same "id" and "ok": true plus fields, or "ok": false, "code", "message"
# (one line, naming what is wrong). One request is answered before the next is read.
#
# Connecting. The daemon speaks first:
#   {"op": "welcome", "protocol": PROTOCOL_VERSION, "agent": "0.1.0", "payload": hash|null, "python": "3.12.4",
#    "root": "/data/data/com.termux/files/home/thomas", "nonce": 32 hex, "pairing": bool (a code is open)}
# then the host either authenticates
#   {"op": "auth", "id": 1, "host": HOST_ID, "mac": auth_mac(token, nonce, HOST_ID)}  -> {"ok": true}
# or pairs (once per host and phone; the 6-digit code is shown in Termux by `serve` or
# `python -m device_agent pair`, valid PAIR_TTL_S, PAIR_ATTEMPTS wrong tries close it)
#   {"op": "pair", "id": 1, "code": "123456", "name": "my-laptop"} -> {"ok": true, "host": HOST_ID, "token": 64 hex}
# Any other first request, a wrong mac or code: {"ok": false, "code": "auth", ...} and the daemon hangs up
# without running anything (a refused guess waits 0.5 s in its own connection only).
# Caps: a connection beyond the unauthenticated ones one peer address may hold gets, instead of the
# welcome, {"op": "refused", "ok": false, "code": "too_many", "message"} and is closed; an auth or pair
# beyond the connections one paired host may hold is answered {"ok": false, "code": "too_many", ...}.
#
# Requests after auth (paths are relative to the daemon root, '/'-separated, checked like check_rel;
# the daemon's own folder DAEMON_DIR is never reachable):
#   status                     -> {"running": job|null, "queue": [job...], "jobs": n, "uptime": s,
#                                  "free": bytes|null, "pid": n}
#   stat {path}                -> {"entry": {"name", "is_dir", "size", "mtime"} | null}
#   list {path}                -> {"entries": [entry...]}        ([] when missing; sorted by name)
#   remove {path}              -> {}                             (file or tree; no error when missing)
#   move {src, dst}            -> {}                             (replaces dst)
#   put_begin {path, size, sha256}            -> {"offset": bytes already received (resume after a drop)}
#                                 | code "disk_full" (what is still to come does not fit the free space)
#   put_chunk {path, size, sha256, offset, chunk_sha256, n} + n bytes
#                              -> {"offset": next} | {"offset": size, "done": true} (whole file verified
#                                 and published atomically) | ok false, code "bad_chunk" (chunk dropped:
#                                 send it again) | code "bad_file" (whole-file hash differs; partial dropped)
#                                 | code "offset" with "offset": what the daemon has (resend from there)
#   get {path, offset, max}    -> {"size", "mtime", "chunk_sha256", "n"} + n bytes (n = 0 at the end)
#   hash {path}                -> {"sha256", "size"}
#   install {path}             -> {"restart": bool}  (path: a pushed agent zip; becomes <root>/agent whole;
#                                 restart: the daemon itself runs older code than the new payload)
#   restart                    -> {} then the daemon re-executes itself with <root>/agent (only when idle;
#                                 else ok false, code "busy")
#   start {args}               -> {"job": id, "state": "running"|"queued", "position": n}; the connection
#                                 then carries only the job's stream (below) until "end"
#   attach {job, seq}          -> {"job", "state"}; replays the stream from line `seq` (0-based) then
#   attach {job, events}          follows it; `events` instead of `seq`: start after that many events
#   jobs                       -> {"jobs": [{"job", "args", "state", "rc", "created", "started", "ended",
#                                            "lines", "events", "host"}...]}
#   cancel {job}               -> {"state"}  (queued: dropped; running: SIGTERM, SIGKILL after 5 s)
# Job streams (one connection per stream): {"op": "queued", "job", "position"} about every
# QUEUED_EVERY_S while waiting, {"op": "out", "job", "seq", "line"} for each line of the agent's merged
# stdout/stderr, and last {"op": "end", "job", "rc": int|null, "state": "done"|"cancelled"|"lost"}.
# A job runs `python -u -m device_agent ARGS` with cwd = root and <root>/agent first on sys.path; it keeps
# running when the host goes away. Commands in QUEUED_COMMANDS run one at a time (others queue behind);
# the rest (hello, doctor) start at once.

DAEMON_PORT = 7878
DAEMON_DIR = ".daemon"
MAX_HEADER = 1 << 20
CHUNK = 1 << 20
PAIR_TTL_S = 600
PAIR_ATTEMPTS = 5
QUEUED_EVERY_S = 2.0
QUEUED_COMMANDS = ("run", "bench", "tune", "infer", "eval")


def path_problem(rel, what: str = "remote path") -> str | None:
    """Why `rel` is not a clean path relative to a device root (None when it is): relative,
    '/'-separated, no empty, '.' or '..' parts, no control characters. The host checks every remote
    path with it (transport.base.check_rel) and the daemon every wire path."""
    if not isinstance(rel, str) or not rel:
        return f"{what} must not be empty"
    if rel.startswith("/") or "\\" in rel:
        return f"{what} '{rel}' must be relative to the device root"
    for p in rel.split("/"):
        if p in ("", ".", ".."):
            return f"{what} '{rel}' may not contain empty, '.' or '..' parts"
        if any(ord(c) < 32 for c in p):
            return f"{what} {rel!r} may not contain control characters"
    return None


def event_of(line: str) -> dict | None:
    """The event a line of agent output holds (a JSON object with a string "ev"), else None (a log line)."""
    if not line.startswith("{"):
        return None
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("ev"), str) else None


class WireError(ConnectionError):
    """The peer broke the framing (or hung up mid-frame); the connection is unusable."""


def auth_mac(token: str, nonce: str, host: str) -> str:
    """HMAC-SHA256 of nonce + host id under the pairing token (hex): the token never crosses the wire."""
    import hashlib
    import hmac

    return hmac.new(bytes.fromhex(token), f"{nonce}:{host}".encode(), hashlib.sha256).hexdigest()


def encode_frame(header: dict, data: bytes = b"") -> bytes:
    """One frame: the header line (with "n" set when data follows), then the data."""
    if data:
        header = dict(header, n=len(data))
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + data


def read_frame(rfile) -> tuple[dict, bytes]:
    """The next (header, data) from a binary file object (socket.makefile("rb")).
    WireError on a hang-up (EOF) or anything that is not a frame."""
    line = rfile.readline(MAX_HEADER + 1)
    if not line:
        raise WireError("the connection closed")
    if not line.endswith(b"\n"):
        raise WireError("the connection closed mid-frame" if len(line) <= MAX_HEADER
                        else f"frame header longer than {MAX_HEADER} bytes")
    try:
        header = json.loads(line)
    except ValueError:
        raise WireError(f"not a frame: {line[:60]!r}") from None
    if not isinstance(header, dict):
        raise WireError(f"not a frame: {line[:60]!r}")
    n = header.get("n", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > 4 * CHUNK:
        raise WireError(f"bad frame length {n!r}")
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise WireError("the connection closed mid-frame")
    return header, data
