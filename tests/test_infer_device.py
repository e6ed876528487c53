"""`thomas infer` on a device, end to end: the package is pushed (or named on the device), the batch is
decoded on the host and pushed as .npy, the agent runs it, the logits come back. Runs through the
embedded local device and through the virtual adb device (fake adbd + real adb server + adbutils)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device_agent.model.graph import load_package, save_package
from device_agent.infer import infer_package
from devicekit import thomas, thomas_json
from test_device_cli import _no_stray_adb_server, make_target  # noqa: F401  (fixture)
from thomas_cli import zoo
from thomas_cli.infer_input import load_inputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=["adb", "local"])
def dev(request, tmp_path, monkeypatch):
    return make_target(request.param, request, tmp_path, monkeypatch, "shared_vdev")


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory) -> Path:
    g = zoo.build("mobilenet_v2", num_classes=3, size=32, width=0.35, seed=0)
    return save_package(g, tmp_path_factory.mktemp("pkg") / "mnv2")


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    npy = tmp_path / "x.npy"
    np.save(npy, rng.standard_normal((5, 3, 32, 32)).astype(np.float32))
    png = tmp_path / "cat.png"
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(png)
    return npy, png


def test_infer_on_device_matches_in_process(dev, mnv2, tmp_path):
    npy, png = _inputs(tmp_path)
    g = load_package(mnv2)
    out = tmp_path / "logits.npy"
    rep = thomas_json(dev, "infer", str(mnv2), "--input", str(npy), "--output", str(out), "--top", "2",
                      "--backend", "numpy", "--batch", "2")
    want = infer_package(g, np.load(npy))
    got = np.load(out)
    assert got.shape == (5, 3) and np.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert [r["input"] for r in rep["results"]] == [f"x.npy[{i}]" for i in range(5)]
    top = rep["results"][0]["top"]
    assert len(top) == 2 and top[0]["index"] == int(np.argmax(want[0])) and top[0]["prob"] >= top[1]["prob"]
    assert top[0]["label"] == g.labels[top[0]["index"]]
    sp = rep["throughput"]
    assert sp["samples"] == 5 and sp["samples_per_s"] > 0 and sp["backend"] == "numpy"
    assert sp["transport"] == dev.name and sp["compute"].endswith("(numpy)") and sp["batch"] == 2
    # the package went to the device as push-model names it; the batch's folder is gone
    assert (dev.root / "models" / "mnv2" / "model.json").is_file()
    assert not any((dev.root / "tmp").iterdir())

    # a PNG, decoded on the host, against a model named on the device (no package here), human output
    r = thomas(dev, "infer", "mnv2", "--input", str(png), "--backend", "numpy")
    assert "cat.png" in r.stdout and "inputs/s" in r.stdout and "numpy backend" in r.stdout
    rep = thomas_json(dev, "infer", "mnv2", "--input", str(png), "--output", str(out), "--backend", "auto")
    _, x = load_inputs(png, g.inputs[0])
    got = np.load(out)
    assert got.shape == (1, 3) and rep["throughput"]["backend"] in ("numpy", "opencl")
    # auto may pick an OpenCL device (PoCL): float32 kernels, so a looser tolerance than numpy vs numpy
    assert np.allclose(got, infer_package(g, x), rtol=1e-3, atol=1e-4)


def test_infer_errors_are_one_line(dev, mnv2, tmp_path):
    npy, _ = _inputs(tmp_path)
    for args, match in [(("nosuch",), "nor a model on"),
                        ((str(tmp_path / "nopkg"),), "no such package"),
                        ((str(mnv2), "--backend", "cuda"), "--backend must be auto, opencl or numpy")]:
        r = thomas(dev, "infer", *args[:1], "--input", str(npy), *args[1:], expect=1)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.float32))
    r = thomas(dev, "infer", str(mnv2), "--input", str(tmp_path / "wrong.npy"), expect=1)
    assert "does not fit the model input" in r.stderr and not (dev.root / "models").exists()
