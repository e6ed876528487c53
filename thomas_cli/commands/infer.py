"""`thomas infer`: classify inputs on the device (thomas_cli/infer.py runs it).

    thomas infer models/resnet --input cat.jpg --top 5           # pushes the package, runs on the device
    thomas infer 20260101-120000-ab12 --input imgs/ --which final
    thomas --device local infer mnv2 --input imgs/ --json       # a model already on the device
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from device_agent.errors import PackageError
from device_agent.model.graph import load_package

from ..app import app, guarded, note, out, print_json
from ..infer import run_infer, top_rows
from ..infer_input import load_inputs
from ..resolve import infer_model, push_local, resolve_package
from .common import session


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
    if backend not in ("auto", "opencl", "numpy"):
        raise PackageError(f"--backend must be auto, opencl or numpy, got '{backend}'")
    try:
        pkg = resolve_package(model, which, note=note)
    except PackageError as why:
        if which is not None:
            raise                           # --which names a run's package: no device model to fall back to
        pkg, not_local = None, why
    g = load_package(pkg) if pkg is not None else None
    if g is not None:                       # bad inputs fail before the device is touched
        names, x = load_inputs(input, g.inputs[0])
    s = session()
    if g is None:
        g = infer_model(s, model, not_local)
        names, x = load_inputs(input, g.inputs[0])
        remote = f"models/{model}"
        source = f"{s.t.serial}:{s.t.root}/{remote}"
    else:
        remote, source = push_local(s, g, pkg), str(pkg)
    t0 = time.perf_counter()
    logits, ev = run_infer(s, remote, x, batch, backend, timeout or None)
    wall = time.perf_counter() - t0
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        np.save(output, logits)
    rows = top_rows(g, names, logits, top)
    dt = float(ev.ms or 0.0) / 1e3
    n = int(x.shape[0])
    speed = {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else None, "wall_seconds": wall,
             "backend": ev.backend, "engine": ev.backend, "batch": batch,
             "device": s.t.serial, "transport": s.t.kind, "compute": ev.device}
    if as_json:
        print_json({"model": g.name, "package": source, "remote": f"{s.t.root}/{remote}", "results": rows,
                    "throughput": speed, "output": str(output) if output is not None else None})
        return
    k = len(rows[0]["top"]) if rows else top
    t = Table("input", "#", "class", "label", "prob", "logit", title=f"{g.name}: top {k}")
    for r in rows:
        for rank, e in enumerate(r["top"], 1):
            t.add_row(r["input"] if rank == 1 else "", str(rank), str(e["index"]), e["label"] or "",
                      f"{e['prob']:.4f}", f"{e['logit']:.3f}")
    out.print(t)
    rate = f"{n / dt:.1f} inputs/s" if dt > 0 else "? inputs/s"
    out.print(f"{n} input(s) in {dt:.3f} s = {rate} on {s.t.serial} ({s.t.kind}): {ev.device or '?'}, "
              f"{ev.backend or '?'} backend, batch {batch}; {wall:.2f} s with transfers"
              + (f"; logits written to {output}" if output else ""), highlight=False, soft_wrap=True)
