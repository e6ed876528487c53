"""`thomas push-data`: a dataset decoded on this computer, pushed to the device (deploy.push_data).

    thomas push-data ./flowers --size 224 --val 0.2          # ImageFolder or .npz, split at random
    thomas push-data ./lines.npz --channels 1                # x_train, y_train, x_val, y_val kept; own H x W
    thomas push-data ./cars --size 64x256                    # train/ val/ [test/] folders kept
    thomas push-data ./digits.npz --devices R58M1,R58M2,local --dirichlet 0.5   # one part per device
"""
from __future__ import annotations

from pathlib import Path

import math

import typer
from rich.table import Table

from device_agent.errors import DataError

from .. import images
from ..app import app, guarded, out, print_json
from ..deploy import push_data, push_partitioned
from ..targets import device_targets
from ..views import data_line
from .common import session, target


@app.command("push-data")
@guarded
def push_data_cmd(
    src: Path = typer.Argument(..., help="An ImageFolder (one subfolder per class, or train/ val/ and test/ "
                                         "of them) or an .npz (x, y or x_train, y_train, x_val, y_val[, x_test, y_test])."),
    size: str = typer.Option(None, "--size", help="Resize every image to S x S or H x W (e.g. 224, 64x256; "
                                                  f"at most {images.MAX_SIDE}). Default: the images' own size."),
    channels: int = typer.Option(3, "--channels", help="3 (RGB) or 1 (grayscale, stored (N,H,W,1))."),
    val: float = typer.Option(None, "--val", help="Fraction of each class held out for validation, for data "
                                                  "without its own split (default 0.2)."),
    resplit: bool = typer.Option(False, "--resplit", help="Pool the data's own train and val and split them at "
                                                          "random (--val, --seed); a test split is kept."),
    name: str = typer.Option(None, "--name", help="Dataset name on the device (default: folder / file name)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split and of the --devices partition."),
    force: bool = typer.Option(False, "--force", help="Push even when the device has the same content."),
    devices: str = typer.Option(None, "--devices", metavar="LIST", help="Split the dataset across these devices, one part "
                                                        "each, all under the same name: adb serials, local, "
                                                        "or all (every attached phone), comma-separated."),
    parts: int = typer.Option(None, "--partition", metavar="N", help="How many parts (must equal the number of --devices; "
                                                        "default: that number)."),
    alpha: float = typer.Option(None, "--dirichlet", metavar="ALPHA", help="Non-IID parts: each class's share per device drawn "
                                                          "from Dirichlet(ALPHA) (smaller: more skewed, e.g. "
                                                          "0.5). Default: IID, stratified by class."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Decode images on this computer (Pillow), write uint8 shards + labels + classes.json, push them.
    A dataset's own train/val (and test) split is kept as it is; data without one is split at random."""
    if channels not in (1, 3):
        raise DataError(f"--channels {channels}: give 1 (grayscale) or 3 (RGB)")
    hw = images.parse_size(size)           # a bad --size fails before the device is touched
    if devices is not None or parts is not None or alpha is not None:
        return push_parts_cmd(src, devices, parts, alpha, hw, channels, val, resplit, name or src.stem, seed,
                              force, as_json)
    s = session()
    res = push_data(s, src, name or src.stem, hw, val, seed, force, channels, resplit)
    if as_json:
        print_json(res)
        return
    out.print(data_line(res, f"{s.t.serial}:{s.t.root}/data/{res['name']}"), highlight=False, soft_wrap=True)


def push_parts_cmd(src: Path, devices: str | None, n: int | None, alpha: float | None, hw, channels: int,
                   val: float | None, resplit: bool, name: str, seed: int, force: bool, as_json: bool) -> None:
    """push-data --devices: one part of the dataset per device (deploy.push_partitioned), then a table."""
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise DataError(f"--dirichlet {alpha:g}: ALPHA must be a number > 0 (smaller: more skewed, e.g. 0.5)")
    if n is not None and n < 1:
        raise DataError(f"--partition {n}: give the number of devices (>= 1)")
    if devices is None:
        flag = f"--partition {n}" if n is not None else "--dirichlet"
        raise DataError(f"{flag} needs --devices SERIAL,SERIAL,... (one device per part; local and all work too)")
    tgts = device_targets(devices, target())
    if n is not None and n != len(tgts):
        raise DataError(f"--partition {n} but --devices names {len(tgts)} device{'s' * (len(tgts) != 1)} "
                        f"({devices}): give one device per part")
    rows = push_partitioned([session(t) for t in tgts], src, name, hw, val, seed, force, channels, resplit, alpha)
    summary = {"name": name, "parts": len(rows), "dirichlet": alpha, "seed": seed, "classes": rows[0]["classes"],
               "examples": sum(r["count"] for r in rows), "devices": rows}
    if as_json:
        print_json(summary)
        return
    out.print(parts_table(summary))


def parts_table(summary: dict) -> Table:
    classes = summary["classes"]
    how = "IID (stratified)" if summary["dirichlet"] is None else f"Dirichlet alpha={summary['dirichlet']:g}"
    t = Table(title=f"{summary['name']}: {summary['examples']} examples, {len(classes)} classes, "
                    f"{summary['parts']} part{'s' * (summary['parts'] != 1)}, {how}, seed {summary['seed']}")
    each = f"per class ({classes[0]} .. {classes[-1]})" if len(classes) <= 12 else "per class"
    for col in ("device", "transport", "examples", "train/val", each, "pushed"):
        t.add_column(col, no_wrap=col != each, justify="right" if col == "examples" else "left")
    for r in summary["devices"]:
        test = f"/{r['test']}" if r.get("test") else ""
        t.add_row(r["device"], r["transport"], str(r["count"]), f"{r['train']}/{r['val']}{test}",
                  per_class(classes, r["per_class"]), "already there" if r["skipped"] else "pushed")
    return t


def per_class(classes: list[str], counts: list[int]) -> str:
    """Up to 12 classes: every count in class order ('12 3 0'); more: how many it holds and its 5 largest."""
    if len(classes) <= 12:
        return " ".join(map(str, counts))
    top = sorted(range(len(counts)), key=lambda i: -counts[i])[:5]
    held = sum(1 for k in counts if k)
    return f"{held}/{len(classes)} classes; most: " + " ".join(f"{classes[i]}:{counts[i]}" for i in top)
