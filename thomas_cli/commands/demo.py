"""`thomas demo`: the main job on this machine (thomas_cli/demo.py runs it)."""
from __future__ import annotations

import typer

from ..app import app, guarded
from .common import target


@app.command()
@guarded
def demo(
    backend: list[str] = typer.Option(None, "--backend", help="Backend(s) to run every stage on: "
                                      "numpy, opencl (repeat for one table row per backend; default: "
                                      "both when an OpenCL device exists, else numpy)."),
):
    """The main job on this machine: MobileNetV2 on digits from scratch, then fine-tuned in three stages."""
    from device_agent.engine import opencl_available

    from ..demo import run_demo

    backend = backend or (["numpy", "opencl"] if opencl_available() else ["numpy"])
    for b in backend:
        if b not in ("numpy", "opencl"):
            raise typer.BadParameter(f"unknown backend {b!r} (numpy, opencl)", param_hint="--backend")
    run_demo(backends=tuple(backend), target=target())
