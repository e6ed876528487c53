"""`thomas`: the console entry point (pyproject.toml: thomas = thomas_cli.main:main).

    thomas zoo list                       # built-in architectures
    thomas zoo build mobilenet_v2 -o pkg  # write a model package
    thomas inspect pkg                    # validate + per-layer table
    thomas demo                           # the main job on the local machine

The app, its consoles and one-line errors live in app.py; importing this module registers every
command on it. `from thomas_cli.main import app` keeps working (re-exported).
"""
from __future__ import annotations

from .app import (ThomasGroup, app, err, flush_notes, guarded, hoist_globals, note, out,  # noqa: F401
                  print_json, usage_error)


@app.command()
def version():
    """Print the versions of the host CLI and the device agent."""
    import device_agent

    out.print(f"thomas {device_agent.__version__} (agent {device_agent.__version__})")


from . import commands  # noqa: E402,F401  (registers the commands on `app`)
from . import device_cmd  # noqa: E402,F401  (global device options, thomas devices / doctor)
from . import push_cmd  # noqa: E402,F401  (thomas push-model / models / push-data)
from . import finetune_cmd  # noqa: E402,F401  (thomas finetune)
from . import runs_cmd  # noqa: E402,F401  (thomas runs list / show / pull / rm)
from . import onnx_cmd  # noqa: E402,F401  (thomas import / export / infer)
from . import bench_cmd  # noqa: E402,F401  (thomas bench)
from . import eval_cmd  # noqa: E402,F401  (thomas eval)
from . import report  # noqa: E402,F401  (thomas report)
from . import setup_cmd  # noqa: E402,F401  (thomas setup termux)


def main() -> None:
    app()
