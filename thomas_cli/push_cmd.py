"""`thomas push-model`, `thomas models list`, `thomas push-data`: what a run needs, on the device.

    thomas push-model mobilenet_v2 --classes 10 --size 32 --width 0.35    # a zoo model
    thomas push-model ./my_package --name mine                             # a model package
    thomas models list --json
    thomas push-data ./flowers --size 224 --val 0.2                        # ImageFolder or .npz

Device layout: models/<name>/{model.json, weights.npz, thomas.json} and
data/<name>/{dataset.json, classes.json, *.npy, thomas.json}; thomas.json holds the content hash,
so pushing the same thing again costs one small read. A tree is pushed under a temporary name and
renamed into place, so a device never holds half a model.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from device_agent.errors import DataError, ThomasError
from device_agent.graph import Graph, load_package, save_package

from . import images, store, zoo
from .main import app, err, guarded, out, print_json
from .session import Session, console_note, open_transport
from .transport.base import Transport

models_app = typer.Typer(no_args_is_help=True, help="Models on the device.")
app.add_typer(models_app, name="models")

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
        return json.loads(t.read_bytes(f"{rel}/{META}"))
    except ValueError:
        return None


def progress(total: int | None, what: str) -> Progress:
    return Progress(TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


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
        s.publish_tree(pkg, f"models/{name}")
    store.remember(s.t.describe(), "models", name, meta)
    return dict(meta, skipped=False)


@app.command("push-model")
@guarded
def push_model_cmd(
    model: str = typer.Argument(..., help="A zoo name (see `thomas zoo list`) or a model package directory."),
    name: str = typer.Option(None, "--name", help="Name on the device (default: zoo name / directory name)."),
    classes: int = typer.Option(1000, "--classes", min=1, help="Zoo: number of output classes."),
    size: int = typer.Option(224, "--size", min=1, help="Zoo: input height and width."),
    width: float = typer.Option(1.0, "--width", help="Zoo: width multiplier (MobileNets)."),
    seed: int = typer.Option(0, "--seed", help="Zoo: seed of the initial weights."),
    force: bool = typer.Option(False, "--force", help="Push even when the device has the same content."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Push a model to the device (re-pushed only when its content changed)."""
    g, default, source = resolve_model_source(model, classes, size, width, seed)
    s = Session(open_transport(note=console_note), note=console_note)
    res = push_model(s, g, name or default, source, force)
    if as_json:
        print_json(res)
        return
    what = "already on" if res["skipped"] else "pushed to"
    out.print(f"{res['name']}: {what} {s.t.serial}:{s.t.root}/models/{res['name']} "
              f"({res['bytes'] / 2**20:.1f} MiB, {res['params']:,} parameters, {res['classes']} classes, "
              f"input {'x'.join(map(str, res['input']))}, hash {res['hash'][:12]})")


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


@models_app.command("list")
@guarded
def models_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the models on the device, with size and content hash."""
    t = open_transport(note=console_note)
    rows = device_models(t)
    if as_json:
        print_json(rows)
        return
    tb = Table(title=f"models on {t.serial}:{t.root}")
    tb.add_column("name", no_wrap=True)
    for col in ("arch", "classes", "input", "params", "size"):
        tb.add_column(col)
    tb.add_column("hash", no_wrap=True)
    tb.add_column("pushed")
    for r in rows:
        tb.add_row(r["name"], r.get("arch", ""), str(r.get("classes", "")), "x".join(map(str, r.get("input", []))),
                   f"{r['params']:,}" if r.get("params") else "", f"{r['bytes'] / 2**20:.1f} MiB",
                   (r.get("hash") or "?")[:12], r.get("pushed", ""))
    out.print(tb)


# ============================================================================ data
def push_data(s: Session, src: Path, name: str, size: int, val: float, seed: int = 0,
              force: bool = False) -> dict:
    """Decode an ImageFolder / .npz on the host (unreadable images listed and skipped), push data/<name>."""
    store.check_name(name, "dataset")
    if not src.exists():
        raise DataError(f"{src}: no such folder or .npz file")
    loader = images.load_npz if src.suffix == ".npz" else images.load_image_folder
    with progress(None, f"decoding {src.name}") as bar:
        task = bar.add_task("decode", total=images.count_inputs(src))
        x, y, classes, report = loader(src, size, on_image=lambda: bar.advance(task))
    for path, why in report["bad"]:
        err.print(f"[yellow]skipped[/] {path}: {why}", highlight=False, soft_wrap=True)
    return push_arrays(s, x, y, classes, name, val, seed, source=str(src.resolve()),
                       bad=[p for p, _ in report["bad"]], force=force)


def push_arrays(s: Session, x: np.ndarray, y: np.ndarray, classes: list[str], name: str, val: float = 0.2,
                seed: int = 0, source: str = "arrays", bad: list[str] | None = None, force: bool = False) -> dict:
    """x (N,H,W,3) uint8, y (N,) -> device_agent.data's format, pushed as data/<name> unless the
    device already holds the same content (same dataset.json hash)."""
    from device_agent.data import DATASET_JSON, write_dataset

    store.check_name(name, "dataset")
    with tempfile.TemporaryDirectory(prefix="thomas-data-") as d:
        ds = write_dataset(Path(d) / name, x, y, classes, val_fraction=val, seed=seed)
        doc = json.loads((ds / DATASET_JSON).read_text())
        digest = hashlib.sha256((ds / DATASET_JSON).read_bytes()).hexdigest()
        meta = {"name": name, "hash": digest, "bytes": tree_bytes(ds), "count": int(len(y)),
                "train": doc["splits"]["train"]["count"], "val": doc["splits"].get("val", {}).get("count", 0),
                "classes": list(classes), "size": int(x.shape[1]), "source": source, "bad": bad or [],
                "pushed": time.strftime("%Y-%m-%d %H:%M:%S")}
        have = device_meta(s.t, f"data/{name}")
        if have and have.get("hash") == digest and not force:
            store.remember(s.t.describe(), "data", name, have)
            return dict(have, skipped=True, bad=meta["bad"])
        (ds / META).write_text(json.dumps(meta, indent=1) + "\n")
        files = sum(1 for p in ds.rglob("*") if p.is_file())
        with progress(files, f"pushing {name}") as bar:
            task = bar.add_task("push", total=files)
            s.publish_tree(ds, f"data/{name}", on_file=lambda n: bar.advance(task))
    store.remember(s.t.describe(), "data", name, meta)
    return dict(meta, skipped=False)


@app.command("push-data")
@guarded
def push_data_cmd(
    src: Path = typer.Argument(..., help="An ImageFolder (one subfolder per class) or an .npz (images, labels)."),
    size: int = typer.Option(224, "--size", min=8, help="Resize every image to SIZE x SIZE."),
    val: float = typer.Option(0.2, "--val", min=0.0, max=0.95, help="Fraction of each class held out for validation."),
    name: str = typer.Option(None, "--name", help="Dataset name on the device (default: folder / file name)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    force: bool = typer.Option(False, "--force", help="Push even when the device has the same content."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Decode images on this computer (Pillow), write uint8 shards + labels + classes.json, push them."""
    s = Session(open_transport(note=console_note), note=console_note)
    res = push_data(s, src, name or src.stem, size, val, seed, force)
    if as_json:
        print_json(res)
        return
    what = "already on" if res["skipped"] else "pushed to"
    bad = f", {len(res['bad'])} unreadable skipped" if res["bad"] else ""
    out.print(f"{res['name']}: {res['count']} images ({res['train']} train / {res['val']} val{bad}), "
              f"{len(res['classes'])} classes, {res['size']}x{res['size']}: {what} "
              f"{s.t.serial}:{s.t.root}/data/{res['name']} ({res['bytes'] / 2**20:.1f} MiB)")
