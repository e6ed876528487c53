"""`pip install .` (not editable) must give a working `thomas` with kernels and configs inside."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_kernels_configs_and_a_working_cli(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("thomas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "device_agent/_data/kernels/common.cl" in names
    assert "device_agent/_data/configs/tuning/default.json" in names
    assert "device_agent/model/graph.py" in names and "thomas_cli/main.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = ("import device_agent, device_agent.resources as r; "
             "print(device_agent.__file__); print(r.kernels_dir()); print(r.configs_dir())")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert all(line.startswith(str(target)) for line in lines), lines  # the wheel's copy, not the checkout
    r = subprocess.run([sys.executable, "-m", "thomas_cli", "zoo", "list", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mobilenet_v2" in r.stdout
