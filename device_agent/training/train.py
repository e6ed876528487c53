"""The training loop: one TrainJob from model package + dataset to a trained package.

    done = run(TrainJob.from_dict(doc), emit=print_event)    # raises ThomasError after an `error` event
    python -m device_agent.training.train JOB.json           # JSONL events on stdout, logs on stderr

Run directory (job.out): job.json, events.jsonl, metrics.jsonl (one line per epoch), confusion.json
(val split, rows = true class), ckpt/ (checkpoint.py), final/ (a model package).

Order of one epoch e (0-based): batches in default_rng([seed, 1, e]).permutation order, each a
train_step with lr_at(global step); a checkpoint every `checkpoint_every` steps; then eval on val,
the `epoch` event, a metrics line and the epoch-end checkpoint. A resumed run restores parameters,
optimizer state and the (epoch, batch) position, and every random draw is a function of
(seed, epoch, batch, step), so its final weights are bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ..confine import read_train_job
from ..engine import engine_classes, lookahead, resolve_backend, resolve_dtype
from ..errors import JobError, ThomasError, TrainError
from ..fsutil import disk_error
from ..limits import MAX_JOB_BYTES, read_json
from ..model.builder import reinit, replace_head
from ..model.graph import Graph, load_package, save_package
from ..model.heads import loss_graph, num_classes
from ..protocol import (CacheEvent, CheckpointEvent, DoneEvent, EpochEvent, ErrorEvent, EvalEvent, Event, PlanEvent,
                        ProgressEvent, StepEvent, TrainJob)
from . import checkpoint
from .data import RNG_AUGMENT, Dataset, augment_batch, normalize, open_dataset
from .monitor import BestEpoch, DivergenceGuard
from .optim import lr_at, make_optimizer
from .runlock import LOCK_NAME, RunLock
from .stages import FeatureCache, compute_dtype, split_graph, trainable_params
from .telemetry import Telemetry


def log(msg: str) -> None:
    print(f"thomas: {msg}", file=sys.stderr, flush=True)


def default_cache_dir(data: str) -> Path:
    """<root>/cache for a dataset at <root>/data/<name> (the device layout), else <data's parent>/cache."""
    parent = Path(data).resolve().parent
    return (parent.parent if parent.name == "data" else parent) / "cache"


class _Run:
    def __init__(self, job: TrainJob, emit):
        self.job = job
        self.out = Path(job.out)
        self.emit = emit
        self.events = None
        self.lock = None                    # runlock.RunLock while the run folder is ours
        self.telemetry = Telemetry()

    def send(self, ev: Event) -> None:
        if self.events is not None:
            try:
                self.events.write(ev.to_json() + "\n")
                self.events.flush()
            except OSError as e:            # disk full: stdout still carries this event and the error
                _drop(self.events)
                self.events = None
                if not isinstance(ev, ErrorEvent):   # an error event is the run's last: stdout is enough
                    raise OSError(e.errno, e.strerror, str(self.out / "events.jsonl")) from e
        if self.emit is not None:
            self.emit(ev)
        self.telemetry.tick()
        if isinstance(ev, EpochEvent):           # joules and temperatures of the epoch that just ended
            self.send(self.telemetry.epoch(ev.epoch))


def run(job: TrainJob, emit=None) -> DoneEvent:
    """Run a job; every event goes to emit(event) and <out>/events.jsonl. On failure an `error`
    event is sent, then the ThomasError is raised again (marked .reported)."""
    r = _Run(job, emit)
    try:
        return _run(r)
    except ThomasError as e:
        r.send(ErrorEvent(e.code, str(e)))
        e.reported = True
        raise
    except KeyboardInterrupt as e:
        r.send(ErrorEvent("interrupted", "interrupted; the last checkpoint is kept"))
        e.reported = True
        raise
    except OSError as e:                    # the device's storage: disk_full / io, not internal
        err = disk_error(e, fallback=r.out, then="then resume the run (its checkpoints are kept)")
        r.send(ErrorEvent(err.code, str(err)))
        err.reported = True
        raise err from None
    except Exception as e:  # noqa: BLE001  (a bug: record it as the run's last event, then re-raise)
        r.send(ErrorEvent("internal", f"{type(e).__name__}: {e}"))
        e.reported = True
        raise
    finally:
        if r.events is not None:
            _drop(r.events)
        if r.lock is not None:
            r.lock.release()


def _drop(f) -> None:
    """Close a file whose last flush may fail (a full disk): what was written stays, the rest is lost."""
    try:
        f.close()
    except OSError:
        pass


def _prepare_out(job: TrainJob) -> None:
    out = Path(job.out)
    stored = out / "job.json"
    if stored.is_file():
        if not job.resume:
            raise JobError(f"job field 'out': {out} already holds a run; set resume to continue it "
                           f"or choose a new directory")
        old = _stored_job(stored)
        for k, v in job.to_dict().items():
            if k != "resume" and old.to_dict()[k] != v:
                raise JobError(f"job field '{k}' is {v!r}, the run in {out} was started with "
                               f"{old.to_dict()[k]!r}; a resumed job must match")
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not job.resume:
        raise JobError(f"job field 'out': {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".job.json.tmp"
    tmp.write_text(json.dumps(job.to_dict(), indent=1) + "\n")
    os.replace(tmp, stored)


def _load_graph(job: TrainJob, ds: Dataset) -> Graph:
    graph = load_package(job.model)
    if len(graph.inputs) != 1 or len(graph.outputs) < 1:
        raise JobError(f"job field 'model': '{graph.name}' has {len(graph.inputs)} inputs; training "
                       f"needs exactly one image input")
    if job.init == "scratch":
        graph = reinit(graph, job.seed)
    if job.num_classes is not None:
        if job.num_classes != len(ds.classes):
            raise JobError(f"job field 'num_classes' is {job.num_classes}, the dataset has "
                           f"{len(ds.classes)} classes")
        try:
            graph = replace_head(graph, job.num_classes, seed=job.seed, labels=ds.classes)
        except ValueError as e:
            raise JobError(f"job field 'num_classes': {e}") from None
    shapes = graph.infer_shapes(batch=1)
    ds.check_input(shapes[graph.inputs[0].name], f"model '{graph.name}'")
    width = num_classes(graph)             # the logits' width (before a final Softmax/LogSoftmax)
    if width != len(ds.classes):
        raise JobError(f"job field 'num_classes': model '{graph.name}' predicts {width} classes, the "
                       f"dataset has {len(ds.classes)}; set num_classes to {len(ds.classes)} for a new head")
    return graph


def _run(r: _Run) -> DoneEvent:
    """The run as named steps: set up (nothing on disk yet), prepare the run directory, resume,
    plan, the epochs, the results."""
    t_run = time.perf_counter()
    s = _setup(r.job)
    r.job = s.job                           # with dtype "auto" decided
    # everything is checked: only now is the run directory touched
    r.lock = RunLock.acquire(r.out)        # one process per run folder; refused naming the holder's pid
    _prepare_out(r.job)
    r.events = open(r.out / "events.jsonl", "a", encoding="utf-8")
    _resume(r, s)
    _send_plan(r, s)
    for epoch in range(s.epoch0, r.job.epochs):
        if s.best.should_stop():           # patience ran out (also when a resumed run starts right after)
            s.stopped_early = True
            log(f"early stop after epoch {epoch}: no better {r.job.select} for {s.best.since} epoch(s) "
                f"(best: epoch {s.best.epoch}, {s.best.metric:.4g})")
            break
        _train_epoch(r, s, epoch)
    return _finish(r, s, t_run)


class _State:
    """What the steps of one run share: data, graph, engines, the position and the running sums."""

    def __init__(self, job: TrainJob, ds: Dataset, graph: Graph, backend: str, trainable: set[str], split,
                 engine, Infer):
        self.job, self.ds, self.graph, self.backend, self.split, self.engine = job, ds, graph, backend, split, engine
        self.trainable = trainable
        self.dtype = compute_dtype(job.dtype)
        self.Infer = Infer
        self.prefix_engine = None          # built on first use: a cache hit never runs the prefix
        self.preprocess = graph.inputs[0].preprocess
        self.spe = ds.train.num_batches(job.batch, job.drop_last)
        self.total, self.warmup = job.epochs * self.spe, job.warmup_epochs * self.spe
        self.epoch0, self.batch0, self.step, self.sums = 0, 0, 0, [0.0, 0, 0]
        self.cache: FeatureCache | None = None
        self.computed: set[str] = set()    # cache splits filled by this run (their first use is a miss)
        self.val_loss = self.val_acc = self.preds = None
        self.train_loss = self.train_acc = float("nan")
        self.guard = DivergenceGuard(job.diverge_factor, len(ds.classes))
        self.best = BestEpoch(job.select, job.patience)     # best/: the epoch with the best val metric
        self.epochs_done, self.stopped_early = 0, False

    def prefix(self):
        if self.prefix_engine is None:
            self.prefix_engine = self.Infer(self.split.prefix, self.dtype)
        return self.prefix_engine

    def lr(self, step: int) -> float:
        job = self.job
        return lr_at(step, base_lr=job.lr, schedule=job.schedule, total_steps=self.total,
                     steps_per_epoch=self.spe, warmup_steps=self.warmup, step_size=job.step_size,
                     gamma=job.gamma)


def _stored_job(stored: Path) -> TrainJob:
    """The job a run in `out` was started with (its job.json); JobError when it is unreadable."""
    try:
        return TrainJob.from_dict(read_json(stored, JobError, max_bytes=MAX_JOB_BYTES, what="job"))
    except (ValueError, ThomasError) as e:
        raise JobError(f"job field 'resume': {stored} is unreadable ({e})") from None


def _stored_dtype(job: TrainJob) -> str | None:
    """A resumed run's dtype "auto" is the one its job.json recorded when it started (events and
    checkpoints name the dtype a run decided), so a run begun as float32 continues as float32 where
    "auto" now means mixed; None when there is nothing to continue or the job names a dtype."""
    stored = Path(job.out) / "job.json"
    if job.dtype != "auto" or not job.resume or not stored.is_file():
        return None
    try:
        dtype = _stored_job(stored).dtype
    except JobError:
        return None                         # _prepare_out names what is wrong with it
    return None if dtype == "auto" else dtype


def _setup(job: TrainJob) -> _State:
    """Dataset, graph, stage split, optimizer and engine; every check that needs no disk write."""
    ds = open_dataset(job.data)
    graph = _load_graph(job, ds)
    backend = resolve_backend(job.backend, job.dtype, graph)
    job = dataclasses.replace(job, dtype=_stored_dtype(job) or resolve_dtype(job.dtype, backend, graph))
    dtype = compute_dtype(job.dtype)
    head = loss_graph(graph)                # the loss reads the logits, not a final Softmax's output
    trainable = trainable_params(head, job.layers)
    split = split_graph(head, trainable)
    Engine, Infer = engine_classes(backend)
    order = [k for k in split.suffix.params if k in trainable]
    opt = make_optimizer(job.optimizer, {k: graph.params[k].shape for k in order}, dtype,
                         momentum=job.momentum, nesterov=job.nesterov, weight_decay=job.weight_decay,
                         betas=job.betas, eps=job.eps)
    engine = Engine(split.suffix, trainable, opt, job.bn_batch_stats, job.clip_grad_norm,
                    job.label_smoothing, job.dtype if job.dtype == "mixed" else dtype, job.seed,
                    recompute=job.recompute, prox_mu=job.prox_mu)
    s = _State(job, ds, graph, backend, trainable, split, engine, Infer)
    if s.spe == 0:
        raise JobError(f"job field 'batch' is {job.batch}, more than the {len(ds.train)} training images, "
                       f"and drop_last is set: no batch to train on")
    if (job.bn_batch_stats and not job.drop_last and len(ds.train) % job.batch == 1
            and any(n.op == "BatchNorm" for n in split.suffix.nodes)):
        raise JobError(f"job field 'drop_last': the last batch of each epoch would hold 1 image "
                       f"({len(ds.train)} % {job.batch}), and BatchNorm with batch statistics needs 2; "
                       f"set drop_last or another batch size")
    return s


def _resume(r: _Run, s: _State) -> None:
    """A resumed job: parameters, optimizer state and the (epoch, batch, step) position of its last
    good checkpoint; the metrics lines after it are dropped (they are written again)."""
    job = r.job
    ck = checkpoint.load_latest(r.out / "ckpt", quarantine=True) if job.resume else None
    if ck is not None:
        for p, why in ck.skipped:
            log(f"skipped checkpoint {p.name}: {why}")
        if ck.meta.get("backend") != s.backend:
            log(f"checkpoint was written by backend {ck.meta.get('backend')}, resuming on {s.backend}: "
                f"the result will not be bit-identical")
        s.engine.load_params(ck.params)
        s.engine.load_optimizer_state(ck.optimizer)
        s.epoch0, s.batch0, s.step, s.sums = ck.meta["epoch"], ck.meta["batch"], ck.step, list(ck.meta["sums"])
        s.epochs_done = s.epoch0
        s.guard.load_state(ck.meta.get("guard", {"first": None, "recent": []}), str(ck.path))
        s.best.load_state(ck.meta.get("best", {"epoch": None, "metric": None, "since": 0}), str(ck.path))
        if s.best.epoch == s.epoch0 and s.batch0 == 0 and _package_epoch(r.out / "best") != s.best.epoch:
            # killed between this (best) epoch's checkpoint and the end of writing best/: its weights
            # are the checkpoint's
            log(f"best/ did not hold epoch {s.best.epoch}: written again from {ck.path.name}")
            _save_best(r, s)
        log(f"resumed from {ck.path.name}: epoch {s.epoch0 + 1}, batch {s.batch0 + 1}, step {s.step}")
        kept = _truncate_metrics(r.out / "metrics.jsonl", s.epoch0)
        last = json.loads(kept[-1]) if kept and s.batch0 == 0 else {}
        if last.get("epoch") == s.epoch0:   # at an epoch's end: its train metrics stand until the next one
            s.train_loss, s.train_acc = (float("nan") if last.get(k) is None else last[k]
                                         for k in ("train_loss", "train_acc"))
    elif job.resume:
        log(f"no usable checkpoint in {r.out / 'ckpt'}; starting from the beginning")
        _truncate_metrics(r.out / "metrics.jsonl", 0)


def _send_plan(r: _Run, s: _State) -> None:
    """Open the feature cache (a frozen prefix without augmentation) and send the `plan` event."""
    job, graph, ds = r.job, s.graph, s.ds
    if job.feature_cache and not job.augment and s.split.prefix is not None:
        root = Path(job.cache_dir) if job.cache_dir else default_cache_dir(job.data)
        s.cache = FeatureCache(root, s.split, ds.digest, s.backend, s.dtype,
                               {"model": str(Path(job.model).resolve()), "data": str(Path(job.data).resolve())},
                               store=np.float16 if job.dtype == "mixed" else None)
    mem = s.engine.memory()
    n_train = int(sum(graph.weights[k].size for k in s.trainable))
    r.send(PlanEvent(s.backend, job.dtype, _stage_name(job), n_train, graph.num_params(False) - n_train,
                     [g for g in graph.param_groups() if any(graph.params[k].group == g for k in s.trainable)],
                     list(s.split.cut), s.cache is not None, len(ds.train), len(ds.val), len(ds.classes), job.batch,
                     job.epochs, s.spe, s.total, s.step, mem))


def _features(r: _Run, s: _State, split_name: str, epoch: int) -> dict | None:
    """Cached prefix outputs of a split; fills the cache on a miss (sends a `cache` event)."""
    cache, ds = s.cache, s.ds
    if cache is None:
        return None
    t0 = time.perf_counter()
    hit = split_name in cache.loaded or cache.open()
    if not hit:
        shown = [0]

        def progress(done: int, n: int) -> None:
            if done == n or done - shown[0] >= n / 10:
                shown[0] = done
                r.send(ProgressEvent("features", done, n))
        cache.fill({"train": ds.train, "val": ds.val}, s.prefix(), max(r.job.batch, 64), s.preprocess, progress)
        s.computed.update(cache.loaded)
    if split_name in s.computed:           # filled by this run: its first use is the miss
        hit = False
        s.computed.discard(split_name)
    feats = cache.loaded.get(split_name, {})
    rows = len(ds.train if split_name == "train" else ds.val)
    r.send(CacheEvent(hit, split_name, epoch + 1, cache.key, rows,
                      int(sum(a.nbytes for a in feats.values())), round((time.perf_counter() - t0) * 1e3, 1)))
    return feats


def _inputs(s: _State, part, rows: np.ndarray, feats: dict | None, epoch: int, batch_idx: int, augment: bool):
    """What the trainable part reads for these rows: cached features, prefix outputs or images."""
    if feats is not None:
        return {t: np.asarray(feats[t][rows], s.dtype) for t in s.split.cut}
    u8 = part.rows(rows)
    if augment:
        u8 = augment_batch(u8, np.random.default_rng([s.job.seed, RNG_AUGMENT, epoch, batch_idx]))
    x = normalize(u8, s.preprocess, s.dtype)
    if s.split.prefix is None:
        return x
    outs = s.prefix().forward(x)
    return {t: outs[t] for t in s.split.cut}


def _evaluate(r: _Run, s: _State, epoch: int):
    """(val loss, val accuracy, predictions) on the val split, with an `eval` event; Nones without one."""
    ds, batch = s.ds, r.job.batch
    if len(ds.val) == 0:
        return None, None, None
    t0 = time.perf_counter()
    feats = _features(r, s, "val", epoch)
    loss_sum, correct, preds = 0.0, 0, []

    def batch_at(lo: int):
        rows = np.arange(lo, min(lo + batch, len(ds.val)))
        return _inputs(s, ds.val, rows, feats, epoch, 0, False), ds.val.labels[rows]
    for (x, y), ahead in lookahead(map(batch_at, range(0, len(ds.val), batch))):   # ahead: made during this one
        ls, c, logits = s.engine.eval_batch(x, y, ahead=ahead)
        loss_sum, correct = loss_sum + ls, correct + c
        preds.append(np.argmax(logits, axis=1))
    n = len(ds.val)
    r.send(EvalEvent(epoch + 1, "val", loss_sum / n, correct / n, n, round((time.perf_counter() - t0) * 1e3, 1)))
    return loss_sum / n, correct / n, np.concatenate(preds)


def _save_ckpt(r: _Run, s: _State, epoch: int, batch: int) -> None:
    job, t0 = r.job, time.perf_counter()
    meta = {"epoch": epoch, "batch": batch, "sums": s.sums, "backend": s.backend, "dtype": job.dtype,
            "rng": {"seed": job.seed, "shuffle": [job.seed, 1, epoch], "dropout_step": s.step},
            "guard": s.guard.state(), "best": s.best.state()}
    p = checkpoint.save(r.out / "ckpt", s.step, params=s.engine.params(), optimizer=s.engine.optimizer_state(),
                        meta=meta, keep=job.keep_checkpoints)
    r.send(CheckpointEvent(s.step, epoch + (batch > 0), str(p), p.stat().st_size,
                           round((time.perf_counter() - t0) * 1e3, 1)))


def _train_epoch(r: _Run, s: _State, epoch: int) -> None:
    """One epoch: its batches from the resume position on, then eval, `epoch`, metrics, checkpoint."""
    job, ds, spe = r.job, s.ds, s.spe
    start = s.batch0 if epoch == s.epoch0 else 0
    if epoch != s.epoch0:
        s.sums = [0.0, 0, 0]
    t0 = time.perf_counter()
    feats = _features(r, s, "train", epoch)
    perm = ds.train.order(epoch, job.seed)

    def batch(j: int):   # augmentation draws per (epoch, j): making a batch early changes nothing
        rows = perm[j * job.batch:(j + 1) * job.batch]
        return _inputs(s, ds.train, rows, feats, epoch, j, job.augment), ds.train.labels[rows]
    ts = time.perf_counter()
    # the engine may make batch i + 1 (`ahead`) while step i runs
    for i, ((x, y), ahead) in enumerate(lookahead(map(batch, range(start, spe))), start):
        rate = s.lr(s.step)
        loss, correct = s.engine.train_step(x, y, rate, ahead=ahead)
        why = s.guard.check(loss)
        if why is not None:
            raise TrainError(_diverged(r, s, why, epoch, i, rate))
        s.step += 1
        s.sums = [s.sums[0] + loss * len(y), s.sums[1] + correct, s.sums[2] + len(y)]
        # a step's ms: making its batch (unless made ahead) and running it
        r.send(StepEvent(s.step, epoch + 1, i + 1, loss, correct / len(y), rate,
                         round((time.perf_counter() - ts) * 1e3, 1)))
        if job.checkpoint_every and s.step % job.checkpoint_every == 0 and i + 1 < spe:
            _save_ckpt(r, s, epoch, i + 1)
        ts = time.perf_counter()
    ms = (time.perf_counter() - t0) * 1e3
    sums = s.sums
    s.train_loss, s.train_acc = sums[0] / max(sums[2], 1), sums[1] / max(sums[2], 1)
    s.val_loss, s.val_acc, s.preds = _evaluate(r, s, epoch)
    improved = s.best.update(epoch + 1, s.val_loss, s.val_acc)
    lr = s.lr(max(s.step - 1, 0))
    r.send(EpochEvent(epoch + 1, s.train_loss, s.train_acc, s.val_loss, s.val_acc, lr, round(ms, 1),
                      round(sums[2] / max(ms, 1e-9) * 1e3, 1)))
    with open(r.out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"epoch": epoch + 1, "train_loss": s.train_loss, "train_acc": s.train_acc,
                            "val_loss": s.val_loss, "val_acc": s.val_acc, "lr": lr, "ms": round(ms, 1)}) + "\n")
    s.sums = [0.0, 0, 0]
    _save_ckpt(r, s, epoch + 1, 0)
    if improved:                           # after the checkpoint that records it: see _resume
        _save_best(r, s)
    s.epochs_done = epoch + 1


def _finish(r: _Run, s: _State, t_run: float) -> DoneEvent:
    """The confusion matrix of the last eval, final/, and the `done` event."""
    job, ds = r.job, s.ds
    if s.preds is None and len(ds.val):
        s.val_loss, s.val_acc, s.preds = _evaluate(r, s, s.epochs_done - 1)
    if s.preds is not None:
        k = len(ds.classes)
        cm = np.zeros((k, k), np.int64)
        np.add.at(cm, (ds.val.labels, s.preds), 1)
        (r.out / "confusion.json").write_text(json.dumps({"split": "val", "classes": ds.classes,
                                                          "matrix": cm.tolist()}) + "\n")
    final = _save_package(s, r.out / "final")
    best = r.out / "best" if s.best.epoch is not None else None
    if best is not None and _package_epoch(best) != s.best.epoch:   # a resume on another backend
        log(f"best/ does not hold epoch {s.best.epoch} (the best {job.select}); not reported")
        best = None
    mem = dict(s.engine.memory())
    if s.prefix_engine is not None:
        mem["prefix"] = s.prefix_engine.memory()["peak"]
    if s.cache is not None:
        mem["feature_cache"] = s.cache.nbytes()
    done = DoneEvent(str(r.out), str(final), s.epochs_done, s.step, s.train_loss, s.train_acc, s.val_loss, s.val_acc,
                     round((time.perf_counter() - t_run) * 1e3, 1), mem, best=None if best is None else str(best),
                     best_epoch=s.best.epoch, select=job.select, best_metric=s.best.metric,
                     final_metric=s.best.value(s.val_loss, s.val_acc), stopped_early=s.stopped_early)
    r.send(done)
    return done


def _stage_name(job: TrainJob) -> str:
    if job.init == "scratch":
        return "scratch"
    return job.layers if isinstance(job.layers, str) else f"N={job.layers}"


def _truncate_metrics(path: Path, epochs_done: int) -> list[str]:
    """Keep the metrics lines of epochs 1..epochs_done (a resumed run writes the rest again);
    returns them."""
    if not path.is_file():
        return []
    keep = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(ln)["epoch"] <= epochs_done:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):    # a line cut short by a full disk or a kill
            pass
    path.write_text("".join(ln + "\n" for ln in keep))
    return keep


def _save_package(s: _State, dest: Path, **extra) -> Path:
    """The model (its own outputs: a final Softmax stays) with the engine's weights, as a package;
    meta.trained records the stage, epochs, data and dtype (+ extra)."""
    graph, job, trained = s.graph, s.job, s.engine.params()
    weights = {k: np.asarray(trained.get(k, v), np.float32) for k, v in graph.weights.items()}
    meta = dict(graph.meta, trained={"stage": _stage_name(job), "epochs": job.epochs, "data": job.data,
                                     "dtype": job.dtype, **extra})
    g = Graph(graph.name, graph.inputs, graph.outputs, graph.nodes, graph.params, weights, list(s.ds.classes),
              meta, graph.format)
    return save_package(g, dest)


def _save_best(r: _Run, s: _State) -> None:
    """best/: the package of the epoch s.best.epoch, whose weights the engine holds now."""
    _save_package(s, r.out / "best", epoch=s.best.epoch, select=s.best.select, metric=s.best.metric)


def _package_epoch(dest: Path) -> int | None:
    """meta.trained.epoch of the package at dest (best/), None if unreadable or absent."""
    try:
        trained = json.loads((dest / "model.json").read_text(encoding="utf-8")).get("meta", {}).get("trained")
        return trained.get("epoch") if isinstance(trained, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _diverged(r: _Run, s: _State, why: str, epoch: int, batch: int, lr: float) -> str:
    """The `diverged` message: the step, why, and the checkpoint that really is on disk (or none)."""
    ck = checkpoint.load_latest(r.out / "ckpt")
    if ck is None:
        kept = "no checkpoint was written before it, so nothing of this run is kept"
    else:
        e, b = ck.meta.get("epoch", 0), ck.meta.get("batch", 0)
        at = f"end of epoch {e}" if b == 0 else f"epoch {e + 1}, batch {b}"
        kept = f"the last checkpoint is {ck.path} (step {ck.step}, {at})"
    return (f"{why} at step {s.step + 1} (epoch {epoch + 1}, batch {batch + 1}); training stopped: {kept}; "
            f"lower lr (now {lr:.4g}) or set clip_grad_norm")


# ============================================================================ entry point
def main(argv=None, root=None) -> int:
    """python -m device_agent.training.train JOB.json: one JSON event per line on stdout; exit 1 on error.
    root: the device root its path fields must stay in (`python -m device_agent run` passes its cwd)."""
    argv = sys.argv[1:] if argv is None else argv

    def emit(ev: Event) -> None:
        sys.stdout.write(ev.to_json() + "\n")
        sys.stdout.flush()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if len(argv) != 1:
            raise JobError("usage: python -m device_agent.training.train JOB.json")
        run(read_train_job(argv[0], root), emit)    # root: paths confined to it (the agent's `run`)
        return 0
    except ThomasError as e:
        if not getattr(e, "reported", False):
            emit(ErrorEvent(e.code, str(e)))
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if not getattr(e, "reported", False):
            emit(ErrorEvent("interrupted", "interrupted"))
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the protocol's last line is always done or error)
        if not getattr(e, "reported", False):
            emit(ErrorEvent("internal", f"{type(e).__name__}: {e}"))
        if os.environ.get("THOMAS_DEBUG"):
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (THOMAS_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
