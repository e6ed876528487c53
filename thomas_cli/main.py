"""`thomas`: the host-side CLI.

    thomas zoo list                       # built-in architectures
    thomas zoo build mobilenet_v2 -o pkg  # write a model package
    thomas inspect pkg                    # validate + per-layer table
    thomas demo                           # the main job on the local machine
"""
from __future__ import annotations

import functools
import json
import sys

import typer
from rich.console import Console

from device_agent.errors import ThomasError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained CNNs on an Android phone's GPU, driven from this laptop.")
zoo_app = typer.Typer(no_args_is_help=True, help="Built-in model architectures.")
app.add_typer(zoo_app, name="zoo")

out = Console()
err = Console(stderr=True)


def guarded(fn):
    """Turn a ThomasError into a one-line message and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ThomasError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1) + "\n")


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
