"""Shared support for the host<->device tests: devices to test against, running `thomas`, tiny data.

    dev = DeviceTarget("adb", root, args=["-s", serial, ...], vdev=vd)
    r = thomas(dev, "push-model", "mobilenet_v2", ...)       # in-process (typer's CliRunner)
    p = thomas_proc(dev, "finetune", ...)                    # a real subprocess (for kill/hang tests)

Both targets run the same commands: "adb" goes through the virtual adb device and a real adb server,
"local" through the embedded local device. Each test gets its own device root and THOMAS_HOME.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ZOO_ARGS = ["--classes", "3", "--size", "32", "--width", "0.35"]   # ~400k parameters, 32x32
RUN_ARGS = ["--batch", "8", "--backend", "cpu"]


@dataclass
class DeviceTarget:
    name: str                     # "adb" | "local"
    root: Path                    # the device root, as a path on this machine
    args: list[str]               # global options selecting it
    env: dict = field(default_factory=dict)
    vdev: object = None           # the VirtualDevice for "adb"


def thomas(dev: DeviceTarget, *args: str, expect: int | None = 0):
    """Run `thomas <global args> ARGS` in this process; assert the exit code when `expect` is set."""
    from typer.testing import CliRunner

    from thomas_cli.main import app

    r = CliRunner().invoke(app, [*dev.args, *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    if expect is not None:
        assert r.exit_code == expect, f"exit {r.exit_code}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def thomas_json(dev: DeviceTarget, *args: str):
    return json.loads(thomas(dev, *args, "--json").stdout)


def thomas_proc(dev: DeviceTarget, *args: str) -> subprocess.Popen:
    env = dict(os.environ, **dev.env)
    return subprocess.Popen([sys.executable, "-m", "thomas_cli", *dev.args, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_long_run(dev: DeviceTarget, home: Path, epochs: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    """`thomas finetune mnv2 --layers all` as a real subprocess (for kill/hang tests), once its run
    folder exists: (the process, the host's run folder). The model and data must be on the device."""
    p = thomas_proc(dev, "finetune", "mnv2", "--data", "digits", "--layers", "all", "--epochs", str(epochs),
                    *RUN_ARGS, *extra)
    deadline = time.monotonic() + 60
    while not (home / "runs").is_dir() or not any((home / "runs").iterdir()):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.02)
    return p, only_run(home)


def wait_for_event(events: Path, pred, timeout: float = 60, proc: subprocess.Popen | None = None) -> dict:
    """Poll the host's events.jsonl mirror until an event satisfies `pred`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.is_file():
            for line in events.read_text().splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if pred(ev):
                    return ev
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"thomas exited early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"no matching event in {events} within {timeout} s")


def only_run(home: Path) -> Path:
    runs = [p for p in (home / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def digits(n_per_class: int = 10, classes: int = 3):
    """scikit-learn's digit scans (8x8, 0..16) as uint8 images and labels: the first n of each class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in range(classes)])
    return (d.images[idx] * (255.0 / 16.0)).round().astype(np.uint8), d.target[idx].astype(np.int64)


def image_folder(root: Path, n_per_class: int = 10, classes: int = 3, bad: bool = True) -> Path:
    """An ImageFolder of PNG digit scans (one folder per class), plus one corrupt .jpg when `bad`."""
    from PIL import Image

    x, y = digits(n_per_class, classes)
    names = ["zero", "one", "two", "three", "four"][:classes]
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    if bad:
        (root / names[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (root / names[1] / "notes.txt").write_text("not an image, ignored")
    return root
