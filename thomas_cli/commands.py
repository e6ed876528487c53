"""Model commands: `thomas zoo list|build`, `thomas inspect`, `thomas demo`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from device_agent.graph import Graph, load_package, save_package
from device_agent.ops import get_op

from . import zoo
from .app import app, guarded, out, print_json

zoo_app = typer.Typer(no_args_is_help=True, help="Built-in model architectures.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("list")
@guarded
def zoo_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the built-in architectures with their parameter counts at 224x224 / 1000 classes."""
    rows = [{"name": name, "description": zoo.DESCRIPTIONS.get(name, "")} for name in zoo.ZOO]
    if as_json:
        print_json(rows)
        return
    t = Table("name", "description", title="THOMAS model zoo")
    for r in rows:
        t.add_row(r["name"], r["description"])
    out.print(t)


@zoo_app.command("build")
@guarded
def zoo_build(
    name: str = typer.Argument(..., help="Architecture, see `thomas zoo list`."),
    output: Path = typer.Option(..., "-o", "--output", help="Package directory to write."),
    classes: int = typer.Option(1000, "--classes", help="Number of output classes."),
    size: int = typer.Option(224, "--size", help="Input height and width."),
    width: float = typer.Option(1.0, "--width", help="Width multiplier (MobileNets)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights."),
):
    """Build a zoo model with seeded initial weights and write it as a package."""
    g = zoo.build(name, num_classes=classes, size=size, width=width, seed=seed)
    save_package(g, output)
    out.print(f"wrote {output} ({g.name}: {g.num_params():,} trainable parameters)")


def layer_rows(g: Graph, batch: int) -> list[dict]:
    shapes = g.infer_shapes(batch)
    rows = []
    for n in g.nodes:
        op = get_op(n.op)
        ins = [shapes[t] for t in n.inputs]
        outs = [shapes[t] for t in n.outputs]
        nparams = sum(int(np.prod(g.params[t].shape)) for t in n.inputs
                      if t in g.params and g.params[t].trainable)
        rows.append({"name": n.name, "op": n.op, "output": list(outs[0]), "params": nparams,
                     "flops": int(op.flops(g.attrs_of(n), ins, outs))})
    return rows


@app.command()
@guarded
def inspect(
    package: Path = typer.Argument(..., help="Model package directory (model.json + weights.npz)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size for shapes and FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Validate a model package and show its layers, shapes, parameters and FLOPs."""
    g = load_package(package)
    rows = layer_rows(g, batch)
    total_flops = sum(r["flops"] for r in rows)
    if as_json:
        print_json({"name": g.name, "format": g.format, "params": g.num_params(),
                    "flops": total_flops, "inputs": [i.to_json() for i in g.inputs],
                    "outputs": g.outputs, "layers": rows})
        return
    t = Table("#", "node", "op", "output", "params", "MFLOP", title=f"{g.name} (batch {batch})")
    for i, r in enumerate(rows):
        t.add_row(str(i), r["name"], r["op"], "×".join(map(str, r["output"])),
                  f"{r['params']:,}" if r["params"] else "", f"{r['flops'] / 1e6:.1f}")
    out.print(t)
    out.print(f"{len(rows)} nodes, {g.num_params():,} trainable parameters, "
              f"{total_flops / 1e9:.3f} GFLOP per forward pass at batch {batch}")
    from .onnx.preprocess import describe

    for spec in g.inputs:
        dims = "x".join("N" if d is None else str(d) for d in spec.shape)
        out.print(f"input '{spec.name}' {dims}, preprocess: {describe(spec.preprocess)}", highlight=False,
                  soft_wrap=True)


@app.command()
@guarded
def demo(
    backend: list[str] = typer.Option(None, "--backend", help="Backend(s) to run every stage on: "
                                      "numpy, opencl (repeat for one table row per backend; default: "
                                      "both when an OpenCL device exists, else numpy)."),
):
    """The main job on this machine: MobileNetV2 on digits from scratch, then fine-tuned in three stages."""
    from device_agent.engine import opencl_available

    from .demo import run_demo

    backend = backend or (["numpy", "opencl"] if opencl_available() else ["numpy"])
    for b in backend:
        if b not in ("numpy", "opencl"):
            raise typer.BadParameter(f"unknown backend {b!r} (numpy, opencl)", param_hint="--backend")
    run_demo(backends=tuple(backend))
