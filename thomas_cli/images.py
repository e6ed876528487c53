"""Host-side decoding for `thomas push-data`: an ImageFolder or an .npz into uint8 NHWC arrays.

    imgs, labels, classes, report = load_image_folder(Path("flowers/"), size=224, on_image=bar.advance)
    imgs, labels, classes, report = load_npz(Path("digits.npz"), size=32)

ImageFolder: one subfolder per class (sorted names = class order), images inside (jpg/jpeg/png, and
whatever else Pillow reads: bmp/gif/webp/ppm/tif); files with other suffixes are ignored. Every image
is converted to RGB and resized to size x size (bilinear). An image Pillow cannot read is listed in
report["bad"] and skipped; it never stops the push.

.npz: `images` (or `x`) uint8 (N,H,W), (N,H,W,1) or (N,H,W,3); `labels` (or `y`) integers in
[0, K); optional `classes` (K names). Images are resized like the folder's.
The device never decodes images: it reads these arrays (device_agent.data's shards).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from device_agent.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("decoding images needs Pillow: pip install pillow") from None
    return Image


def image_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(file, label)]) of an ImageFolder; DataError when it is not one."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: not an ImageFolder (expected one subfolder per class, e.g. {root}/cat/1.jpg)")
    files = []
    for label, c in enumerate(classes):
        files += [(p, label) for p in sorted((root / c).rglob("*"))
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no images (jpg/png) in its class folders {', '.join(classes[:5])}")
    return classes, files


def _resize(img, size: int) -> np.ndarray:
    Image = _pil()
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_image_folder(root: Path, size: int, on_image: Callable[[], None] | None = None):
    """-> images (N,size,size,3) uint8, labels (N,) int64, classes, report {"bad": [(path, why)]}."""
    Image = _pil()
    classes, files = image_files(root)
    images, labels, bad = [], [], []
    for path, label in files:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(_resize(im.convert("RGB"), size))
                labels.append(label)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # NOTE: Pillow reports truncated/corrupt files as OSError, some broken PNGs as SyntaxError.
            bad.append((str(path.relative_to(root)), f"{type(e).__name__}: {e}"))
        if on_image:
            on_image()
    if not images:
        raise DataError(f"{root}: none of its {len(files)} images could be read (first: {bad[0][1]})")
    return np.stack(images), np.asarray(labels, np.int64), classes, {"bad": bad, "files": len(files)}


def load_npz(path: Path, size: int, on_image: Callable[[], None] | None = None):
    """-> images (N,size,size,3) uint8, labels (N,) int64, classes, report."""
    Image = _pil()
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from None
    with z:
        keys = set(z.files)
        xk = next((k for k in ("images", "x") if k in keys), None)
        yk = next((k for k in ("labels", "y") if k in keys), None)
        if xk is None or yk is None:
            raise DataError(f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'), has {sorted(keys)}")
        x, y = z[xk], z[yk]
        classes = [str(c) for c in z["classes"]] if "classes" in keys else None
    if x.dtype != np.uint8:
        raise DataError(f"{path}: '{xk}' must be uint8 pixels, got {x.dtype}")
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3)):
        raise DataError(f"{path}: '{xk}' must be (N,H,W), (N,H,W,1) or (N,H,W,3), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{yk}' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    k = int(y.max()) + 1 if len(y) else 0
    if classes is None:
        classes = [str(i) for i in range(k)]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"{path}: label {int(y.max())} is outside the {len(classes)} classes")
    out = np.empty((len(x), size, size, 3), np.uint8)
    for i, a in enumerate(x):
        im = Image.fromarray(a).convert("RGB")
        out[i] = _resize(im, size)
        if on_image:
            on_image()
    return out, y.astype(np.int64), classes, {"bad": [], "files": len(x)}


def count_inputs(src: Path) -> int:
    """How many images a push will decode (for the progress bar)."""
    if src.suffix == ".npz":
        with np.load(src, allow_pickle=False) as z:
            key = "images" if "images" in z.files else "x"
            return len(z[key]) if key in z.files else 0
    return len(image_files(src)[1])
