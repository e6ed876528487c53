"""Model commands: `thomas zoo list|build`, `thomas inspect`, `thomas push-model`, `thomas models list`.

    thomas zoo build mobilenet_v2 -o pkg --classes 10 --size 32          # a package with seeded weights
    thomas inspect pkg --batch 8                                          # layers, shapes, params, FLOPs
    thomas push-model mobilenet_v2 --classes 10 --size 32 --width 0.35    # a zoo model onto the device
    thomas push-model ./my_package --name mine                             # a model package
    thomas models list --json
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from device_agent.model.graph import Graph, load_package, save_package
from device_agent.ops import get_op

from .. import zoo
from ..app import app, guarded, out, print_json
from ..deploy import device_models, push_model, resolve_model_source
from .common import session, transport

zoo_app = typer.Typer(no_args_is_help=True, help="Built-in model architectures.")
app.add_typer(zoo_app, name="zoo")
models_app = typer.Typer(no_args_is_help=True, help="Models on the device.")
app.add_typer(models_app, name="models")


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
    from ..onnx.preprocess import describe

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
    for spec in g.inputs:
        dims = "x".join("N" if d is None else str(d) for d in spec.shape)
        out.print(f"input '{spec.name}' {dims}, preprocess: {describe(spec.preprocess)}", highlight=False,
                  soft_wrap=True)


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
    s = session()
    res = push_model(s, g, name or default, source, force)
    if as_json:
        print_json(res)
        return
    what = "already on" if res["skipped"] else "pushed to"
    out.print(f"{res['name']}: {what} {s.t.serial}:{s.t.root}/models/{res['name']} "
              f"({res['bytes'] / 2**20:.1f} MiB, {res['params']:,} parameters, {res['classes']} classes, "
              f"input {'x'.join(map(str, res['input']))}, hash {res['hash'][:12]})")


@models_app.command("list")
@guarded
def models_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the models on the device, with size and content hash."""
    t = transport()
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
