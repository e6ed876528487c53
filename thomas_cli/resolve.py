"""What a command's MODEL and --data name, and where that is (or will be) on the device.

    pkg = resolve_package("20260101-120000-ab12")           # a run's best/ (else final/), or a package dir
    dmeta = ensure_dataset(s, "./flowers", None, None)      # a dataset of the device, else pushed from here
    mmeta = ensure_model(s, "mobilenet_v2", dmeta, 1.0, 0)  # a device model, run, package or zoo build
    check_fit(dmeta, mmeta)                                 # one line when the images do not fit the model
    m = eval_model(s, "./pkg")                              # {"remote", "source", "which", "graph", "push"}

MODEL is, in this order: a model on the device (models/<name>), a run of this computer (its id or its
folder: best/ when it has one, else final/), a package directory, a zoo name. Pushing goes through
deploy.py; nothing here writes a run record.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from device_agent.errors import DataError, PackageError, ThomasError
from device_agent.model.graph import MODEL_JSON, Graph, load_package
from device_agent.limits import parse_json

from . import images, store, zoo
from .deploy import device_meta, push_data, push_model, resolve_model_source
from .device import Session


# ============================================================================ packages on this computer
def resolve_package(arg: str | os.PathLike, which: str | None = None, note=None) -> Path:
    """PACKAGE_DIR, or a RUN (its folder, or a run id under $THOMAS_HOME/runs): the run's best/ package
    (its best epoch) when it has one, else final/ (its last epoch); which "best" | "final" picks one.
    note(message) is told which package of a run was used."""
    if which not in (None, "best", "final"):
        raise PackageError(f"--which must be best or final, got '{which}'")
    p = Path(arg)
    cands = [p]
    if not p.exists() and not p.is_absolute():
        cands.append(store.runs_dir() / str(arg))
    for c in cands:
        if (c / MODEL_JSON).is_file():
            if which is not None:
                raise PackageError(f"{c} is a model package: --which picks a run's best/ or final/")
            return c
        for w in [which] if which else ["best", "final"]:
            if (c / w / MODEL_JSON).is_file():
                if note is not None:
                    note(_which_note(c, w, which))
                return c / w
        if c.is_dir():
            if (c / "job.json").is_file() or (c / "events.jsonl").is_file():
                raise PackageError(f"{c}: the run has no {which or 'final'}/ package (still running, or it failed?)")
            raise PackageError(f"{c}: neither a model package ({MODEL_JSON}) nor a run with final/")
    raise PackageError(f"{arg}: no such package, run folder or run id")


def _which_note(run: Path, which: str, asked: str | None) -> str:
    """'run R: best/ (epoch 3 of 10, val_acc 0.9120)' and, when it was the default, how to get the other."""
    try:
        t = json.loads((run / which / MODEL_JSON).read_text()).get("meta", {}).get("trained") or {}
    except (OSError, ValueError, AttributeError):
        t = {}
    said = f"run {run.name}: {which}/"
    if which == "best" and isinstance(t.get("metric"), (int, float)):
        said += f" (epoch {t.get('epoch')} of {t.get('epochs')}, {t.get('select')} {t['metric']:.4f})"
    if asked is None:
        said += ("; --which final for the last epoch's" if which == "best"
                 else " (the run has no best/: it had no val split)")
    return said


def run_model_name(pkg: Path) -> str:
    """The device model name of a package: a run's final/ goes by the run's id, its best/ as
    <id>-best, a package directory by its own name."""
    src = pkg.resolve()
    name = {"final": src.parent.name, "best": f"{src.parent.name}-best"}.get(src.name, src.name)
    return store.check_name(name, "model")


def run_package(model: str, note=None) -> tuple[Path, str] | None:
    """(package, device model name) when MODEL names a training run of this computer (its id or its
    folder): the run's best/ model when it has one, else final/, pushed as models/<run>-best or
    models/<run>. None when MODEL is something else."""
    run_id, host = _run_dir(model)
    if run_id is None:
        return None
    pkg = resolve_package(host, note=note)
    return pkg, run_model_name(pkg)


def device_graph(s: Session, remote: str, bad: str = "is not a model") -> Graph:
    """The graph of a package on the device, from its model.json alone (no weights)."""
    doc = parse_json(s.t.read_bytes(f"{remote}/{MODEL_JSON}"), f"{remote}/{MODEL_JSON} on {s.t.serial}",
                     PackageError)          # nesting depth: one line, never a RecursionError
    try:
        return Graph.from_json(doc, {})
    except ValueError as e:
        raise PackageError(f"{remote}/{MODEL_JSON} on {s.t.serial} {bad} ({e})") from None


def push_local(s: Session, g: Graph, pkg: Path) -> str:
    """Push a local package as push-model would (skipped when the device holds the same content):
    a run's final/ goes by the run's id, its best/ as <id>-best, a package directory by its name.
    Returns models/<name>."""
    src = pkg.resolve()
    name = run_model_name(src)
    res = push_model(s, g, name, str(src))
    if not res["skipped"]:
        s.note(f"pushed {src} to {s.t.serial}:{s.t.root}/models/{name}")
    return f"models/{name}"


# ============================================================================ finetune: model and data
def model_input(s: Session, model: str) -> tuple | None:
    """(C, H, W) of MODEL's input when it is known before anything is pushed (a model on the device,
    a package directory), None for a zoo name (built at the dataset's size)."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        have = device_meta(s.t, f"models/{model}")
        return tuple(have["input"]) if have and len(have.get("input") or ()) == 3 else None
    if Path(model).is_dir():
        shape = load_package(Path(model)).inputs[0].shape
        return tuple(shape[1:]) if len(shape) == 4 else None
    return None


def ensure_dataset(s: Session, data: str, size, val: float | None, model_in: tuple | None = None) -> dict:
    """The dataset's meta on the device (a name it holds wins), else push the local folder/.npz at
    --size or the model's H x W, in the model's channels (a gray model gets gray data)."""
    name = data
    local = Path(data)
    on_device = store.NAME.match(data) and s.t.exists(f"data/{data}/dataset.json")
    if not on_device and local.exists() and (local.is_dir() or local.suffix == ".npz"):
        name = local.stem
        hw = images.parse_size(size) or (tuple(model_in[1:]) if model_in else None)
        meta = push_data(s, local, name, hw, val, channels=model_in[0] if model_in else 3)
        if not meta.get("skipped"):
            s.note(f"pushed dataset '{name}' ({meta['count']} images, {meta['size']}, "
                   f"split {meta['split_source']})")
        return meta
    if val is not None or size is not None:
        raise ThomasError(f"--size and --val apply to a local folder or .npz; '{data}' is already on "
                          f"{s.t.serial} (push it again with `thomas push-data` to change it)")
    store.check_name(name, "dataset")
    meta = device_meta(s.t, f"data/{name}")
    if meta is None:
        if not s.t.exists(f"data/{name}/dataset.json"):
            raise ThomasError(f"no dataset '{name}' on {s.t.serial} and no local folder or .npz of that name "
                              f"(push one with `thomas push-data DIR`)")
        classes = json.loads(s.t.read_bytes(f"data/{name}/classes.json"))
        meta = {"name": name, "classes": classes, "size": None}
    return dict(meta, name=name)           # NOTE: a copied folder's thomas.json names the original


def check_fit(data_meta: dict, model_meta: dict) -> None:
    """One line before any run when the dataset's images do not fit the model's input (size, or RGB
    data for a 1-channel model); a gray dataset fits an RGB model (replicated on the device)."""
    inp, h, w = model_meta.get("input"), data_meta.get("height"), data_meta.get("width")
    if not inp or len(inp) != 3 or h is None:
        return                                 # the agent checks it (Dataset.check_input)
    c, mh, mw = inp
    if (mh, mw) != (h, w):
        raise DataError(f"dataset '{data_meta['name']}' is {h}x{w}, model '{model_meta['name']}' takes {mh}x{mw}: "
                        f"push the data again with --size {mh}x{mw}")
    if c == 1 and data_meta.get("channels", 3) == 3:
        raise DataError(f"dataset '{data_meta['name']}' is RGB, model '{model_meta['name']}' takes 1-channel "
                        f"(grayscale) input: push the data again with --channels 1")


def ensure_model(s: Session, model: str, data_meta: dict, width: float, seed: int) -> dict:
    """The model's meta on the device (a name it holds wins), else push a run's model, a package
    directory or a zoo build at the dataset's size and classes."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        return dict(device_meta(s.t, f"models/{model}") or {}, name=model)
    run_pkg = run_package(model, note=s.note)
    if run_pkg is not None:                    # fine-tune again from a run: its best/ (else final/) model
        pkg, name = run_pkg
        return push_model(s, load_package(pkg), name, f"run {pkg.parent.name} {pkg.name}/")
    if Path(model).is_dir():
        g, name, source = resolve_model_source(model, 0, 0, 1.0, 0)
        return push_model(s, g, name, source)
    if model in zoo.ZOO:
        h, w = data_meta.get("height"), data_meta.get("width")
        if h is not None and h != w:
            raise DataError(f"zoo models take square inputs, dataset '{data_meta['name']}' is {h}x{w}: push it "
                            f"with --size S, or import a model of that input (thomas import)")
        g, name, source = resolve_model_source(model, len(data_meta["classes"]), h or data_meta.get("size") or 224,
                                               width, seed)
        res = push_model(s, g, model, source)
        s.note(f"pushed {source} as '{model}'")
        return res
    raise ThomasError(f"no model '{model}' on {s.t.serial}: push it with `thomas push-model`, or give a "
                      f"package directory or a zoo name ({', '.join(zoo.ZOO)})")


# ============================================================================ bench and tune
def bench_model(s: Session, model: str, size: int, width: float, classes: int) -> str:
    """The device path of the model package (pushed when it is a zoo name or a local directory)."""
    if store.NAME.match(model) and s.t.exists(f"models/{model}/model.json"):
        return f"models/{model}"
    if Path(model).is_dir() or model in zoo.ZOO:
        g, name, source = resolve_model_source(model, classes, size, width, 0)
        if model in zoo.ZOO:
            name = f"bench-{model}-{size}" + ("" if width == 1.0 else f"-w{width:g}")
        push_model(s, g, name, source)
        return f"models/{name}"
    raise ThomasError(f"no model '{model}' on {s.t.serial}: push it with `thomas push-model`, or give a "
                      f"package directory or a zoo name ({', '.join(zoo.ZOO)})")


def pull_model(t, name: str, tmp: Path) -> Path:
    """models/<name> of device `t` copied to tmp/<name> (bench --compare desktop runs it here too)."""
    store.check_name(name, "model")
    if not t.exists(f"models/{name}/model.json"):
        raise ThomasError(f"no model '{name}' on {t.serial}: push it with `thomas push-model`, or give a "
                          f"package directory or a zoo name ({', '.join(zoo.ZOO)})")
    t.pull_tree(f"models/{name}", tmp / name)
    return tmp / name


# ============================================================================ eval
def _run_dir(model: str) -> tuple[str | None, Path | None]:
    """(run id, host folder) when MODEL names a run: a run id of this host or a run folder."""
    p = Path(model)
    if p.is_dir() and not (p / MODEL_JSON).is_file() and any((p / w / MODEL_JSON).is_file() or (p / w).is_dir()
                                                             for w in ("best", "final")):
        return p.resolve().name, p
    if not p.exists() and store.NAME.match(model) and (store.runs_dir() / model / "run.json").is_file():
        return model, store.run_dir(model)
    return None, None


def eval_model(s: Session, model: str) -> dict:
    """Where the model to evaluate is (or will be) on the device. Returns {"remote", "source", "which"
    (best | final | None), "graph", "push": (local package, name) when it must be pushed first}."""
    p = Path(model)
    if (p / MODEL_JSON).is_file():
        name = store.check_name(p.resolve().name, "model")
        return {"remote": f"models/{name}", "source": str(p.resolve()), "which": None, "graph": load_package(p),
                "push": (p.resolve(), name)}
    run_id, host = _run_dir(model)
    if run_id is not None:
        return _run_model(s, run_id, host)
    if store.NAME.match(model) and s.t.exists(f"models/{model}/{MODEL_JSON}"):
        return {"remote": f"models/{model}", "source": f"{s.t.serial}:{s.t.root}/models/{model}", "which": None,
                "graph": device_graph(s, f"models/{model}")}
    raise PackageError(f"{model}: no such package directory, run or model on {s.t.serial} "
                       f"(see `thomas runs list`, `thomas models list`)")


def _run_model(s: Session, run_id: str, host: Path) -> dict:
    """A run's best/ model when it has one, else final/: the run's own folder on its device, else the
    host's copy pushed as models/<run> (final) or models/<run>-best."""
    rec = store.read_json(host / "run.json") or {}
    if rec.get("kind") in ("eval", "bench"):
        raise PackageError(f"run {run_id} is a {rec['kind']} run: it trained no model")
    here = bool(rec.get("device")) and store.device_key(rec["device"]) == store.device_key(s.t.describe())
    for which in ("best", "final"):
        remote = f"runs/{run_id}/{which}"
        if here and s.t.exists(f"{remote}/{MODEL_JSON}"):
            return {"remote": remote, "source": f"run {run_id} {which}/", "which": which,
                    "graph": device_graph(s, remote)}
        if (host / which / MODEL_JSON).is_file():
            name = run_model_name(host / which)
            return {"remote": f"models/{name}", "source": f"run {run_id} {which}/", "which": which,
                    "graph": load_package(host / which), "push": ((host / which).resolve(), name)}
    raise PackageError(f"run {run_id} has no best/ or final/ model (still running, or it failed?)")


def check_data(s: Session, data: str, split: str, g: Graph) -> dict:
    """dataset.json of data/<data> on the device; a one-line error naming model and dataset when the split is
    missing or the model does not fit (input H×W, classes). The agent checks again (channels too)."""
    from device_agent.model.heads import num_classes

    store.check_name(data, "dataset")
    rel = f"data/{data}/dataset.json"
    if not s.t.exists(rel):
        raise DataError(f"no dataset '{data}' on {s.t.serial} (push it with `thomas push-data`)")
    try:
        doc = parse_json(s.t.read_bytes(rel), f"{s.t.serial}:{s.t.root}/{rel}", DataError)
        counts = {k: int(v.get("count", 0)) for k, v in doc["splits"].items()}
        h, w, k = int(doc["height"]), int(doc["width"]), int(doc["num_classes"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{s.t.serial}:{s.t.root}/{rel} is not a dataset description ({e})") from None
    if not counts.get(split):
        how = {"val": "it was pushed with --val 0", "test": "push it with a test/ folder or x_test, y_test",
               "train": "it has no training images"}[split]
        raise DataError(f"dataset '{data}' has no '{split}' split ({how})")
    shapes = g.infer_shapes(batch=1)
    shape = shapes[g.inputs[0].name]
    if len(shape) == 4 and tuple(shape[2:]) != (h, w):
        raise DataError(f"model '{g.name}' takes {shape[2]}x{shape[3]} images, dataset '{data}' holds {h}x{w} "
                        f"(push the data again with --size {shape[2]}x{shape[3]})")
    if len(shape) == 4 and shape[1] == 1 and doc.get("channels", 3) == 3:
        raise DataError(f"model '{g.name}' takes 1-channel (grayscale) images, dataset '{data}' holds RGB "
                        f"(push the data again with --channels 1)")
    width = num_classes(g)
    if width != k:
        raise DataError(f"model '{g.name}' predicts {width} classes, dataset '{data}' has {k}")
    return doc


# ============================================================================ infer
def infer_model(s: Session, model: str, why: PackageError) -> Graph:
    """The graph (no weights) of models/MODEL on the device (`why`: MODEL is no local package or run)."""
    if not store.NAME.match(model) or not s.t.exists(f"models/{model}/{MODEL_JSON}"):
        raise PackageError(f"{why}; nor a model on {s.t.serial} (see `thomas models list`)")
    return device_graph(s, f"models/{model}", bad="is not JSON")
