"""Every command's --help renders (rich markup in a docstring once crashed `thomas --help`)."""
from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from thomas_cli.main import app


def _paths(cmd, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if getattr(cmd, "commands", None):
        for name, sub in cmd.commands.items():
            out += _paths(sub, prefix + (name,))
    return out


PATHS = _paths(typer.main.get_command(app))


def test_every_command_is_listed():
    names = {p[0] for p in PATHS if p}
    assert {"import", "push-data", "finetune", "eval", "infer", "export", "runs", "bench"} <= names, names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "thomas")
def test_help_renders(path):
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, (r.exception, r.stderr)
    assert "Usage" in r.stdout and "Traceback" not in r.stdout + r.stderr
