"""`thomas report RUN [-o report.png]`: a PNG of one run (thomas_cli/report.py draws it).

    thomas report 20260101-120000-ab12                 # -> report-<run>.png in the current folder
    thomas report RUN -o docs/report.png
"""
from __future__ import annotations

from pathlib import Path

import typer

from ..app import app, err, guarded
from ..report import render


@app.command()
@guarded
def report(
    run: str = typer.Argument(..., help="Run id (`thomas runs list`)."),
    output: Path = typer.Option(None, "-o", "--output", help="PNG to write (default: report-RUN.png)."),
):
    """Plot a run: loss and accuracy per epoch (and the val confusion matrix), per-layer time bars of a
    bench run, the confusion matrix and per-class precision/recall of an eval run."""
    dest = render(run, output or Path(f"report-{run}.png"))
    err.print(f"wrote {dest}", highlight=False)
