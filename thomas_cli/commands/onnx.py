"""ONNX in and out: `thomas import`, `thomas export` (thomas_cli/onnx/ converts and checks parity).

    thomas import resnet.onnx -o models/resnet --labels synset.txt   # convert + parity check
    thomas import m.onnx -o pkg --mean 0.5 --std 0.5                 # with its normalization
    thomas export 20260101-xyz -o tuned.onnx                         # a run's best/ package (else final/)

onnx and onnxruntime are imported inside the commands, so `thomas --help` stays quick.
"""
from __future__ import annotations

import time
from pathlib import Path

import typer

from device_agent.errors import OnnxError
from device_agent.model.graph import Graph, load_package, save_package

from ..app import app, err, guarded, note, out, print_json
from ..resolve import resolve_package


def _parity_line(r: dict, tol: float) -> str:
    return (f"parity vs onnxruntime (batch {r['batch']}, seed {r['seed']}): max abs {r['max_abs']:.2e}, "
            f"max rel {r['max_rel']:.2e} (tolerance {tol:.0e})")


def _check_tolerance(tol: float) -> None:
    if not tol > 0:
        raise OnnxError(f"--tolerance must be positive, got {tol}")


# ------------------------------------------------------------------------------------ import
def _round_trip(g: Graph, model: Path, shape, tolerance: float) -> tuple[Graph, dict]:
    """Write g as a package to a scratch folder, load it back with the agent's own loader
    (device_agent.model.graph.load_package) and run the parity check on THAT graph: what import
    writes is what was checked, and it loads on the device."""
    import shutil
    import tempfile

    from ..onnx import onnx_parity

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
    from ..onnx import import_onnx, parse_shape, read_labels
    from ..onnx.preprocess import build_preprocess

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
    from ..onnx.preprocess import describe

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
    from ..onnx import export_onnx, onnx_parity

    _check_tolerance(tolerance)
    pkg = resolve_package(source, which, note=note)
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
