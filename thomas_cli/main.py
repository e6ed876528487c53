"""`thomas`: the console entry point (pyproject.toml: thomas = thomas_cli.main:main).

    thomas zoo list                       # built-in architectures
    thomas zoo build mobilenet_v2 -o pkg  # write a model package
    thomas inspect pkg                    # validate + per-layer table
    thomas demo                           # the main job on the local machine

The CLI in three layers that import downwards only: app.py (the Typer app, consoles, one-line errors,
JSON output), commands/ (one thin module per verb group; importing it registers them all on the app),
and the services (device.py, deploy.py, resolve.py, runs.py, doctor.py, bench.py, evaluate.py,
infer.py, termux.py, demo.py, report.py, views.py; store.py, zoo.py, images.py, onnx/, transport/).
`from thomas_cli.main import app` keeps working (re-exported here).
"""
from __future__ import annotations

from . import commands  # noqa: F401  (registers every command on `app`)
from .app import (ThomasGroup, app, err, flush_notes, guarded, hoist_globals, note, out,  # noqa: F401
                  print_json, usage_error)


def main() -> None:
    app()
