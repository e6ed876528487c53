"""The training loop: one TrainJob from model package + dataset to a trained package.

    done = run(TrainJob.from_dict(doc), emit=print_event)    # raises ThomasError after an `error` event
    python -m device_agent.train JOB.json                    # JSONL events on stdout, logs on stderr

Run directory (job.out): job.json, events.jsonl, metrics.jsonl (one line per epoch), confusion.json
(val split, rows = true class), ckpt/ (checkpoint.py), final/ (a model package).

Order of one epoch e (0-based): batches in default_rng([seed, 1, e]).permutation order, each a
train_step with lr_at(global step); a checkpoint every `checkpoint_every` steps; then eval on val,
the `epoch` event, a metrics line and the epoch-end checkpoint. A resumed run restores parameters,
optimizer state and the (epoch, batch) position, and every random draw is a function of
(seed, epoch, batch, step), so its final weights are bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint
from .builder import reinit, replace_head
from .data import RNG_AUGMENT, Dataset, augment_batch, normalize, open_dataset
from .engine import engine_classes, resolve_backend
from .errors import JobError, ThomasError, TrainError
from .graph import Graph, load_package, save_package
from .optim import lr_at, make_optimizer
from .protocol import (Cache, Checkpoint, Done, Epoch, Error, Eval, Event, Plan, Progress, Step,
                       TrainJob)
from .stages import FeatureCache, split_graph, trainable_params
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
        self.telemetry = Telemetry()

    def send(self, ev: Event) -> None:
        if self.events is not None:
            self.events.write(ev.to_json() + "\n")
            self.events.flush()
        if self.emit is not None:
            self.emit(ev)
        self.telemetry.tick()
        if isinstance(ev, Epoch):           # joules and temperatures of the epoch that just ended
            self.send(self.telemetry.epoch(ev.epoch))


def run(job: TrainJob, emit=None) -> Done:
    """Run a job; every event goes to emit(event) and <out>/events.jsonl. On failure an `error`
    event is sent, then the ThomasError is raised again (marked .reported)."""
    r = _Run(job, emit)
    try:
        return _run(r)
    except ThomasError as e:
        r.send(Error(e.code, str(e)))
        e.reported = True
        raise
    except KeyboardInterrupt as e:
        r.send(Error("interrupted", "interrupted; the last checkpoint is kept"))
        e.reported = True
        raise
    except Exception as e:  # noqa: BLE001  (a bug: record it as the run's last event, then re-raise)
        r.send(Error("internal", f"{type(e).__name__}: {e}"))
        e.reported = True
        raise
    finally:
        if r.events is not None:
            r.events.close()


def _prepare_out(job: TrainJob) -> None:
    out = Path(job.out)
    stored = out / "job.json"
    if stored.is_file():
        if not job.resume:
            raise JobError(f"job field 'out': {out} already holds a run; set resume to continue it "
                           f"or choose a new directory")
        try:
            old = TrainJob.from_dict(json.loads(stored.read_text()))
        except (ValueError, ThomasError) as e:
            raise JobError(f"job field 'resume': {stored} is unreadable ({e})") from None
        for k, v in job.to_dict().items():
            if k != "resume" and old.to_dict()[k] != v:
                raise JobError(f"job field '{k}' is {v!r}, the run in {out} was started with "
                               f"{old.to_dict()[k]!r}; a resumed job must match")
    elif out.exists() and any(out.iterdir()) and not job.resume:
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
    width = shapes[graph.outputs[0]][-1]
    if width != len(ds.classes):
        raise JobError(f"job field 'num_classes': model '{graph.name}' predicts {width} classes, the "
                       f"dataset has {len(ds.classes)}; set num_classes to {len(ds.classes)} for a new head")
    return graph


def _run(r: _Run) -> Done:
    job, t_run = r.job, time.perf_counter()
    ds = open_dataset(job.data)
    graph = _load_graph(job, ds)
    backend = resolve_backend(job.backend, job.dtype, graph)
    dtype = np.dtype(job.dtype)
    trainable = trainable_params(graph, job.layers)
    split = split_graph(graph, trainable)
    Engine, Infer = engine_classes(backend)
    prefix_engine = []                    # built on first use: a cache hit never runs the prefix

    def prefix():
        if not prefix_engine:
            prefix_engine.append(Infer(split.prefix, dtype))
        return prefix_engine[0]
    order = [k for k in split.suffix.params if k in trainable]
    opt = make_optimizer(job.optimizer, {k: graph.params[k].shape for k in order}, dtype,
                         momentum=job.momentum, nesterov=job.nesterov, weight_decay=job.weight_decay,
                         betas=job.betas, eps=job.eps)
    engine = Engine(split.suffix, trainable, opt, job.bn_batch_stats, job.clip_grad_norm,
                    job.label_smoothing, dtype, job.seed, recompute=job.recompute)
    preprocess = graph.inputs[0].preprocess
    spe = ds.train.num_batches(job.batch, job.drop_last)
    if spe == 0:
        raise JobError(f"job field 'batch' is {job.batch}, more than the {len(ds.train)} training images, "
                       f"and drop_last is set: no batch to train on")
    if (job.bn_batch_stats and not job.drop_last and len(ds.train) % job.batch == 1
            and any(n.op == "BatchNorm" for n in split.suffix.nodes)):
        raise JobError(f"job field 'drop_last': the last batch of each epoch would hold 1 image "
                       f"({len(ds.train)} % {job.batch}), and BatchNorm with batch statistics needs 2; "
                       f"set drop_last or another batch size")
    total, warmup = job.epochs * spe, job.warmup_epochs * spe
    # everything is checked: only now is the run directory touched
    _prepare_out(job)
    r.events = open(r.out / "events.jsonl", "a", encoding="utf-8")

    def lr(step):
        return lr_at(step, base_lr=job.lr, schedule=job.schedule, total_steps=total, steps_per_epoch=spe,
                     warmup_steps=warmup, step_size=job.step_size, gamma=job.gamma)

    # ---------------------------------------------------------------- resume
    epoch0, batch0, step, sums = 0, 0, 0, [0.0, 0, 0]
    ck = checkpoint.load_latest(r.out / "ckpt", quarantine=True) if job.resume else None
    if ck is not None:
        for p, why in ck.skipped:
            log(f"skipped checkpoint {p.name}: {why}")
        if ck.meta.get("backend") != backend:
            log(f"checkpoint was written by backend {ck.meta.get('backend')}, resuming on {backend}: "
                f"the result will not be bit-identical")
        engine.load_params(ck.params)
        engine.load_optimizer_state(ck.optimizer)
        epoch0, batch0, step, sums = ck.meta["epoch"], ck.meta["batch"], ck.step, list(ck.meta["sums"])
        log(f"resumed from {ck.path.name}: epoch {epoch0 + 1}, batch {batch0 + 1}, step {step}")
        _truncate_metrics(r.out / "metrics.jsonl", epoch0)
    elif job.resume:
        log(f"no usable checkpoint in {r.out / 'ckpt'}; starting from the beginning")
        _truncate_metrics(r.out / "metrics.jsonl", 0)

    # ---------------------------------------------------------------- features
    cache = None
    if job.feature_cache and not job.augment and split.prefix is not None:
        root = Path(job.cache_dir) if job.cache_dir else default_cache_dir(job.data)
        cache = FeatureCache(root, split, ds.digest, backend, dtype,
                             {"model": str(Path(job.model).resolve()), "data": str(Path(job.data).resolve())})
    mem = engine.memory()
    n_train = int(sum(graph.weights[k].size for k in trainable))
    r.send(Plan(backend, job.dtype, _stage_name(job), n_train, graph.num_params(False) - n_train,
                [g for g in graph.param_groups() if any(graph.params[k].group == g for k in trainable)],
                list(split.cut), cache is not None, len(ds.train), len(ds.val), len(ds.classes), job.batch,
                job.epochs, spe, total, step, mem))

    computed: set[str] = set()

    def features(split_name: str, epoch: int) -> dict | None:
        """Cached prefix outputs of a split; fills the cache on a miss (sends a `cache` event)."""
        if cache is None:
            return None
        t0 = time.perf_counter()
        hit = split_name in cache.loaded or cache.open()
        if not hit:
            shown = [0]

            def progress(done: int, n: int) -> None:
                if done == n or done - shown[0] >= n / 10:
                    shown[0] = done
                    r.send(Progress("features", done, n))
            cache.fill({"train": ds.train, "val": ds.val}, prefix(), max(job.batch, 64), preprocess, progress)
            computed.update(cache.loaded)
        if split_name in computed:           # filled by this run: its first use is the miss
            hit = False
            computed.discard(split_name)
        feats = cache.loaded.get(split_name, {})
        rows = len(ds.train if split_name == "train" else ds.val)
        r.send(Cache(hit, split_name, epoch + 1, cache.key, rows,
                     int(sum(a.nbytes for a in feats.values())), round((time.perf_counter() - t0) * 1e3, 1)))
        return feats

    def inputs(part, rows: np.ndarray, feats: dict | None, epoch: int, batch_idx: int, augment: bool):
        """What the trainable part reads for these rows: cached features, prefix outputs or images."""
        if feats is not None:
            return {t: np.asarray(feats[t][rows]) for t in split.cut}
        u8 = part.rows(rows)
        if augment:
            u8 = augment_batch(u8, np.random.default_rng([job.seed, RNG_AUGMENT, epoch, batch_idx]))
        x = normalize(u8, preprocess, dtype)
        if split.prefix is None:
            return x
        outs = prefix().forward(x)
        return {t: outs[t] for t in split.cut}

    def evaluate(epoch: int):
        if len(ds.val) == 0:
            return None, None, None
        t0 = time.perf_counter()
        feats = features("val", epoch)
        loss_sum, correct, preds = 0.0, 0, []
        for lo in range(0, len(ds.val), job.batch):
            rows = np.arange(lo, min(lo + job.batch, len(ds.val)))
            ls, c, logits = engine.eval_batch(inputs(ds.val, rows, feats, epoch, 0, False), ds.val.labels[rows])
            loss_sum, correct = loss_sum + ls, correct + c
            preds.append(np.argmax(logits, axis=1))
        n = len(ds.val)
        r.send(Eval(epoch + 1, "val", loss_sum / n, correct / n, n, round((time.perf_counter() - t0) * 1e3, 1)))
        return loss_sum / n, correct / n, np.concatenate(preds)

    def save_ckpt(epoch: int, batch: int) -> None:
        t0 = time.perf_counter()
        meta = {"epoch": epoch, "batch": batch, "sums": sums, "backend": backend, "dtype": job.dtype,
                "rng": {"seed": job.seed, "shuffle": [job.seed, 1, epoch], "dropout_step": step}}
        p = checkpoint.save(r.out / "ckpt", step, params=engine.params(), optimizer=engine.optimizer_state(),
                            meta=meta, keep=job.keep_checkpoints)
        r.send(Checkpoint(step, epoch + (batch > 0), str(p), p.stat().st_size,
                          round((time.perf_counter() - t0) * 1e3, 1)))

    # ---------------------------------------------------------------- epochs
    val_loss = val_acc = preds = None
    train_loss = train_acc = float("nan")
    for epoch in range(epoch0, job.epochs):
        start = batch0 if epoch == epoch0 else 0
        if epoch != epoch0:
            sums = [0.0, 0, 0]
        t0 = time.perf_counter()
        feats = features("train", epoch)
        perm = ds.train.order(epoch, job.seed)
        for i in range(start, spe):
            rows = perm[i * job.batch:(i + 1) * job.batch]
            y = ds.train.labels[rows]
            ts = time.perf_counter()
            x = inputs(ds.train, rows, feats, epoch, i, job.augment)
            rate = lr(step)
            loss, correct = engine.train_step(x, y, rate)
            if not math.isfinite(loss):
                raise TrainError(f"loss is {loss} at step {step + 1} (epoch {epoch + 1}, batch {i + 1}); "
                                 f"training stopped, the last good checkpoint is kept (lower lr or set "
                                 f"clip_grad_norm)")
            step += 1
            sums = [sums[0] + loss * len(y), sums[1] + correct, sums[2] + len(y)]
            r.send(Step(step, epoch + 1, i + 1, loss, correct / len(y), rate,
                        round((time.perf_counter() - ts) * 1e3, 1)))
            if job.checkpoint_every and step % job.checkpoint_every == 0 and i + 1 < spe:
                save_ckpt(epoch, i + 1)
        ms = (time.perf_counter() - t0) * 1e3
        train_loss, train_acc = sums[0] / max(sums[2], 1), sums[1] / max(sums[2], 1)
        val_loss, val_acc, preds = evaluate(epoch)
        r.send(Epoch(epoch + 1, train_loss, train_acc, val_loss, val_acc, lr(max(step - 1, 0)), round(ms, 1),
                     round(sums[2] / max(ms, 1e-9) * 1e3, 1)))
        with open(r.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                "val_loss": val_loss, "val_acc": val_acc, "lr": lr(max(step - 1, 0)),
                                "ms": round(ms, 1)}) + "\n")
        sums = [0.0, 0, 0]
        save_ckpt(epoch + 1, 0)

    # ---------------------------------------------------------------- results
    if preds is None and len(ds.val):
        val_loss, val_acc, preds = evaluate(job.epochs - 1)
    if preds is not None:
        k = len(ds.classes)
        cm = np.zeros((k, k), np.int64)
        np.add.at(cm, (ds.val.labels, preds), 1)
        (r.out / "confusion.json").write_text(json.dumps({"split": "val", "classes": ds.classes,
                                                          "matrix": cm.tolist()}) + "\n")
    final = _save_final(graph, engine.params(), r.out / "final", job, ds)
    mem = dict(engine.memory())
    if prefix_engine:
        mem["prefix"] = prefix_engine[0].memory()["peak"]
    if cache is not None:
        mem["feature_cache"] = cache.nbytes()
    done = Done(str(r.out), str(final), job.epochs, step, train_loss, train_acc, val_loss, val_acc,
                round((time.perf_counter() - t_run) * 1e3, 1), mem)
    r.send(done)
    return done


def _stage_name(job: TrainJob) -> str:
    if job.init == "scratch":
        return "scratch"
    return job.layers if isinstance(job.layers, str) else f"N={job.layers}"


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the metrics lines of epochs 1..epochs_done (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    path.write_text("".join(ln + "\n" for ln in keep))


def _save_final(graph: Graph, trained: dict, dest: Path, job: TrainJob, ds: Dataset) -> Path:
    weights = {k: np.asarray(trained.get(k, v), np.float32) for k, v in graph.weights.items()}
    meta = dict(graph.meta, trained={"stage": _stage_name(job), "epochs": job.epochs, "data": job.data,
                                     "dtype": job.dtype})
    g = Graph(graph.name, graph.inputs, graph.outputs, graph.nodes, graph.params, weights, list(ds.classes),
              meta, graph.format)
    return save_package(g, dest)


# ============================================================================ entry point
def main(argv=None) -> int:
    """python -m device_agent.train JOB.json: one JSON event per line on stdout; exit 1 on error."""
    argv = sys.argv[1:] if argv is None else argv

    def emit(ev: Event) -> None:
        sys.stdout.write(ev.to_json() + "\n")
        sys.stdout.flush()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if len(argv) != 1:
            raise JobError("usage: python -m device_agent.train JOB.json")
        try:
            doc = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        except OSError as e:
            raise JobError(f"{argv[0]}: cannot read the job ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise JobError(f"{argv[0]}: not valid JSON ({e})") from None
        run(TrainJob.from_dict(doc), emit)
        return 0
    except ThomasError as e:
        if not getattr(e, "reported", False):
            emit(Error(e.code, str(e)))
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if not getattr(e, "reported", False):
            emit(Error("interrupted", "interrupted"))
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the protocol's last line is always done or error)
        if not getattr(e, "reported", False):
            emit(Error("internal", f"{type(e).__name__}: {e}"))
        if os.environ.get("THOMAS_DEBUG"):
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (THOMAS_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
