"""`thomas bench`: per-layer times of one stage, OpenCL Plan beside the serial single-core numpy
baseline (`--compare cpu`), or the same job on this computer and on the device (`--compare desktop`).

    thomas bench mobilenet_v2 --compare cpu --stage last --batch 8 --size 224 --steps 10
    thomas --device local bench mobilenet_v2 --width 0.35 --size 32 --batch 2 --steps 1 --json

MODEL is a model on the device, a package directory or a zoo name (built at --size, pushed as
`bench-<name>-<size>`). The result is a run record (`thomas runs list`): events.jsonl, bench.json;
`thomas report RUN` plots its per-layer bars.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from .. import zoo
from ..app import app, err, guarded, note, out
from ..bench import BenchResult, run_bench, run_tune
from ..device import Target
from ..resolve import pull_model
from ..views import layer_table, totals_table
from .common import session, target, transport

COMPARES = ("cpu", "desktop")
STAGES = ("infer", "last", "all")


def _opencl_only(r: BenchResult) -> BenchResult:
    """--compare desktop: both sides' OpenCL columns only (when both have an OpenCL result)."""
    return replace(r, layers=[e for e in r.layers if e.backend == "opencl"],
                               summary=replace(r.summary, results={
                                   k: v for k, v in r.summary.results.items() if k == "opencl"}))


@app.command()
@guarded
def bench(
    model: str = typer.Argument(..., help="Model on the device, package directory or zoo name."),
    compare: str = typer.Option("cpu", "--compare", help="cpu: OpenCL vs serial numpy on the device; "
                                                          "desktop: the same job here and on the device."),
    stage: str = typer.Option("last", "--stage", help="infer | last | all."),
    batch: int = typer.Option(8, "--batch", min=1),
    size: int = typer.Option(224, "--size", min=8, help="Input size of a zoo model."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps (medians)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of a zoo model."),
    classes: int = typer.Option(1000, "--classes", min=1, help="Classes of a zoo model's head."),
    as_json: bool = typer.Option(False, "--json", help="The result as JSON on stdout."),
):
    """Time every layer of one stage on the OpenCL Plan and the serial single-core CPU baseline."""
    if compare not in COMPARES:
        raise typer.BadParameter(f"must be one of {', '.join(COMPARES)}", param_hint="--compare")
    if stage not in STAGES:
        raise typer.BadParameter(f"must be one of {', '.join(STAGES)}", param_hint="--stage")
    tgt = target()
    targets: list[tuple[str, Target]] = [("", tgt)]
    if compare == "desktop":
        targets = [("desktop ", replace(tgt, device="local", serial=None, root=None, python=None, su=False)),
                   ("device ", tgt)]
    results, name = [], model
    with tempfile.TemporaryDirectory(prefix="thomas-bench-") as tmp:
        if compare == "desktop" and model not in zoo.ZOO and not Path(model).is_dir():
            model = str(pull_model(transport(), model, Path(tmp)))   # only the device has it: bench a copy here too
        for label, tg in targets:
            if not as_json:
                err.print(f"bench {model} {stage} batch {batch} on {label.strip() or 'the device'} ...",
                          highlight=False)
            results.append((label, run_bench(tg, model, stage, batch, size, steps, width, classes, note=note)))
    if as_json:
        doc = ({lbl.strip() or "device": r.to_json() for lbl, r in results} if compare == "desktop"
               else results[0][1].to_json())
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    if compare == "desktop" and all("ms_step" in r.summary.results.get("opencl", {}) for _, r in results):
        results = [(lbl, _opencl_only(r)) for lbl, r in results]
    out.print(layer_table(results, f"{name} {stage}, batch {batch} (run {', '.join(r.id for _, r in results)})"))
    out.print(totals_table(results))
    sp = results[0][1].summary.speedup
    if compare == "cpu" and sp:
        out.print(f"OpenCL is [bold]{sp:.1f}x[/] the serial single-core numpy baseline")


@app.command()
@guarded
def tune(
    model: str = typer.Argument("mobilenet_v2", help="Model on the device, package directory or zoo name."),
    batch: int = typer.Option(8, "--batch", min=1),
    size: int = typer.Option(224, "--size", min=8, help="Input size of a zoo model."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed repetitions per variant (median)."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier of a zoo model."),
    classes: int = typer.Option(1000, "--classes", min=1, help="Classes of a zoo model's head."),
    conv: bool = typer.Option(True, "--conv/--no-conv",
                              help="Also time the convolution paths (im2col, implicit GEMM, Winograd) on full steps."),
    as_json: bool = typer.Option(False, "--json", help="The events as JSON lines on stdout."),
):
    """Time GEMM tile variants on the model's GEMMs once, then the convolution paths on its full training
    steps; the device keeps the winners for every later run."""
    s = session()
    last, variants, conv_ev = run_tune(s, model, batch, size, steps, width, classes, conv=conv,
                                       on_event=(lambda ev: sys.stdout.write(ev.to_json() + "\n"))
                                       if as_json else None)
    if as_json:
        return
    t = Table("#", "tile", "GEMM ms", "launches", title=f"GEMM variants on {last.key}")
    for e in (v for v in variants if v.op == "gemm"):
        p = e.params
        tile = " ".join(f"{k}={p[k]}" for k in sorted(p) if k.isupper()) or "defaults"
        t.add_row(str(e.index) + (" *" if e.index == last.index else ""), tile,
                  f"{e.ms:.2f}" if e.ms is not None else f"[red]{e.error}[/]", str(e.gemms))
    out.print(t)
    gain = f" ({last.default_ms / last.ms:.2f}x the defaults)" if last.default_ms else ""
    shapes = last.shapes or {}
    own = (f", and their own tiles for {len(shapes)} GEMM shapes (all GEMMs {last.tuned_ms:.2f} ms instead of "
           f"{last.ms:.2f})" if shapes and last.tuned_ms else "")
    out.print(f"saved variant {last.index}{gain}{own} to {s.t.serial}:{last.path}", highlight=False,
              soft_wrap=True)
    if conv_ev is not None:
        _print_conv(conv_ev, [v for v in variants if v.op == "conv2d"], s.t.serial)
    elif conv:
        out.print("convolution paths: one launch list for this model (no node a path changes); nothing saved")


def _print_conv(best, variants, serial: str) -> None:
    t = Table("#", "path", "step ms", title=f"convolution paths (full training steps) on {best.key}")
    for e in variants:
        p = e.params
        path = ", ".join(f"{k}={p[k]}" for k in sorted(p)) or "defaults"
        t.add_row(str(e.index) + (" *" if e.index == best.index else ""), path,
                  f"{e.ms:.1f}" if e.ms is not None else f"[red]{e.error}[/]")
    out.print(t)
    gain = f" ({best.default_ms / best.ms:.2f}x the defaults)" if best.default_ms else ""
    out.print(f"saved path {best.index}{gain} to {serial}:{best.path}", highlight=False, soft_wrap=True)
