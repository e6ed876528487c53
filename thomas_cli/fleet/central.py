"""Central evaluation (`--central-data DIR|NPZ`): the global model after each round, on a dataset of this
computer, with the agent's numpy engine in-process (device_agent.evaluate, the code `thomas eval` runs).

    fn = central_eval(doc, Path("./holdout"))    # decoded once into runs/<id>/central/ (the agent's format)
    fn(global_arrays)                            # {"acc", "loss", "count"}
"""
from __future__ import annotations

from pathlib import Path

from device_agent.errors import DataError
from device_agent.evaluate import evaluate
from device_agent.training.data import open_dataset
from device_agent.training.dataset_write import write_splits

from .. import images
from . import record


def central_eval(doc: dict, src: Path):
    g = record.base_graph(doc["id"])
    c, h, w = g.infer_shapes(batch=1)[g.inputs[0].name][1:]
    dest = record.fleet_dir(doc["id"]) / "central"
    if not (dest / "dataset.json").is_file():
        dec = images.load(src, (h, w), channels=c)
        if list(dec.classes) != list(doc["classes"]):
            raise DataError(f"--central-data {src}: classes {list(dec.classes)[:5]} differ from the fleet's "
                            f"{list(doc['classes'])[:5]}")
        p = dec.parts
        x, y = next(p[k] for k in ("test", "val", "all", "train") if k in p)
        write_splits(dest, {"train": (x, y), "val": (x, y)}, doc["classes"], f"central {src}")
    split = open_dataset(dest).splits["val"]

    def run(arrays: dict) -> dict:
        res = evaluate(record.with_arrays(g, arrays), split, batch=64, backend="numpy")
        return {"acc": res.acc, "loss": res.loss, "count": res.count}

    return run
