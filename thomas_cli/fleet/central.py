"""Central evaluation (`--central-data DIR|NPZ`): the global model after each round, on a dataset of this
computer, with the agent's numpy engine (`python -m device_agent eval`, the command `thomas eval` runs on
a device) in a child process of this computer with its BLAS pinned to one thread (THOMAS_THREADS=1):
in the fleet's own process OpenBLAS's spinning threads starve against Flower's and Ray's (measured: a
3.6 s evaluation took minutes).

    fn = central_eval(doc, Path("./holdout"))    # decoded once into runs/<id>/central/ (the agent's format)
    fn(global_arrays)                            # {"acc", "loss", "count"}
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import device_agent
from device_agent.errors import DataError, ThomasError
from device_agent.model.graph import save_package
from device_agent.training.dataset_write import write_splits

from .. import images
from . import record


def central_eval(doc: dict, src: Path):
    d = record.fleet_dir(doc["id"])
    g = record.base_graph(doc["id"])
    c, h, w = g.infer_shapes(batch=1)[g.inputs[0].name][1:]
    if not (d / "central" / "dataset.json").is_file():
        dec = images.load(src, (h, w), channels=c)
        if list(dec.classes) != list(doc["classes"]):
            raise DataError(f"--central-data {src}: classes {list(dec.classes)[:5]} differ from the fleet's "
                            f"{list(doc['classes'])[:5]}")
        p = dec.parts
        x, y = next(p[k] for k in ("test", "val", "all", "train") if k in p)
        write_splits(d / "central", {"train": (x, y), "val": (x, y)}, doc["classes"], f"central {src}")
    here = str(Path(device_agent.__file__).resolve().parents[1])
    env = dict(os.environ, THOMAS_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))

    def run(arrays: dict) -> dict:
        save_package(record.with_arrays(g, arrays), d / "central-model")
        r = subprocess.run([sys.executable, "-m", "device_agent", "eval", "central-model", "central",
                            "central-eval.json", "--split", "val", "--backend", "numpy"], cwd=d, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise ThomasError(f"the central evaluation failed (exit {r.returncode}): {tail}")
        res = json.loads((d / "central-eval.json").read_text())
        return {"acc": float(res["acc"]), "loss": float(res["loss"]), "count": int(res["count"])}

    return run
