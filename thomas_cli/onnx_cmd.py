"""ONNX in and out, and inference: `thomas import`, `thomas export`, `thomas infer`.

    thomas import resnet.onnx -o models/resnet --labels synset.txt   # convert + parity check
    thomas export runs/20260101-xyz -o tuned.onnx                    # a run's final/ package
    thomas infer models/resnet --input cat.jpg --top 5               # pushes the package, runs on the device
    thomas --device local infer mnv2 --input imgs/ --json            # a model already on the device

onnx and onnxruntime are imported inside the commands, so `thomas --help` stays quick.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from device_agent.errors import OnnxError, PackageError
from device_agent.graph import MODEL_JSON, Graph, load_package, save_package

from .app import app, err, guarded, out, print_json
from .session import console_note

def resolve_package(arg: str | os.PathLike, which: str | None = None, note=None) -> Path:
    """PACKAGE_DIR, or a RUN (its folder, or a run id under $THOMAS_HOME/runs): the run's best/ package
    (its best epoch) when it has one, else final/ (its last epoch); which "best" | "final" picks one.
    note(message) is told which package of a run was used."""
    if which not in (None, "best", "final"):
        raise PackageError(f"--which must be best or final, got '{which}'")
    p = Path(arg)
    cands = [p]
    if not p.exists() and not p.is_absolute():
        cands.append(Path(os.environ.get("THOMAS_HOME") or "~/.thomas").expanduser() / "runs" / str(arg))
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


def _parity_line(r: dict, tol: float) -> str:
    return (f"parity vs onnxruntime (batch {r['batch']}, seed {r['seed']}): max abs {r['max_abs']:.2e}, "
            f"max rel {r['max_rel']:.2e} (tolerance {tol:.0e})")


def _check_tolerance(tol: float) -> None:
    if not tol > 0:
        raise OnnxError(f"--tolerance must be positive, got {tol}")


# ------------------------------------------------------------------------------------ import
def _round_trip(g: Graph, model: Path, shape, tolerance: float) -> tuple[Graph, dict]:
    """Write g as a package to a scratch folder, load it back with the agent's own loader
    (device_agent.graph.load_package) and run the parity check on THAT graph: what import
    writes is what was checked, and it loads on the device."""
    import shutil
    import tempfile

    from .onnx import onnx_parity

    tmp = Path(tempfile.mkdtemp(prefix="thomas-import-"))
    try:
        save_package(g, tmp / "pkg")
        loaded = load_package(tmp / "pkg")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep = onnx_parity(model, loaded, shape)
    loaded.meta["parity"] = {k: rep[k] for k in ("batch", "seed", "max_abs", "max_rel")} | {"tolerance": tolerance}
    return loaded, rep


@app.command("import")
@guarded
def import_cmd(
    model: Path = typer.Argument(..., help="The .onnx file (external data next to it is read too)."),
    output: Path = typer.Option(..., "-o", "--output", help="Package directory to write."),
    name: str = typer.Option(None, "--name", help="Model name (default: from the file)."),
    input_shape: str = typer.Option(None, "--input-shape", help="Input shape N,C,H,W (batch may be -1); "
                                    "overrides the file's."),
    labels: Path = typer.Option(None, "--labels", help="Class names: one per line, or a JSON list."),
    preprocess: str = typer.Option(None, "--preprocess", help="Preset input preprocessing to record: imagenet "
                                   "(x/255, ImageNet mean/std), unit (x/255) or signed ((x/255-0.5)/0.5)."),
    mean: str = typer.Option(None, "--mean", help="Per-channel mean after scaling, e.g. 0.5,0.5,0.5 "
                             "(one value = every channel): x = (pixel*scale - mean)/std."),
    std: str = typer.Option(None, "--std", help="Per-channel std (> 0), e.g. 0.5,0.5,0.5."),
    scale: str = typer.Option(None, "--scale", help="Pixel scale: a number or a fraction (default 1/255)."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest max-relative error accepted."),
    force: bool = typer.Option(False, "--force", help="Write the package even if the parity check fails."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Convert an ONNX model into a package, then check it against onnxruntime on a seeded batch.

    The package is written, loaded back with the agent's loader and checked as loaded:
    thomas import m.onnx -o models/m --mean 0.5 --std 0.5 --labels classes.txt"""
    from .onnx import import_onnx, parse_shape, read_labels
    from .onnx.preprocess import build_preprocess

    _check_tolerance(tolerance)
    shape = parse_shape(input_shape) if input_shape else None
    labs = read_labels(labels) if labels else None
    if output.exists() and not output.is_dir():
        raise OnnxError(f"{output}: exists and is not a directory")
    build_preprocess(preprocess, mean, std, scale, None)      # bad values fail before the import
    t0 = time.perf_counter()
    g = import_onnx(model, shape, name, labs)
    pre = build_preprocess(preprocess, mean, std, scale, g.inputs[0].shape)
    if pre is not None:
        g.inputs[0].preprocess = pre
    t1 = time.perf_counter()
    g, rep = _round_trip(g, model, shape, tolerance)
    ok = rep["max_rel"] <= tolerance
    written = ok or force
    if written:
        save_package(g, output)
    if as_json:
        print_json({"package": str(output) if written else None, "name": g.name, "source": str(model),
                    "opset": g.meta.get("opset"),
                    "input": {"name": g.inputs[0].name, "shape": list(g.inputs[0].shape),
                              "preprocess": g.inputs[0].preprocess},
                    "outputs": g.outputs, "nodes": len(g.nodes), "params": g.num_params(),
                    "ops": _op_counts(g), "parity": rep, "tolerance": tolerance, "ok": ok, "written": written,
                    "seconds": {"import": t1 - t0, "parity": time.perf_counter() - t1}})
    else:
        _import_report(g, model, output, rep, tolerance, ok, written)
    if not ok:
        msg = (f"parity check failed: max rel error {rep['max_rel']:.2e} exceeds --tolerance {tolerance:.0e} "
               f"(max abs {rep['max_abs']:.2e}) against onnxruntime")
        if force:
            err.print(f"[yellow]warning:[/] {msg}; package written anyway (--force)", highlight=False,
                      soft_wrap=True)
            return
        raise OnnxError(f"{msg}; package not written (use --force to keep it)")


def _import_report(g: Graph, model: Path, output: Path, rep: dict, tolerance: float, ok: bool, written: bool):
    from .onnx.preprocess import describe

    shape_s = "x".join("N" if d is None else str(d) for d in g.inputs[0].shape)
    if written:
        out.print(f"imported {model} -> {output} ({g.name}: {len(g.nodes)} nodes, "
                  f"{g.num_params():,} trainable parameters, input {shape_s}, opset {g.meta.get('opset')})",
                  highlight=False, soft_wrap=True)
        out.print(f"preprocess: {describe(g.inputs[0].preprocess)}", highlight=False, soft_wrap=True)
    out.print(_parity_line(rep, tolerance) + (" ok" if ok else " FAILED"), highlight=False, soft_wrap=True)


def _op_counts(g: Graph) -> dict:
    counts: dict[str, int] = {}
    for n in g.nodes:
        counts[n.op] = counts.get(n.op, 0) + 1
    return counts


# ------------------------------------------------------------------------------------ export
@app.command("export")
@guarded
def export_cmd(
    source: str = typer.Argument(..., help="A run (folder or run id: its best/ model, else final/) or a "
                                           "package directory."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    which: str = typer.Option(None, "--which", help="A run's best (its best epoch, the default when it has "
                                                    "one) or final (its last epoch) model."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset to write (7..21)."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest max-relative error accepted."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Write a package (or a run's final weights) as ONNX and check it in onnxruntime."""
    from .onnx import export_onnx, onnx_parity

    _check_tolerance(tolerance)
    pkg = resolve_package(source, which, note=console_note)
    g = load_package(pkg)
    export_onnx(g, output, opset)
    rep = onnx_parity(output, g)
    ok = rep["max_rel"] <= tolerance
    if as_json:
        print_json({"package": str(pkg), "onnx": str(output), "opset": opset, "bytes": output.stat().st_size,
                    "parity": rep, "tolerance": tolerance, "ok": ok})
    else:
        out.print(f"exported {pkg} -> {output} (opset {opset}, {output.stat().st_size / 1e6:.1f} MB)",
                  highlight=False, soft_wrap=True)
        out.print(_parity_line(rep, tolerance) + (" ok" if ok else " FAILED"), highlight=False, soft_wrap=True)
    if not ok:
        raise OnnxError(f"the exported model disagrees with THOMAS: max rel error {rep['max_rel']:.2e} exceeds "
                        f"{tolerance:.0e}; {output} kept for inspection")


# ------------------------------------------------------------------------------------ infer
def _probabilities(g: Graph, logits: np.ndarray) -> np.ndarray:
    """(N, K) scores -> probabilities; a model that already ends in Softmax is left alone."""
    prod = {o: n for n in g.nodes for o in n.outputs}
    last = prod.get(g.outputs[0])
    if last is not None and last.op == "Softmax":
        return logits
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _local_package(model: str, which: str | None = None) -> tuple[Graph, Path] | tuple[None, PackageError]:
    try:
        pkg = resolve_package(model, which, note=console_note)
    except PackageError as e:
        return None, e
    return load_package(pkg), pkg


def _device_model(s, model: str, why: PackageError) -> Graph:
    """The graph (no weights) of models/MODEL on the device: its model.json alone is read."""
    from . import store

    if not store.NAME.match(model) or not s.t.exists(f"models/{model}/{MODEL_JSON}"):
        raise PackageError(f"{why}; nor a model on {s.t.serial} (see `thomas models list`)")
    from device_agent.limits import parse_json

    rel = f"models/{model}/{MODEL_JSON}"
    doc = parse_json(s.t.read_bytes(rel), f"{rel} on {s.t.serial}", PackageError)   # size/depth: one line
    try:
        return Graph.from_json(doc, {})
    except ValueError as e:
        raise PackageError(f"models/{model}/{MODEL_JSON} on {s.t.serial} is not JSON ({e})") from None


def _push_local(s, g: Graph, pkg: Path) -> str:
    """Push a local package as push-model would (skipped when the device holds the same content):
    a run's final/ goes by the run's id, its best/ as <id>-best, a package directory by its name.
    Returns models/<name>."""
    from . import store
    from .push_cmd import push_model

    src = pkg.resolve()
    # a run's final/ goes as models/<run>, its best/ as models/<run>-best (as thomas eval does)
    name = {"final": src.parent.name, "best": f"{src.parent.name}-best"}.get(src.name, src.name)
    res = push_model(s, g, store.check_name(name, "model"), str(src))
    if not res["skipped"]:
        console_note(f"pushed {src} to {s.t.serial}:{s.t.root}/models/{name}")
    return f"models/{name}"


def run_infer(s, remote: str, x: np.ndarray, batch: int, backend: str,
              timeout: float | None) -> tuple[np.ndarray, dict]:
    """Push x as .npy into tmp/infer-<id>/ on the device, run the agent's infer on it, pull the
    logits back; the folder is removed afterwards. Returns (logits, the agent's `infer` event)."""
    import secrets
    import tempfile

    from .session import RunFailed
    from .transport.base import DeviceError, confined

    tmp = f"tmp/infer-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="thomas-infer-") as d:
        host = Path(d)
        np.save(host / "x.npy", np.ascontiguousarray(x, np.float32))
        try:
            s.t.push_file(host / "x.npy", f"{tmp}/x.npy")
            r = s.call(["infer", remote, f"{tmp}/x.npy", f"{tmp}/logits.npy", "--batch", str(batch),
                        "--backend", backend], timeout=timeout)
            last = r.events[-1] if r.events else {}
            if last.get("ev") == "error":
                raise RunFailed(last.get("code", "error"), f"agent on {s.t.serial}: {last.get('message')}")
            if last.get("ev") != "infer":
                tail = " | ".join(r.logs[-3:]) or "no output"
                raise DeviceError(f"the agent on {s.t.serial} ended (exit status {r.returncode}) without an "
                                  f"infer or error event: {tail}")
            dest = confined(host, "logits.npy", "logits")
            s.t.pull_file(f"{tmp}/logits.npy", dest)
            try:
                y = np.load(dest, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DeviceError(f"the logits pulled from {s.t.serial} are not a readable .npy ({e})") from None
        finally:
            s.t.remove(tmp)
    if y.shape[0] != x.shape[0]:
        raise DeviceError(f"the agent on {s.t.serial} returned {y.shape[0]} rows for {x.shape[0]} inputs")
    return y, last


@app.command("infer")
@guarded
def infer_cmd(
    model: str = typer.Argument(..., help="A package directory, a run (its best/ model, else final/), or the "
                                          "name of a model on the device (`thomas models list`)."),
    which: str = typer.Option(None, "--which", help="A run's best (the default when it has one) or final model."),
    input: Path = typer.Option(..., "--input", "-i", help="FILE.npy, an image, or a folder of images."),
    output: Path = typer.Option(None, "--output", help="Write the raw logits (N, ...) as .npy."),
    top: int = typer.Option(5, "--top", min=1, help="Classes to show per input."),
    batch: int = typer.Option(32, "--batch", min=1, help="Samples per forward pass."),
    backend: str = typer.Option("auto", "--backend", help="auto (OpenCL when the device has it, else numpy), "
                                                           "opencl or numpy."),
    timeout: float = typer.Option(300.0, "--timeout", help="Watchdog: seconds without an event from the agent."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Classify inputs on the device: top-k table with labels, and throughput.

    Images are decoded and preprocessed here (Pillow); the batch travels as .npy, the agent runs an
    inference-only pass (OpenCL when available) and the logits come back."""
    from .infer_input import load_inputs
    from .session import Session, open_transport

    if backend not in ("auto", "opencl", "numpy"):
        raise PackageError(f"--backend must be auto, opencl or numpy, got '{backend}'")
    g, pkg = _local_package(model, which)
    if g is None and which is not None:
        raise pkg                           # --which names a run's package: no device model to fall back to
    if g is not None:                       # bad inputs fail before the device is touched
        names, x = load_inputs(input, g.inputs[0])
    s = Session(open_transport(note=console_note), note=console_note)
    if g is None:
        g = _device_model(s, model, pkg)
        names, x = load_inputs(input, g.inputs[0])
        remote = f"models/{model}"
        source = f"{s.t.serial}:{s.t.root}/{remote}"
    else:
        remote, source = _push_local(s, g, pkg), str(pkg)
    t0 = time.perf_counter()
    logits, ev = run_infer(s, remote, x, batch, backend, timeout or None)
    wall = time.perf_counter() - t0
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        np.save(output, logits)
    flat = logits.reshape(logits.shape[0], -1).astype(np.float64)
    probs = _probabilities(g, flat)
    k = min(top, flat.shape[1])
    labels = g.labels if g.labels is not None and len(g.labels) == flat.shape[1] else None
    rows = []
    for i, nm in enumerate(names):
        idx = np.argsort(-probs[i], kind="stable")[:k]
        rows.append({"input": nm, "top": [{"index": int(j), "label": labels[j] if labels else None,
                                           "prob": float(probs[i, j]), "logit": float(flat[i, j])} for j in idx]})
    dt = float(ev.get("ms") or 0.0) / 1e3
    n = int(x.shape[0])
    speed = {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else None, "wall_seconds": wall,
             "backend": ev.get("backend"), "engine": ev.get("backend"), "batch": batch,
             "device": s.t.serial, "transport": s.t.kind, "compute": ev.get("device")}
    if as_json:
        print_json({"model": g.name, "package": source, "remote": f"{s.t.root}/{remote}", "results": rows,
                    "throughput": speed, "output": str(output) if output is not None else None})
        return
    t = Table("input", "#", "class", "label", "prob", "logit", title=f"{g.name}: top {k}")
    for r in rows:
        for rank, e in enumerate(r["top"], 1):
            t.add_row(r["input"] if rank == 1 else "", str(rank), str(e["index"]), e["label"] or "",
                      f"{e['prob']:.4f}", f"{e['logit']:.3f}")
    out.print(t)
    rate = f"{n / dt:.1f} inputs/s" if dt > 0 else "? inputs/s"
    out.print(f"{n} input(s) in {dt:.3f} s = {rate} on {s.t.serial} ({s.t.kind}): {ev.get('device') or '?'}, "
              f"{ev.get('backend') or '?'} backend, batch {batch}; {wall:.2f} s with transfers"
              + (f"; logits written to {output}" if output else ""), highlight=False, soft_wrap=True)
