"""One-line errors and global options anywhere (issue 14 items 7 and 8), through the real CLI: Click's usage
errors are `error: ...` + `hint: thomas CMD --help` (exit 2) and quote the refused value; global options
work after the command; a failed finetune prints only its error line; the local device keeps the caller's
PYTHONPATH behind the pushed agent."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from devicekit import ZOO_ARGS, DeviceTarget, image_folder, thomas

REPO = Path(__file__).resolve().parents[1]
SCRUB = ("THOMAS_SERIAL", "THOMAS_DEVICE", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON", "THOMAS_SU", "THOMAS_MODE")
NONE = DeviceTarget("none", Path("."), [])


@pytest.fixture(autouse=True)
def _scrub(monkeypatch):
    for k in SCRUB:
        monkeypatch.delenv(k, raising=False)


def local(tmp_path: Path) -> DeviceTarget:
    root = tmp_path / "local-device"
    return DeviceTarget("local", root, ["--device", "local", "--device-root", str(root)])


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def thomas_subprocess(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m thomas_cli ARGS` (the console script's path through main(), real argv)."""
    return subprocess.run([sys.executable, "-m", "thomas_cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="60", **(env or {})), cwd=REPO)


# ============================================================================ usage errors
@pytest.mark.parametrize("args, first, hint", [
    (["finetune", "--foo"], "error: No such option", "hint: thomas finetune --help"),
    (["nosuchcmd"], "error: No such command 'nosuchcmd'.", "hint: thomas --help"),
    (["--device", "bogus", "devices"], "error: Invalid value for --device: must be auto, local or adb, not 'bogus'",
     "hint: thomas --help"),
    (["runs", "show"], "error: Missing argument", "hint: thomas runs show --help"),
    (["finetune", "m", "--data", "d", "--epochs", "0"], "error: Invalid value for '--epochs'", "hint: thomas finetune --help"),
    (["finetune", "m", "--data", "d", "--lr", "fast"], "error: Invalid value for '--lr'", "hint: thomas finetune --help"),
    (["doctor", "--device"], "error: Option '--device' requires an argument.", "hint: thomas --help"),
])
def test_usage_errors_are_one_line_and_a_hint(args, first, hint):
    r = thomas(NONE, *args, expect=2)
    assert lines(r.stderr) == [lines(r.stderr)[0], hint], r.stderr
    assert lines(r.stderr)[0].startswith(first), r.stderr
    assert "--foo" in lines(r.stderr)[0] or "--foo" not in args
    assert "╭" not in r.stderr and "Usage:" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args, value", [(["--epochs", "0"], "'0'"), (["--lr", "fast"], "'fast'"),
                                         (["--layers", "-1"], "'-1'"), (["--backend", "gpu"], "'gpu'")])
def test_usage_errors_quote_the_refused_value(args, value):
    """The refused value is named: quoted ('0', typer >= 0.21's pydantic checks plus _given) or as a word
    of Click's own range message ("0 is not in the range x>=1.", typer 0.20, which Flower's pin brings)."""
    r = thomas(NONE, "finetune", "m", "--data", "d", *args, expect=2)
    first = lines(r.stderr)[0]
    assert value in first or re.search(rf"(?<![\w.-]){re.escape(value.strip(chr(39)))}(?![\w.]*\w)", first), r.stderr


def test_usage_error_through_the_console_entry_point():
    """The real argv path (main()), on a narrow terminal: still one line and a hint, no box, exit 2."""
    r = thomas_subprocess("finetune", "--foo", "--bar-option-with-a-long-name")
    assert r.returncode == 2 and r.stdout == ""
    first = lines(r.stderr)[0]
    assert len(lines(r.stderr)) == 2 and first.startswith("error: No such option") and "--foo" in first, r.stderr
    assert lines(r.stderr)[1] == "hint: thomas finetune --help"


# ============================================================================ global options anywhere
def test_global_options_after_the_command(tmp_path):
    """`thomas doctor --device local` is `thomas --device local doctor` (the issue's example), through main()."""
    root = tmp_path / "dev"
    r = thomas_subprocess("doctor", "--json", "--device", "local", "--device-root", str(root),
                          env={"THOMAS_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["device"]["transport"] == "local" and res["device"]["root"] == str(root.resolve())
    # and in a sub-group, with the --name=value form
    r = thomas(NONE, "devices", "--json", f"--device-root={root}", "--device=local")
    assert [d["serial"] for d in json.loads(r.stdout)] == ["local"]


def _hoisted(argv: list[str]) -> list[str]:
    from thomas_cli.main import app, hoist_globals

    group = typer.main.get_command(app)
    return hoist_globals(group, group.make_context("thomas", ["devices"]), argv)


def test_hoisting_moves_only_global_options_and_their_values():
    assert _hoisted(["finetune", "m", "--data", "d", "-s", "R58M", "--epochs", "2"]) == \
        ["-s", "R58M", "finetune", "m", "--data", "d", "--epochs", "2"]
    assert _hoisted(["runs", "list", "--json", "--su", "-sR58M"]) == ["--su", "-sR58M", "runs", "list", "--json"]
    # already in front: unchanged; after `--`: never moved; an unknown command: left for Click to report
    assert _hoisted(["--device", "local", "doctor"]) == ["--device", "local", "doctor"]
    assert _hoisted(["finetune", "m", "--", "-s", "x"]) == ["finetune", "m", "--", "-s", "x"]
    assert _hoisted(["nosuch", "--device", "local"]) == ["nosuch", "--device", "local"]
    # a value of the command's own option that looks like a global option stays that option's value
    assert _hoisted(["finetune", "m", "--data", "--device", "--device", "local"]) == \
        ["--device", "local", "finetune", "m", "--data", "--device"]


def test_a_command_option_of_the_same_name_wins():
    """A command with its own --device keeps it; the root's --device after another command still moves."""
    from thomas_cli.main import ThomasGroup

    seen = {}
    app = typer.Typer(cls=ThomasGroup, add_completion=False)

    @app.callback()
    def root(device: str = typer.Option("auto", "--device")):
        seen["root"] = device

    @app.command()
    def own(device: str = typer.Option("cpu", "--device")):
        seen["own"] = device

    @app.command()
    def other(n: int = typer.Option(1, "-n")):
        seen["other"] = n

    from typer.testing import CliRunner

    assert CliRunner().invoke(app, ["own", "--device", "gpu"]).exit_code == 0
    assert seen == {"root": "auto", "own": "gpu"}
    assert CliRunner().invoke(app, ["other", "--device", "local", "-n", "3"]).exit_code == 0
    assert seen == {"root": "local", "own": "gpu", "other": 3}


# ============================================================================ a failed run: one line
def test_failed_finetune_prints_only_its_error_line(tmp_path):
    dev = local(tmp_path)
    thomas(dev, "push-model", "mobilenet_v2", *ZOO_ARGS, "--name", "mnv2")
    thomas(dev, "push-data", str(image_folder(tmp_path / "digits", n_per_class=4)), "--size", "32")
    thomas(dev, "doctor")                                   # the agent is pushed (and says so) here, not below
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--layers", "999", "--backend", "cpu", expect=1)
    assert len(lines(r.stderr)) == 1, r.stderr
    assert lines(r.stderr)[0].startswith("error: run ") and "'layers' is 999" in r.stderr, r.stderr
    # a run that starts still names itself (with its plan)
    r = thomas(dev, "finetune", "mnv2", "--data", "digits", "--epochs", "1", "--batch", "8", "--backend", "cpu")
    assert lines(r.stderr)[0].startswith("run ") and " on local (local): mnv2 on digits" in lines(r.stderr)[0]


# ============================================================================ the local device's PYTHONPATH
FAKE_PYOPENCL = '''\
VERSION_TEXT = "9.9-from-pythonpath"
class Error(Exception):
    pass
def get_platforms():
    return []
'''


def test_local_device_keeps_the_callers_pythonpath(tmp_path, monkeypatch):
    """A package found only through the caller's PYTHONPATH (here a stand-in pyopencl) is found by the agent
    on the local device, while the pushed agent still comes first."""
    extra = tmp_path / "site"
    (extra / "pyopencl").mkdir(parents=True)
    (extra / "pyopencl" / "__init__.py").write_text(FAKE_PYOPENCL)
    shadow = tmp_path / "shadow" / "device_agent"            # a device_agent on PYTHONPATH must not win
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the shadow device_agent was imported')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(extra), str(shadow.parent)]))
    res = json.loads(thomas(local(tmp_path), "doctor", "--json").stdout)
    assert res["report"]["pyopencl"] == "9.9-from-pythonpath", res["report"]

    from thomas_cli.transport.local import LocalTransport

    t = LocalTransport(tmp_path / "local-device")
    assert t._env()["PYTHONPATH"].split(os.pathsep) == [str(t.base / "agent"), str(extra), str(shadow.parent)]


def test_serial_after_the_command_reaches_the_phone(shared_vdev, tmp_path, monkeypatch):
    """`thomas doctor ... -s SERIAL` on the virtual phone (real adb server, fake adbd): the phone is used."""
    for k, v in shared_vdev.env.items():
        monkeypatch.setenv(k, v)
    root = f"{shared_vdev.root}/{tmp_path.name}/thomas"
    res = json.loads(thomas(NONE, "doctor", "--json", "--device-root", root, "--python", sys.executable,
                            "-s", shared_vdev.serial).stdout)
    assert res["device"]["transport"] == "adb" and res["device"]["serial"] == shared_vdev.serial, res["device"]
    assert res["ok"] is True
