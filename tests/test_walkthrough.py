"""The README's "Bring your own model" walkthrough, run as written on the local device.

The commands are read from the README's `sh walkthrough` block, so the README cannot drift from
what works. The test makes what a user would bring: a classifier written in plain torch.nn with a
Softmax head and a non-square input, exported to ONNX; an ImageFolder of JPEG photos with its own
train/ and val/ split; one photo to classify. `RUN` in a command stands for the last training run.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ("daisy", "rose", "tulip")
H, W = 32, 48


def walkthrough_commands() -> list[str]:
    m = re.search(r"```sh walkthrough\n(.*?)```", README.read_text(), re.S)
    assert m, "README.md has no ```sh walkthrough block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip().startswith("thomas ")]


def _photo(rng, c: int, h: int, w: int):
    """A noisy photo whose class shows as a colour cast and a bright band (rows, columns, diagonal)."""
    from PIL import Image

    img = rng.normal(110, 35, (h, w, 3))
    img[..., c] += 60
    if c == 0:
        img[h // 3: h // 2] += 70
    elif c == 1:
        img[:, w // 3: w // 2] += 70
    else:
        img[np.abs(np.subtract.outer(np.arange(h) * w / h, np.arange(w))) < 4] += 70
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_photos(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 24), ("val", 8)):
        for c, name in enumerate(CLASSES):
            d = root / "photos" / split / name
            d.mkdir(parents=True)
            for i in range(n):   # camera-sized, not the model's size: push-data resizes
                _photo(rng, c, 60, 90).save(d / f"{name}_{i:03d}.jpg", quality=92)
    _photo(rng, 1, 60, 90).save(root / "photo.jpg", quality=92)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")


def make_classifier(path: Path) -> None:
    """A small CNN with a Softmax head and a 3x32x48 input: the kind of file a user exports."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(CLASSES)), nn.Softmax(dim=1)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, H, W), str(path), opset_version=13, dynamo=False,
                      input_names=["image"], output_names=["probs"], dynamic_axes={"image": {0: "n"}})


@pytest.mark.torch
@pytest.mark.slow
def test_readme_walkthrough(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from thomas_cli.main import app

    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path)
    make_classifier(tmp_path / "classifier.onnx")
    dev = ["--device", "local", "--device-root", str(tmp_path / "phone")]
    runner = CliRunner()

    def thomas(argv: list[str]):
        r = runner.invoke(app, [*dev, *argv])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        assert r.exit_code == 0, f"thomas {' '.join(argv)}: exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
        return r

    def last_training_run() -> str:
        runs = json.loads(thomas(["runs", "list", "--json"]).stdout)
        train = [r for r in runs if r["kind"] == "train"]
        return sorted(train, key=lambda r: r["id"])[-1]["id"]

    evals, outputs = [], {}
    for cmd in walkthrough_commands():
        argv = shlex.split(cmd)[1:]
        if "RUN" in argv:
            argv = [last_training_run() if a == "RUN" else a for a in argv]
        if argv[0] == "eval":
            evals.append(json.loads(thomas([*argv, "--json"]).stdout))
            continue
        outputs[argv[0]] = thomas(argv)

    # zero-shot, then the tuned model: the fine-tune learned the photos
    assert len(evals) == 2, evals
    zero, tuned = (e["acc"] for e in evals)
    assert tuned >= 0.9 and tuned > zero + 0.2, (zero, tuned)
    # the split of the folder was kept: 24 + 8 photos per class
    assert "72 train / 24 val" in outputs["push-data"].stdout.replace("\n", " ")
    # the exported model and the last infer exist and name a class
    assert (tmp_path / "flowers-tuned.onnx").is_file()
    assert any(c in outputs["infer"].stdout for c in CLASSES)
