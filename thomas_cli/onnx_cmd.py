"""ONNX in and out, and inference: `thomas import`, `thomas export`, `thomas infer`.

    thomas import resnet.onnx -o models/resnet --labels synset.txt   # convert + parity check
    thomas export runs/20260101-xyz -o tuned.onnx                    # a run's final/ package
    thomas infer models/resnet --input cat.jpg --top 5               # local numpy engine for now

onnx and onnxruntime are imported inside the commands, so `thomas --help` stays quick.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from device_agent.errors import OnnxError, PackageError
from device_agent.graph import MODEL_JSON, Graph, load_package, save_package

from .main import app, err, guarded, out, print_json

IMPORTERS_PREPROCESS = {
    "imagenet": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "unit": {"scale": 1.0 / 255.0},
}


def resolve_package(arg: str | os.PathLike) -> Path:
    """PACKAGE_DIR, or a RUN directory holding final/, or a run id under $THOMAS_HOME/runs."""
    p = Path(arg)
    cands = [p]
    if not p.exists() and not p.is_absolute():
        cands.append(Path(os.environ.get("THOMAS_HOME") or "~/.thomas").expanduser() / "runs" / str(arg))
    for c in cands:
        if (c / MODEL_JSON).is_file():
            return c
        if (c / "final" / MODEL_JSON).is_file():
            return c / "final"
        if c.is_dir():
            if (c / "job.json").is_file() or (c / "events.jsonl").is_file():
                raise PackageError(f"{c}: the run has no final/ package (still running, or it failed?)")
            raise PackageError(f"{c}: neither a model package ({MODEL_JSON}) nor a run with final/")
    raise PackageError(f"{arg}: no such package, run folder or run id")


def _parity_line(r: dict, tol: float) -> str:
    return (f"parity vs onnxruntime (batch {r['batch']}, seed {r['seed']}): max abs {r['max_abs']:.2e}, "
            f"max rel {r['max_rel']:.2e} (tolerance {tol:.0e})")


def _check_tolerance(tol: float) -> None:
    if not tol > 0:
        raise OnnxError(f"--tolerance must be positive, got {tol}")


# ------------------------------------------------------------------------------------ import
@app.command("import")
@guarded
def import_cmd(
    model: Path = typer.Argument(..., help="The .onnx file (external data next to it is read too)."),
    output: Path = typer.Option(..., "-o", "--output", help="Package directory to write."),
    name: str = typer.Option(None, "--name", help="Model name (default: from the file)."),
    input_shape: str = typer.Option(None, "--input-shape", help="Input shape N,C,H,W (batch may be -1); "
                                    "overrides the file's."),
    labels: Path = typer.Option(None, "--labels", help="Class names: one per line, or a JSON list."),
    preprocess: str = typer.Option(None, "--preprocess", help="Input preprocessing to record: imagenet "
                                   "(x/255, ImageNet mean/std) or unit (x/255)."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest max-relative error accepted."),
    force: bool = typer.Option(False, "--force", help="Write the package even if the parity check fails."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Convert an ONNX model into a package, then check it against onnxruntime on a seeded batch."""
    from .onnx_io import import_onnx, onnx_parity, parse_shape, read_labels

    _check_tolerance(tolerance)
    shape = parse_shape(input_shape) if input_shape else None
    labs = read_labels(labels) if labels else None
    pre = None
    if preprocess is not None:
        if preprocess not in IMPORTERS_PREPROCESS:
            raise OnnxError(f"--preprocess {preprocess!r}: known: {', '.join(IMPORTERS_PREPROCESS)}")
        pre = dict(IMPORTERS_PREPROCESS[preprocess])
    if output.exists() and not output.is_dir():
        raise OnnxError(f"{output}: exists and is not a directory")
    t0 = time.perf_counter()
    g = import_onnx(model, shape, name, labs, preprocess=pre)
    t1 = time.perf_counter()
    rep = onnx_parity(model, g, shape)
    ok = rep["max_rel"] <= tolerance
    g.meta["parity"] = {k: rep[k] for k in ("batch", "seed", "max_abs", "max_rel")} | {"tolerance": tolerance}
    written = ok or force
    if written:
        save_package(g, output)
    if as_json:
        print_json({"package": str(output) if written else None, "name": g.name, "source": str(model),
                    "opset": g.meta.get("opset"),
                    "input": {"name": g.inputs[0].name, "shape": list(g.inputs[0].shape)},
                    "outputs": g.outputs, "nodes": len(g.nodes), "params": g.num_params(),
                    "ops": _op_counts(g), "parity": rep, "tolerance": tolerance, "ok": ok, "written": written,
                    "seconds": {"import": t1 - t0, "parity": time.perf_counter() - t1}})
    else:
        shape_s = "x".join("N" if d is None else str(d) for d in g.inputs[0].shape)
        if written:
            out.print(f"imported {model} -> {output} ({g.name}: {len(g.nodes)} nodes, "
                      f"{g.num_params():,} trainable parameters, input {shape_s}, opset {g.meta.get('opset')})",
                      highlight=False, soft_wrap=True)
        out.print(_parity_line(rep, tolerance) + (" ok" if ok else " FAILED"), highlight=False, soft_wrap=True)
    if not ok:
        msg = (f"parity check failed: max rel error {rep['max_rel']:.2e} exceeds --tolerance {tolerance:.0e} "
               f"(max abs {rep['max_abs']:.2e}) against onnxruntime")
        if force:
            err.print(f"[yellow]warning:[/] {msg}; package written anyway (--force)", highlight=False,
                      soft_wrap=True)
            return
        raise OnnxError(f"{msg}; package not written (use --force to keep it)")


def _op_counts(g: Graph) -> dict:
    counts: dict[str, int] = {}
    for n in g.nodes:
        counts[n.op] = counts.get(n.op, 0) + 1
    return counts


# ------------------------------------------------------------------------------------ export
@app.command("export")
@guarded
def export_cmd(
    source: str = typer.Argument(..., help="A run (folder with final/, or run id) or a package directory."),
    output: Path = typer.Option(..., "-o", "--output", help="The .onnx file to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset to write (7..21)."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest max-relative error accepted."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Write a package (or a run's final weights) as ONNX and check it in onnxruntime."""
    from .onnx_io import export_onnx, onnx_parity

    _check_tolerance(tolerance)
    pkg = resolve_package(source)
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


@app.command("infer")
@guarded
def infer_cmd(
    model: str = typer.Argument(..., help="A package directory, or a run (its final/ package)."),
    input: Path = typer.Option(..., "--input", "-i", help="FILE.npy, an image, or a folder of images."),
    output: Path = typer.Option(None, "--output", help="Write the raw logits (N, ...) as .npy."),
    top: int = typer.Option(5, "--top", min=1, help="Classes to show per input."),
    batch: int = typer.Option(32, "--batch", min=1, help="Samples per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Classify inputs with a package: top-k table with labels, and throughput.

    Runs locally in this process on the numpy engine (device routing comes with the device CLI)."""
    from device_agent.infer import infer_package

    from .infer_input import load_inputs

    pkg = resolve_package(model)
    g = load_package(pkg)
    names, x = load_inputs(input, g.inputs[0])
    t0 = time.perf_counter()
    logits = infer_package(g, x, batch_size=batch)
    dt = time.perf_counter() - t0
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
    speed = {"samples": int(x.shape[0]), "seconds": dt, "samples_per_s": x.shape[0] / dt if dt > 0 else None,
             "engine": "numpy_ref", "device": "local (in-process)"}
    if as_json:
        print_json({"model": g.name, "package": str(pkg), "results": rows, "throughput": speed,
                    "output": str(output) if output is not None else None})
        return
    t = Table("input", "#", "class", "label", "prob", "logit", title=f"{g.name}: top {k}")
    for r in rows:
        for rank, e in enumerate(r["top"], 1):
            t.add_row(r["input"] if rank == 1 else "", str(rank), str(e["index"]), e["label"] or "",
                      f"{e['prob']:.4f}", f"{e['logit']:.3f}")
    out.print(t)
    out.print(f"{x.shape[0]} input(s) in {dt:.3f} s = {x.shape[0] / dt:.1f} inputs/s "
              f"(numpy engine, local, batch {batch})" + (f"; logits written to {output}" if output else ""),
              highlight=False, soft_wrap=True)
