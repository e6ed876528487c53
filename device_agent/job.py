"""The training job schema: TrainJob, the one record the host sends to start a run (a JSON object,
`python -m device_agent run JOB.json`). Part of the wire: protocol.py re-exports it.

Standard library only (the host imports it too).

    job = TrainJob.from_dict(json.load(f))     # JobError naming the field on any bad value
    job.to_dict()                              # every field, defaults filled in (what job.json stores)

Fields whose metadata is PATH are paths relative to the device root; the agent confines them
(device_agent/confine.py), the host checks their syntax before it touches a device.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field

from .errors import JobError

LAYERS = ("last", "all")
INITS = ("pretrained", "scratch")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
BN_MODES = ("auto", "frozen", "train")
BACKENDS = ("auto", "numpy", "opencl")
DTYPES = ("auto", "float32", "float64", "mixed")
SELECTS = ("val_acc", "val_loss")
MAX_BATCH = 65536                     # images in one step: far beyond any phone's memory at 224x224
MAX_COUNT = 1_000_000                 # epochs, layers, classes, step_size: a typo, not a plan
PATH = {"path": True}                 # metadata of a path-valued job field (confine.path_fields)


# ============================================================================ the job
@dataclass(frozen=True)
class TrainJob:
    """One training run. Fields marked PATH are paths; the agent's `run` confines them to the device
    root (its cwd): relative, no '..', symlinks inside the root (device_agent/confine.py)."""

    model: str = field(metadata=PATH)    # model package directory
    data: str = field(metadata=PATH)     # dataset directory (data.write_dataset's format)
    out: str = field(metadata=PATH)      # run directory: events.jsonl, metrics.jsonl, ckpt/, final/
    layers: str | int = "last"        # "last" | "all" | N >= 1 (last N entries of graph.param_groups())
    init: str = "pretrained"          # "pretrained" | "scratch" (re-initialised; needs layers "all")
    num_classes: int | None = None    # None: keep the head; else a fresh head of this width
    epochs: int = 10
    batch: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"            # "sgd" | "adam" | "adamw" (torch.optim semantics)
    momentum: float = 0.9             # sgd
    nesterov: bool = False            # sgd, needs momentum > 0
    weight_decay: float | None = None  # None: 0 for sgd/adam, 0.01 for adamw (torch's defaults)
    betas: tuple = (0.9, 0.999)       # adam/adamw
    eps: float = 1e-8                 # adam/adamw
    schedule: str = "constant"        # "constant" | "step" | "cosine" (over all steps after warm-up)
    step_size: int = 10               # step schedule: epochs between decays
    gamma: float = 0.1                # step schedule: decay factor
    warmup_epochs: int = 0            # linear warm-up: lr·(s+1)/W for the first W steps
    clip_grad_norm: float | None = None   # global L2 norm, as torch.nn.utils.clip_grad_norm_
    label_smoothing: float = 0.0
    bn: str = "auto"                  # "auto" (frozen when fine-tuning, batch stats from scratch) | "frozen" | "train"
    augment: bool = False             # random crop (zero padding size/8) + horizontal flip
    feature_cache: bool = True        # cache the frozen prefix's outputs (last/N without augment)
    cache_dir: str | None = field(default=None, metadata=PATH)   # None: <device root>/cache (docs/TRAINING.md)
    seed: int = 0
    backend: str = "auto"             # "auto" | "numpy" | "opencl"
    dtype: str = "auto"               # "auto" (mixed on an OpenCL GPU, else float32) | "float32" | "float64" (parity
                                      # tests) | "mixed" (OpenCL: halves kept for the backward)
    keep_checkpoints: int = 3
    checkpoint_every: int = 0         # steps; 0 = at each epoch end
    drop_last: bool = False
    recompute: bool = True            # OpenCL: BN outputs recomputed for the backward, not kept (bit-identical, less memory)
    resume: bool = False              # continue `out` from its last good checkpoint
    diverge_factor: float | None = 10.0   # stop ('diverged') on a loss > this x the recent median (TRAINING.md)
    select: str = "val_acc"           # best/: the epoch with the highest val_acc | the lowest val_loss
    patience: int | None = None       # stop after this many epochs without a better `select` (None: never)
    prox_mu: float = 0.0              # FedProx: + mu·(w − w0) on each trainable gradient, w0 = the package's weights

    @classmethod
    def from_dict(cls, d) -> "TrainJob":
        if not isinstance(d, dict):
            raise JobError(f"a job must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                near = difflib.get_close_matches(str(k), names, 1)
                raise JobError(f"unknown job field '{k}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
        for k in ("model", "data", "out"):
            if k not in d:
                raise JobError(f"job field '{k}' is required")
        v = {f.name: d.get(f.name, f.default) for f in dataclasses.fields(cls)}
        for k in ("model", "data", "out"):
            _str(k, v[k])
            if not v[k]:
                raise JobError(f"job field '{k}' must not be empty")
        if v["cache_dir"] is not None:
            _str("cache_dir", v["cache_dir"])
        lay = v["layers"]
        if isinstance(lay, str) and lay.isdigit():
            lay = int(lay)
        if isinstance(lay, str):
            _choice("layers", lay, LAYERS)
        else:
            _int("layers", lay, 1, MAX_COUNT, what="'last', 'all' or an integer >= 1")
        v["layers"] = lay
        _choice("init", v["init"], INITS)
        _choice("optimizer", v["optimizer"], OPTIMIZERS)
        _choice("schedule", v["schedule"], SCHEDULES)
        _choice("bn", v["bn"], BN_MODES)
        _choice("backend", v["backend"], BACKENDS)
        _choice("dtype", v["dtype"], DTYPES)
        if v["num_classes"] is not None:
            _int("num_classes", v["num_classes"], 1, MAX_COUNT)
        for k, lo, hi in (("epochs", 1, MAX_COUNT), ("batch", 1, MAX_BATCH), ("step_size", 1, MAX_COUNT),
                          ("warmup_epochs", 0, MAX_COUNT), ("seed", 0, 2**63 - 1), ("keep_checkpoints", 1, 1000),
                          ("checkpoint_every", 0, 2**31 - 1)):
            _int(k, v[k], lo, hi)
        _float("lr", v["lr"], gt=0)
        _float("momentum", v["momentum"], ge=0, lt=1)
        _float("eps", v["eps"], gt=0)
        _float("gamma", v["gamma"], gt=0)
        _float("label_smoothing", v["label_smoothing"], ge=0, lt=1)
        _float("prox_mu", v["prox_mu"], ge=0)
        if v["clip_grad_norm"] is not None:
            _float("clip_grad_norm", v["clip_grad_norm"], gt=0)
        if v["weight_decay"] is None:
            v["weight_decay"] = 0.01 if v["optimizer"] == "adamw" else 0.0
        _float("weight_decay", v["weight_decay"], ge=0)
        b = v["betas"]
        if not isinstance(b, (list, tuple)) or len(b) != 2:
            raise JobError(f"job field 'betas' must be a pair of numbers, got {b!r}")
        for x in b:
            _float("betas", x, ge=0, lt=1)
        v["betas"] = (float(b[0]), float(b[1]))
        for k in ("nesterov", "augment", "feature_cache", "drop_last", "resume", "recompute"):
            if not isinstance(v[k], bool):
                raise JobError(f"job field '{k}' must be true or false, got {v[k]!r}")
        if v["nesterov"] and (v["optimizer"] != "sgd" or v["momentum"] == 0):
            raise JobError("job field 'nesterov' needs optimizer 'sgd' with momentum > 0")
        if v["init"] == "scratch" and v["layers"] != "all":
            raise JobError(f"job field 'layers' must be 'all' when init is 'scratch', got {v['layers']!r}")
        if v["diverge_factor"] is not None:
            _float("diverge_factor", v["diverge_factor"], gt=1)
            v["diverge_factor"] = float(v["diverge_factor"])
        _choice("select", v["select"], SELECTS)
        if v["patience"] is not None:
            _int("patience", v["patience"], 1, MAX_COUNT)
        if v["warmup_epochs"] >= v["epochs"]:
            raise JobError(f"job field 'warmup_epochs' must be < epochs ({v['epochs']}), got {v['warmup_epochs']}")
        for k in ("lr", "momentum", "eps", "gamma", "label_smoothing", "weight_decay", "prox_mu"):
            v[k] = float(v[k])
        if v["clip_grad_norm"] is not None:
            v["clip_grad_norm"] = float(v["clip_grad_norm"])
        return cls(**v)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @property
    def bn_batch_stats(self) -> bool:
        """BN layers of the trainable part use batch statistics (and update their running ones)."""
        if self.bn == "auto":
            return self.init == "scratch"
        return self.bn == "train"


def _str(k, x):
    if not isinstance(x, str):
        raise JobError(f"job field '{k}' must be a string, got {x!r}")


def _choice(k, x, choices):
    if x not in choices:
        raise JobError(f"job field '{k}' must be one of {', '.join(map(repr, choices))}, got {x!r}")


def _int(k, x, lo, hi=None, what=None):
    if isinstance(x, bool) or not isinstance(x, int):
        raise JobError(f"job field '{k}' must be {what or 'an integer'}, got {x!r}")
    if x < lo:
        raise JobError(f"job field '{k}' must be {what or f'>= {lo}'}, got {x!r}")
    if hi is not None and x > hi:
        raise JobError(f"job field '{k}' must be <= {hi}, got {x!r}")


def _float(k, x, gt=None, ge=None, lt=None):
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise JobError(f"job field '{k}' must be a finite number, got {x!r}")
    if gt is not None and not x > gt:
        raise JobError(f"job field '{k}' must be > {gt}, got {x!r}")
    if ge is not None and not x >= ge:
        raise JobError(f"job field '{k}' must be >= {ge}, got {x!r}")
    if lt is not None and not x < lt:
        raise JobError(f"job field '{k}' must be < {lt}, got {x!r}")
