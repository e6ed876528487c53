"""`thomas fleet finetune`: bad input is one line before Flower starts (no simulation here), the fleet
package stays out of the core CLI, and the arrays that travel are the stage's trainable ones.

The rounds themselves (Flower's runtime, virtual phones) are in test_fleet_rounds.py (slow)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicekit import thomas
from fleetkit import FleetEnv, image_set, phones

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fleet_env(tmp_path, monkeypatch):
    with contextlib.ExitStack() as stack:
        vds = phones(stack, tmp_path, 1)
        fl = FleetEnv(tmp_path, vds, monkeypatch)
        yield fl, vds


def one_line(fl: FleetEnv, *args: str) -> str:
    r = thomas(fl.target(None), *fl.globals, "fleet", "finetune", *args, expect=None)
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def test_bad_input_is_one_line(fleet_env, tmp_path):
    fl, vds = fleet_env
    serial = vds[0].serial
    base = ["mnv2", "--data", "digits", "--rounds", "1"]
    assert "unknown device '127.0.0.1:9' (attached:" in one_line(fl, *base, "--devices", "local,127.0.0.1:9")
    assert "--devices: 'local' is named twice" in one_line(fl, *base, "--devices", "local,local")
    assert "--fraction must be in (0, 1], got 0" in one_line(fl, *base, "--devices", "local", "--fraction", "0")
    assert "--fraction must be in (0, 1], got 1.5" in one_line(fl, *base, "--devices", "local", "--fraction", "1.5")
    assert "--strategy must be one of" in one_line(fl, *base, "--devices", "local", "--strategy", "fedsgd")
    assert "--bn must be local or global" in one_line(fl, *base, "--devices", "local", "--bn", "none")
    assert "--proximal-mu is FedProx's" in one_line(fl, *base, "--devices", "local", "--proximal-mu", "0.1")
    assert "--proximal-mu must be a number >= 0" in one_line(fl, *base, "--devices", "local", "--strategy", "fedprox",
                                                             "--proximal-mu", "-1")
    msg = one_line(fl, *base, "--devices", f"local,{serial}", "--min-devices", "3")
    assert "--min-devices 3 is more than the fleet's 2 devices" in msg
    assert "not paired with a THOMAS daemon" in one_line(fl, "--mode", "daemon", *base, "--devices", serial)
    # `all` is every attached phone (here one), `local` only when named
    assert "--min-devices 2 is more than the fleet's 1 device" in one_line(fl, *base, "--devices", "all",
                                                                           "--min-devices", "2")
    assert "--min-devices 3 is more than the fleet's 2 devices" in one_line(fl, *base, "--devices", "all,local",
                                                                            "--min-devices", "3")
    # a device without the dataset (the local device holds it, the phone does not)
    fl.push(None, image_set(tmp_path / "digits3"))
    msg = one_line(fl, *base, "--devices", f"local,{serial}")
    assert f"device {serial} has no dataset 'digits'" in msg and "push-data" in msg
    # classes that differ between devices
    fl.push(serial, image_set(tmp_path / "digits4", classes=4))
    msg = one_line(fl, *base, "--devices", f"local,{serial}")
    assert "dataset 'digits' has classes" in msg and "every device must hold the same classes" in msg
    assert "job field 'lr' must be > 0" in one_line(fl, *base, "--devices", "local", "--lr", "-1")
    assert "no model 'nope' on any device" in one_line(fl, "nope", "--data", "digits", "--devices", "local")
    assert "is set by thomas fleet" in one_line(fl, *base, "--devices", "local", "--set", "epochs=3")
    assert not (fl.home / "runs").exists() or not any((fl.home / "runs").iterdir())   # nothing was started


def test_without_flower_one_line_and_core_cli_never_imports_it(tmp_path):
    """The core CLI never imports flwr; `thomas fleet` without it says how to get it, in one line."""
    code = ("import sys; sys.modules['flwr'] = None\n"        # an import of flwr fails as if not installed
            "import thomas_cli.main as m\n"
            "assert not any(k == 'flwr' or k.startswith(('flwr.', 'ray')) for k in sys.modules if sys.modules[k])\n"
            "assert 'thomas_cli.fleet' not in sys.modules\n"
            "sys.argv = ['thomas', 'fleet', 'finetune', 'm', '--data', 'd', '--devices', 'local']\n"
            "m.main()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, THOMAS_HOME=str(tmp_path / "home")))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip() == "error: thomas fleet needs the fleet extra: pip install 'thomas[fleet]'", r.stderr


def test_what_travels_is_the_stage():
    """--layers decides the arrays sent back and forth; --bn global adds their layers' BN statistics."""
    from device_agent.training.stages import trainable_params
    from thomas_cli import zoo
    from thomas_cli.fleet.plan import travel_keys

    g = zoo.build("mobilenet_v2", num_classes=3, size=32, width=0.35, seed=0)
    last, kept = travel_keys(g, "last", "local")
    assert set(last) == trainable_params(g, "last") and kept == []        # the classifier has no BN
    three, kept3 = travel_keys(g, 3, "local")
    assert set(three) == trainable_params(g, 3) and kept3 and all(not g.params[k].trainable for k in kept3)
    three_g, none = travel_keys(g, 3, "global")
    assert set(three_g) == set(three) | set(kept3) and none == []
    every, _ = travel_keys(g, "all", "local")
    assert set(every) == {k for k, p in g.params.items() if p.trainable}
