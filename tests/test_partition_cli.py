"""`thomas push-data SRC --devices A,B,local [--dirichlet ALPHA]`: digits split across two virtual phones on
one adb server (A reached through its paired Termux daemon, B through adb shell) and the local device;
each phone's dataset read back; bad input as one line with nothing pushed."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import need_adb
from device_agent.training.data import open_dataset
from devicekit import DeviceTarget, digits, thomas
from test_daemon_cli import SCRUB, Daemon, paired
from test_push_data import one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """(DeviceTarget with the global options for B, {name: device root as a host path}) for phones A
    (daemon) and B (shell) on one adb server, plus the local device."""
    from virtual_adb import VirtualDevice

    need_adb()
    for k in SCRUB:
        monkeypatch.delenv(k, raising=False)
    with VirtualDevice(tmp_path / "phone-a") as va, VirtualDevice(tmp_path / "phone-b") as vb:
        for k, v in va.env.items():
            monkeypatch.setenv(k, v)
        assert "connected" in va.adb_cmd("connect", vb.serial)          # B joins A's adb server too
        deadline = time.monotonic() + 15
        while va.adb_cmd("-s", vb.serial, "get-state").strip() != "device":
            assert time.monotonic() < deadline, va.adb_cmd("devices")
            time.sleep(0.05)
        root_a = Path(va.root) / "termux" / "thomas"
        d = Daemon(root_a)
        try:
            paired(DeviceTarget("daemon", root_a, ["-s", va.serial], vdev=va), d)
            root_b = Path(vb.root) / "thomas"
            dev = DeviceTarget("fleet", root_b, ["--device-root", str(root_b), "--python", sys.executable])
            local = Path(os.environ["THOMAS_HOME"]) / "device"        # local in a list: never --device-root
            yield dev, {va.serial: root_a, vb.serial: root_b, "local": local}
        finally:
            d.stop()


def traced_digits(path: Path, n_per_class: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits (10 classes) whose corner pixels spell each image's index, saved as an .npz."""
    x, y = digits(n_per_class, classes=10)
    x = x.copy()
    x[:, 0, 0], x[:, 0, 1] = np.arange(len(x)) % 256, np.arange(len(x)) // 256
    np.savez(path, x=x, y=y, classes=np.array([f"d{i}" for i in range(10)]))
    return x, y


def read_back(root: Path, name: str) -> dict:
    ds = open_dataset(root / "data" / name)
    meta = json.loads((root / "data" / name / "thomas.json").read_text())
    out = {"classes": json.loads((root / "data" / name / "classes.json").read_text()), "meta": meta,
           "doc": json.loads((root / "data" / name / "dataset.json").read_text())}
    for split in ("train", "val"):
        part = getattr(ds, split)
        x = part.rows(np.arange(len(part)))
        out[split] = (x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int), part.labels)
    return out


def test_digits_split_across_daemon_shell_and_local(fleet, tmp_path):
    dev, roots = fleet
    x, y = traced_digits(tmp_path / "digits.npz")
    names = list(roots)
    res = json.loads(thomas(dev, "push-data", str(tmp_path / "digits.npz"), "--channels", "1", "--devices",
                            ",".join(names), "--dirichlet", "0.5", "--seed", "3", "--json").stdout)
    assert [r["device"] for r in res["devices"]] == names and res["examples"] == len(y) == 300
    assert [r["transport"] for r in res["devices"]] == ["daemon", "adb", "local"]
    seen = []
    for r in res["devices"]:
        got = read_back(roots[r["device"]], "digits")
        assert got["classes"] == [f"d{i}" for i in range(10)] and got["meta"]["classes"] == got["classes"]
        assert got["doc"]["partition"] == {"part": names.index(r["device"]), "parts": 3, "dirichlet": 0.5,
                                           "seed": 3, "of_examples": 300}
        ids = np.concatenate([got["train"][0], got["val"][0]])
        labels = np.concatenate([got["train"][1], got["val"][1]])
        assert np.array_equal(labels, y[ids])                           # each image kept its label
        assert len(ids) == r["count"] == got["meta"]["count"] >= 1
        assert r["per_class"] == np.bincount(labels, minlength=10).tolist()
        assert set(got["val"][1].tolist()) <= set(got["train"][1].tolist())
        seen += ids.tolist()
    assert sorted(seen) == list(range(300))                             # no image on two devices, none lost
    counts = np.array([r["per_class"] for r in res["devices"]])
    assert (counts == 0).any() and counts.max() > 20                    # Dirichlet 0.5: skewed, not 10 each

    r = thomas(dev, "push-data", str(tmp_path / "digits.npz"), "--channels", "1", "--devices", ",".join(names),
               "--partition", "3", "--seed", "3")                       # IID: 10 of each class per device
    lines = r.stdout.splitlines()
    assert "300 examples, 10 classes, 3 parts, IID (stratified), seed 3" in r.stdout
    for name in names:
        row = next(line for line in lines if name in line)
        assert "100" in row and "pushed" in row, r.stdout
        got = read_back(roots[name], "digits")
        labels = np.concatenate([got["train"][1], got["val"][1]])
        assert np.bincount(labels, minlength=10).tolist() == [10] * 10
        assert np.bincount(got["val"][1], minlength=10).tolist() == [2] * 10      # --val 0.2 within each part
    r = thomas(dev, "push-data", str(tmp_path / "digits.npz"), "--channels", "1", "--devices", ",".join(names),
               "--seed", "3")                                            # same parts again: nothing to push
    assert r.stdout.count("already there") == 3, r.stdout
    res = json.loads(thomas(dev, "push-data", str(tmp_path / "digits.npz"), "--devices", f"all,local,{names[0]}",
                            "--name", "every", "--json").stdout)   # all: both phones; a phone all names is kept once
    assert sorted(r["device"] for r in res["devices"]) == sorted(names) and res["examples"] == 300
    assert sum(len(read_back(roots[n], "every")["train"][0]) + len(read_back(roots[n], "every")["val"][0])
               for n in names) == 300


def test_bad_input_is_one_line_and_pushes_nothing(fleet, tmp_path):
    dev, roots = fleet
    traced_digits(tmp_path / "digits.npz", n_per_class=3)
    src = str(tmp_path / "digits.npz")
    a, b, _ = roots
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    cases = [
        (["--devices", f"{a},emulator-9999"], ["unknown device 'emulator-9999'", a]),
        (["--devices", f"{a},{b}", "--partition", "3"], ["--partition 3", "names 2 devices", "one device per part"]),
        (["--devices", f"{a},local", "--dirichlet", "0"], ["--dirichlet 0", "> 0"]),
        (["--devices", f"{a},local", "--dirichlet", "-1"], ["--dirichlet -1", "> 0"]),
        (["--partition", "2"], ["--partition 2 needs --devices"]),
        (["--devices", f"{a},{a}"], [f"'{a}' is named twice"]),
        (["--devices", ","], ["name the devices"]),
        (["--devices", f"{a},local", "--val", "1"], ["--val 1"]),
    ]
    for extra, words in cases:
        one_line_error(thomas(dev, "push-data", src, *extra, expect=1), *words)
    one_line_error(thomas(dev, "push-data", str(tmp_path / "two.npz"), "--devices", f"{a},{b},local", expect=1),
                   "cannot split 2 examples into 3 parts")
    for root in roots.values():
        assert not (root / "data").exists() or not any((root / "data").iterdir()), root
