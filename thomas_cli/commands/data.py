"""`thomas push-data`: a dataset decoded on this computer, pushed to the device (deploy.push_data).

    thomas push-data ./flowers --size 224 --val 0.2          # ImageFolder or .npz, split at random
    thomas push-data ./lines.npz --channels 1                # x_train, y_train, x_val, y_val kept; own H x W
    thomas push-data ./cars --size 64x256                    # train/ val/ [test/] folders kept
"""
from __future__ import annotations

from pathlib import Path

import typer

from device_agent.errors import DataError

from .. import images
from ..app import app, guarded, out, print_json
from ..deploy import push_data
from ..views import data_line
from .common import session


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
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    force: bool = typer.Option(False, "--force", help="Push even when the device has the same content."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Decode images on this computer (Pillow), write uint8 shards + labels + classes.json, push them.
    A dataset's own train/val (and test) split is kept as it is; data without one is split at random."""
    if channels not in (1, 3):
        raise DataError(f"--channels {channels}: give 1 (grayscale) or 3 (RGB)")
    hw = images.parse_size(size)           # a bad --size fails before the device is touched
    s = session()
    res = push_data(s, src, name or src.stem, hw, val, seed, force, channels, resplit)
    if as_json:
        print_json(res)
        return
    out.print(data_line(res, f"{s.t.serial}:{s.t.root}/data/{res['name']}"), highlight=False, soft_wrap=True)
