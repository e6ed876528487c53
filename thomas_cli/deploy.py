"""Deploy: models and datasets onto a device (what `thomas push-model`, `push-data` and every command that
pushes what it needs do).

    res = push_model(s, graph, "mnv2", "zoo:mobilenet_v2")          # skipped when the device has that content
    res = push_data(s, Path("./flowers"), "flowers", size="64x256")  # decode here, write shards, push
    res = push_arrays(s, x, y, ["cat", "dog"], "pets", val=0.2)       # arrays already decoded
    rows = device_models(s.t)                                        # models/ of the device, with their meta

Device layout: models/<name>/{model.json, weights.npz, thomas.json} and
data/<name>/{dataset.json, classes.json, *.npy, thomas.json}; thomas.json holds the content hash,
so pushing the same thing again costs one small read. A tree is pushed under a temporary name
(`.push-NAME-PID`) and renamed into place, so a device never holds half a model; a failed push removes
its temp folder and the next push sweeps those of dead pushes. The host's registry (store.remember)
notes what went where.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from device_agent.training.dataset_write import DATASET_JSON, check_labels, random_split, write_splits
from device_agent.errors import DataError, DiskError, ThomasError
from device_agent.fsutil import disk_error
from device_agent.model.graph import Graph, load_package, save_package
from device_agent.limits import parse_json

from . import images, store, zoo
from .app import err, progress
from .device import Session
from .partition import plan_parts
from .transport.base import Transport, check_rel

META = "thomas.json"


def package_hash(pkg: Path) -> str:
    """Content hash of a package (model.json + every array), independent of zip timestamps."""
    h = hashlib.sha256((pkg / "model.json").read_bytes())
    with np.load(pkg / "weights.npz", allow_pickle=False) as z:
        for k in sorted(z.files):
            a = z[k]
            h.update(f"{k}:{a.dtype}:{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tree_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def device_meta(t: Transport, rel: str) -> dict | None:
    if not t.exists(f"{rel}/{META}"):
        return None
    try:
        return parse_json(t.read_bytes(f"{rel}/{META}"), rel, ValueError)   # a deep or bad file: no meta
    except ValueError:
        return None


# ============================================================================ models
def resolve_model_source(src: str, classes: int, size: int, width: float, seed: int) -> tuple[Graph, str, str]:
    """(graph, default name, source description) for a package directory or a zoo name."""
    p = Path(src)
    if p.is_dir():
        return load_package(p), p.resolve().name, str(p.resolve())
    if src in zoo.ZOO:
        g = zoo.build(src, num_classes=classes, size=size, width=width, seed=seed)
        return g, src, f"zoo:{src} classes={classes} size={size} width={width} seed={seed}"
    raise ThomasError(f"'{src}' is neither a model package directory nor a zoo model "
                      f"({', '.join(zoo.ZOO)})")


def push_model(s: Session, g: Graph, name: str, source: str, force: bool = False) -> dict:
    """Push a graph as models/<name> unless the device already has the same content."""
    store.check_name(name, "model")
    with tempfile.TemporaryDirectory(prefix="thomas-model-") as d:
        pkg = Path(d) / name
        save_package(g, pkg)
        digest = package_hash(pkg)
        have = device_meta(s.t, f"models/{name}")
        shapes = g.infer_shapes(batch=1)
        meta = {"name": name, "hash": digest, "bytes": tree_bytes(pkg), "params": g.num_params(),
                "classes": int(shapes[g.outputs[0]][-1]), "input": list(g.inputs[0].shape[1:]),
                "arch": g.name, "source": source, "pushed": time.strftime("%Y-%m-%d %H:%M:%S")}
        if have and have.get("hash") == digest and not force:
            store.remember(s.t.describe(), "models", name, have)
            return dict(have, skipped=True)
        (pkg / META).write_text(json.dumps(meta, indent=1) + "\n")
        publish(s, pkg, f"models/{name}")
    store.remember(s.t.describe(), "models", name, meta)
    return dict(meta, skipped=False)


def device_models(t: Transport) -> list[dict]:
    rows = []
    for e in t.listdir("models"):
        if not e.is_dir or e.name.startswith("."):
            continue
        meta = device_meta(t, f"models/{e.name}") or {"name": e.name, "hash": None, "source": "(no thomas.json)"}
        if meta.get("bytes") is None:
            meta["bytes"] = sum(f.size for f in t.listdir(f"models/{e.name}") if not f.is_dir)
        rows.append(dict(meta, name=e.name))
    return rows


# ============================================================================ data
def push_data(s: Session, src: Path, name: str, size=None, val: float | None = None, seed: int = 0,
              force: bool = False, channels: int = 3, resplit: bool = False) -> dict:
    """Decode an ImageFolder / .npz on the host (unreadable images listed and skipped), push data/<name>.
    size: None (the data's own H x W), S, "HxW" or (H, W); val: None keeps the data's own split (or
    splits 0.2 at random when it has none)."""
    store.check_name(name, "dataset")
    hw = tuple(size) if isinstance(size, tuple) else images.parse_size(size)
    if val is not None and not 0 <= val < 1:
        raise DataError(f"--val {val}: give a fraction in [0, 1)")
    dec = decode(src, hw, channels)
    parts, split_source, extra = plan_splits(dec, src, val, seed, resplit)
    return push_splits(s, parts, dec.classes, name, split_source, extra, source=str(src.resolve()),
                       bad=[p for p, _ in dec.bad], force=force)


def decode(src: Path, hw, channels: int) -> images.Decoded:
    """images.load with a progress bar; unreadable images listed on stderr (and kept in .bad)."""
    with progress(f"decoding {src.name}") as bar:
        task = bar.add_task("decode", total=images.count_inputs(src) or None)
        dec = images.load(src, hw, channels, on_image=lambda k: bar.advance(task, k))
    for path, why in dec.bad:
        err.print(f"[yellow]skipped[/] {path}: {why}", highlight=False, soft_wrap=True)
    return dec


def push_partitioned(sessions: list[Session], src: Path, name: str, size=None, val: float | None = None,
                     seed: int = 0, force: bool = False, channels: int = 3, resplit: bool = False,
                     alpha: float | None = None) -> list[dict]:
    """Decode once, cut into len(sessions) parts (partition.plan_parts: IID, or Dirichlet(alpha) by class)
    and push part j as data/<name> to sessions[j]; every part has the full class list. Returns each
    push's meta plus per_class (its examples of each class)."""
    store.check_name(name, "dataset")
    hw = tuple(size) if isinstance(size, tuple) else images.parse_size(size)
    if val is not None and not 0 <= val < 1:
        raise DataError(f"--val {val}: give a fraction in [0, 1)")
    for s in sessions:                 # an unreachable device fails before anything is decoded or pushed
        s.t.exists("data")
    dec = decode(src, hw, channels)
    plans = plan_parts(dec.parts, len(dec.classes), len(sessions), alpha, seed, val, resplit, str(src))
    out = []
    for s, (parts, split_source, extra) in zip(sessions, plans):
        per_class = sum(np.bincount(y, minlength=len(dec.classes)) for _, y, _ in parts.values())
        res = push_splits(s, parts, dec.classes, name, split_source, extra, source=str(src.resolve()),
                          bad=[p for p, _ in dec.bad], force=force)
        out.append(dict(res, per_class=[int(c) for c in per_class], device=s.t.serial, root=s.t.root,
                        transport=s.t.kind))
    return out


def plan_splits(dec: images.Decoded, src: Path, val: float | None, seed: int, resplit: bool):
    """(parts {split: (x, y, rows)}, split_source, extra dataset.json fields): the data's own split
    as it is, or a random stratified val split (of the single set, of train when the data has none,
    of train + val pooled with resplit); a test split is always kept."""
    p = dec.parts
    if "val" in p and not resplit:
        if val is not None:
            raise DataError(f"{src}: has its own split ({dec.layout}: {len(p['train'][1])} train / "
                            f"{len(p['val'][1])} val); --val would re-split it: drop --val, or add --resplit "
                            f"to pool train and val and split them at random")
        return {k: (x, y, None) for k, (x, y) in p.items()}, "dataset", {}
    frac = 0.2 if val is None else val
    if "all" in p:
        x, y = p["all"]
    elif "val" in p:
        x, y = (np.concatenate([p["train"][i], p["val"][i]]) for i in (0, 1))
    else:
        x, y = p["train"]
    is_val = random_split(y, len(dec.classes), frac, seed)
    parts = {"train": (x, y, np.flatnonzero(~is_val)), "val": (x, y, np.flatnonzero(is_val))}
    if "test" in p:
        parts["test"] = p["test"] + (None,)
    return parts, f"random val={frac:g} seed={seed}", {"seed": int(seed), "val_fraction": float(frac)}


def push_arrays(s: Session, x: np.ndarray, y: np.ndarray, classes: list[str], name: str, val: float = 0.2,
                seed: int = 0, source: str = "arrays", bad: list[str] | None = None, force: bool = False) -> dict:
    """x (N,H,W,C) uint8 (C 1 or 3), y (N,) split at random (val fraction, seed), pushed as
    data/<name> unless the device already holds the same content (same dataset.json hash)."""
    y = np.asarray(y)
    check_labels(y, len(classes), "labels")
    is_val = random_split(y, len(classes), val, seed)
    parts = {"train": (x, y, np.flatnonzero(~is_val)), "val": (x, y, np.flatnonzero(is_val))}
    return push_splits(s, parts, classes, name, f"random val={val:g} seed={seed}",
                       {"seed": int(seed), "val_fraction": float(val)}, source, bad, force)


def push_splits(s: Session, parts: dict, classes: list[str], name: str, split_source: str, extra: dict,
                source: str, bad: list[str] | None = None, force: bool = False) -> dict:
    """Write {split: (x, y, rows)} (dataset_write.write_splits) in a host temp folder, push it whole."""
    store.check_name(name, "dataset")
    with tempfile.TemporaryDirectory(prefix="thomas-data-") as d:
        try:
            ds = write_splits(Path(d) / name, parts, classes, split_source, extra=extra)
        except OSError as e:
            raise DiskError(f"cannot write the dataset in this computer's temp folder ({e.strerror or e} at "
                            f"{e.filename or d}): free space there or point TMPDIR at another folder",
                            "disk_full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "io") from None
        doc = json.loads((ds / DATASET_JSON).read_text())
        digest = hashlib.sha256((ds / DATASET_JSON).read_bytes()).hexdigest()
        counts = {k: v["count"] for k, v in doc["splits"].items()}
        meta = {"name": name, "hash": digest, "bytes": tree_bytes(ds), "count": doc["count"],
                "train": counts["train"], "val": counts.get("val", 0),
                **({"test": counts["test"]} if "test" in counts else {}),
                "classes": list(classes), "height": doc["height"], "width": doc["width"],
                "channels": doc["channels"], "size": f"{doc['height']}x{doc['width']}",
                "split_source": split_source, "source": source, "bad": bad or [],
                "pushed": time.strftime("%Y-%m-%d %H:%M:%S")}
        have = device_meta(s.t, f"data/{name}")
        if have and have.get("hash") == digest and not force:
            store.remember(s.t.describe(), "data", name, have)
            return dict(have, skipped=True, bad=meta["bad"])
        (ds / META).write_text(json.dumps(meta, indent=1) + "\n")
        files = sum(1 for p in ds.rglob("*") if p.is_file())
        with progress(f"pushing {name}") as bar:
            task = bar.add_task("push", total=files)
            publish(s, ds, f"data/{name}", on_file=lambda n: bar.advance(task))
    store.remember(s.t.describe(), "data", name, meta)
    return dict(meta, skipped=False)


# ============================================================================ publishing trees
def publish(s: Session, local: Path, rel: str, on_file=None) -> None:
    """publish_tree with the device's free space checked first and its OS errors (full, read-only, no
    permission) as one line naming the path and the fix; a failed push leaves nothing."""
    need = tree_bytes(local)
    try:
        free = s.t.free_bytes()
        if free is not None and need > free:
            raise DiskError(f"no space left on the device for {rel}: it needs {need / 2**20:.1f} MiB, {s.t.root} "
                            f"has {free / 2**20:.1f} MiB free: free space on the device (thomas runs rm RUN, "
                            f"a smaller --size) or use another device root (--device-root)", "disk_full")
        publish_tree(s.t, local, rel, on_file)
    except OSError as e:
        if e.filename2 is not None:              # shutil's copy names its source first, the device file second
            e = OSError(e.errno, e.strerror, e.filename2)
        raise disk_error(e, f"{s.t.root}/{rel}", "then push again") from None


def publish_tree(t: Transport, local: Path, rel: str, on_file=None) -> int:
    """Push a directory to `rel` whole: into a temp name first (`.push-NAME-PID`), then one rename.
    A failed push removes its temp folder; stale ones of dead pushes (pid not alive) are swept first."""
    rel = check_rel(rel)
    parent, _, name = rel.rpartition("/")
    prefix = parent + "/" if parent else ""
    tmp = f"{prefix}.push-{name}-{os.getpid()}"
    with contextlib.suppress(OSError, ThomasError):          # best effort: never blocks a push
        for e in t.listdir(parent) if parent else []:
            m = re.fullmatch(r"\.push-.+-(\d+)", e.name)
            if m and e.is_dir and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                t.remove(prefix + e.name)
    t.remove(tmp)
    try:
        n = t.push_tree(local, tmp, on_file)
        t.move(tmp, rel)
    except BaseException:
        with contextlib.suppress(OSError, ThomasError):
            t.remove(tmp)
        raise
    return n


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this computer exists (the pid in a `.push-NAME-PID` temp name)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True
