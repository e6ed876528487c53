"""Host side of `make test-arm64`: a fresh device root for the arm64 agent, made with this repo's tools.

    .venv/bin/python tests/arm64/prepare.py ROOT

ROOT (inside the arm64 userland, e.g. .arm64/rootfs/thomas) gets the layout the host pushes to a phone:
    agent/          the agent payload, unpacked from thomas_cli.device.build_payload (device_agent/, kernels/,
                    configs/, PAYLOAD): the very archive `thomas` pushes
    models/tiny     tests/train_helpers.tiny_cnn (conv-bn-relu, residual add, strided conv, GAP, dropout, linear)
    data/digits     1600 scikit-learn digits 8x8 (dataset_write; 1280 train / 320 val): the numpy epoch
    data/two        40 other digits (31 train): exactly two steps of batch 16, for the OpenCL-vs-numpy check
    jobs/*.json     epoch (numpy, one epoch), np2 / cl2 (the same two-step job, backend numpy / opencl)
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from device_agent.model.graph import save_package          # noqa: E402
from device_agent.training.dataset_write import write_dataset  # noqa: E402
from thomas_cli.device import build_payload                 # noqa: E402
from train_helpers import digits, tiny_cnn                  # noqa: E402

TWO_STEP = dict(model="models/tiny", data="data/two", layers="all", epochs=1, batch=16, lr=0.05,
                optimizer="sgd", momentum=0.9, bn="train", seed=0, diverge_factor=None)
JOBS = {
    "epoch": dict(model="models/tiny", data="data/digits", out="runs/epoch", layers="all", epochs=1, batch=32,
                  lr=0.05, backend="numpy", seed=0),
    "np2": dict(TWO_STEP, out="runs/np2", backend="numpy"),
    "cl2": dict(TWO_STEP, out="runs/cl2", backend="opencl"),
}


def unpack_payload(root: Path) -> str:
    """build_payload's zip unpacked into root/agent; returns its hash."""
    with tempfile.TemporaryDirectory() as tmp:
        path, digest = build_payload(Path(tmp))
        with zipfile.ZipFile(path) as z:
            z.extractall(root / "agent")
    return digest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = Path(argv[0])
    shutil.rmtree(root, ignore_errors=True)          # every run starts bare: kernels are built again
    root.mkdir(parents=True)
    digest = unpack_payload(root)
    imgs, labels = digits(8)
    classes = [str(c) for c in range(10)]
    write_dataset(root / "data" / "digits", imgs[:1600], labels[:1600], classes, 0.2, seed=0)
    write_dataset(root / "data" / "two", imgs[1600:1640], labels[1600:1640], classes, 0.2, seed=0)
    save_package(tiny_cnn(10, 8), root / "models" / "tiny")
    (root / "jobs").mkdir()
    for name, job in JOBS.items():
        (root / "jobs" / f"{name}.json").write_text(json.dumps(job, indent=1) + "\n")
    print(f"prepared {root}: agent payload {digest[:12]}, jobs {', '.join(JOBS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
