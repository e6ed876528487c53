"""Host-side decoding for `thomas push-data`: an ImageFolder or an .npz into uint8 NHWC arrays.

    dec = load(Path("flowers/"), size=(224, 224), channels=3, on_image=bar.advance)
    dec = load(Path("lines.npz"), size=None, channels=1)        # None: the data's own H x W
    dec.parts     # {"all": (x, y)} or {"train": (x, y), "val": (x, y)[, "test": (x, y)]}

ImageFolder: one subfolder per class (sorted names = class order) with images inside (jpg/png, and
whatever else Pillow reads: bmp/gif/webp/ppm/tif; other suffixes are ignored); or the split form
`train/CLASS/...`, `val/CLASS/...` (also `valid/`, `validation/`), optional `test/CLASS/...`, whose
val and test folders must hold the same class folders as train. An image Pillow cannot read (or
one above MAX_IMAGE_PIXELS) is listed in dec.bad and skipped; it never stops the push.

.npz: either `images`/`x` + `labels`/`y` (one set), or `x_train, y_train` with optional
`x_val, y_val` and `x_test, y_test` (a split kept as it is); never both forms. Images uint8
(N,H,W), (N,H,W,1) or (N,H,W,3); labels integers in [0, K); optional `classes` (K names).
Every member's header is checked before anything is read: no object (pickled) arrays, declared
shape x itemsize equal to the stored bytes, and everything within the memory budget.

Every image becomes `channels` channels (RGB -> gray by ITU-R 601 luma, Pillow's convert("L");
gray -> RGB by replication) and, when `size` differs from its own, is resized (bilinear), in that
order, as `thomas infer` does. The device never decodes images.
"""
from __future__ import annotations

import re
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from device_agent.training.dataset_write import check_labels, check_subset
from device_agent.errors import DataError
from device_agent.limits import memory_budget, npy_header

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
MAX_SIDE = 4096                  # --size: at most 4096 pixels a side
MAX_IMAGE_PIXELS = 1 << 26       # a source image above 64 Mpx (8192x8192) is refused (decompression bomb)
MAX_CLASSES = 100_000            # labels without a `classes` array: at most this many classes
VAL_DIRS = ("val", "valid", "validation")
OnImage = Callable[[int], None]  # called with how many images were just decoded


@dataclass
class Decoded:
    parts: dict                  # "all" or "train"/"val"/"test" -> (x (n,H,W,C) uint8, y (n,) int64)
    classes: list
    layout: str                  # where the split came from, for messages: "x, y", "x_train, ...", "train/ val/"
    bad: list = field(default_factory=list)     # [(relative path, why)] skipped images
    files: int = 0

    @property
    def has_split(self) -> bool:
        return "train" in self.parts

    @property
    def shape(self) -> tuple:
        """(H, W, C) of every image."""
        return next(iter(self.parts.values()))[0].shape[1:]


# ============================================================================ limits
def parse_size(text: str | int | None) -> tuple[int, int] | None:
    """'224' -> (224, 224), '64x256' -> (64, 256) (H x W), None -> None; DataError otherwise."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,9})\s*(?:[xX×]\s*(\d{1,9})\s*)?", str(text))
    if not m:
        raise DataError(f"--size {text!r}: give S or HxW, e.g. 224 or 64x256")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise DataError(f"--size {text}: each side must be between 1 and {MAX_SIDE} pixels")
    return h, w


def show_size(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def check_budget(nbytes: int, what: str) -> None:
    """DataError when nbytes exceed the memory budget (limits.memory_budget: $THOMAS_MEMORY_BUDGET,
    else the memory available)."""
    budget = memory_budget()
    if nbytes > budget:
        raise DataError(f"{what} needs {nbytes / 2**30:.2f} GiB of memory, more than the {budget / 2**30:.2f} GiB "
                        f"available (a smaller --size, fewer images, or THOMAS_MEMORY_BUDGET=BYTES)")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("decoding images needs Pillow: pip install pillow") from None
    return Image


@contextmanager
def bomb_guard():
    """Within: Pillow refuses images above MAX_IMAGE_PIXELS (its DecompressionBombWarning is an error)."""
    Image = _pil()
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS          # NOTE: Pillow warns above it (an error here), errors at 2x
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield Image
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ============================================================================ pixels
def to_gray(x: np.ndarray) -> np.ndarray:
    """(n,H,W,3) uint8 -> (n,H,W,1): Pillow's convert("L") (ITU-R 601-2 luma, same rounding), by chunks."""
    out = np.empty(x.shape[:3] + (1,), np.uint8)
    for lo in range(0, len(x), 1024):
        a = x[lo:lo + 1024].astype(np.uint32)
        out[lo:lo + 1024, ..., 0] = (a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16
    return out


def convert(x: np.ndarray, hw: tuple[int, int], channels: int, on_image: OnImage | None = None) -> np.ndarray:
    """x (n,h,w[,c]) uint8 -> (n,H,W,channels): channels first, then a bilinear resize when (h,w) != hw."""
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, c = x.shape
    if (h, w) == tuple(hw):
        out = x if c == channels else np.repeat(x, 3, axis=3) if channels == 3 else to_gray(x)
        if on_image:
            on_image(n)
        return np.ascontiguousarray(out)
    Image = _pil()
    out = np.empty((n,) + tuple(hw) + (channels,), np.uint8)
    mode = "RGB" if channels == 3 else "L"
    for i in range(n):
        im = Image.fromarray(x[i, ..., 0] if c == 1 else x[i]).convert(mode)
        out[i] = np.asarray(im.resize((hw[1], hw[0]), Image.BILINEAR), np.uint8).reshape(out.shape[1:])
        if on_image:
            on_image(1)
    return out


# ============================================================================ ImageFolder
def folder_splits(root: Path) -> dict[str, Path] | None:
    """{"train": dir, "val": dir[, "test": dir]} of a split ImageFolder, None for a plain one."""
    dirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" not in dirs or set(dirs) - {"train", "test", *VAL_DIRS}:
        return None
    if not any(p.is_dir() for p in dirs["train"].iterdir()):
        return None                       # classes named train/... holding images: a plain ImageFolder
    vals = [d for d in VAL_DIRS if d in dirs]
    if len(vals) > 1:
        raise DataError(f"{root}: holds both {vals[0]}/ and {vals[1]}/; keep one validation folder")
    out = {"train": dirs["train"]}
    if vals:
        out["val"] = dirs[vals[0]]
    if "test" in dirs:
        out["test"] = dirs["test"]
    return out


def class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(file, label)]) of a plain ImageFolder; DataError when it is not one."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = class_dirs(root) if classes is None else classes
    if not classes:
        raise DataError(f"{root}: not an ImageFolder (expected one subfolder per class, e.g. {root}/cat/1.jpg)")
    files = []
    for label, c in enumerate(classes):
        files += [(p, label) for p in sorted((root / c).rglob("*"))
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no images (jpg/png) in its class folders {', '.join(classes[:5])}")
    return classes, files


def folder_files(root: Path) -> tuple[list[str], dict[str, list], str]:
    """(classes, {split: [(file, label)]}, layout) of a plain or split ImageFolder."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    dirs = folder_splits(root)
    if dirs is None:
        classes, files = image_files(root)
        return classes, {"all": files}, "ImageFolder"
    classes = class_dirs(dirs["train"])
    for split, d in dirs.items():
        have = class_dirs(d)
        if have != classes:
            missing, extra = sorted(set(classes) - set(have)), sorted(set(have) - set(classes))
            why = "; ".join(([f"lacks {', '.join(missing[:3])}"] if missing else [])
                            + ([f"has {', '.join(extra[:3])} that train/ lacks"] if extra else []))
            raise DataError(f"{d}: its class folders differ from {dirs['train']}'s ({why})")
    files = {split: image_files(d, classes)[1] for split, d in dirs.items()}
    return classes, files, " ".join(f"{d.name}/" for d in dirs.values())


def _decode_files(root: Path, files: list, hw: list, native: bool, channels: int, bad: list,
                  on_image: OnImage | None):
    """Decode [(file, label)] into (x (n,H,W,C) or None when none could be read, y (n,)). hw = [size,
    file it came from]: size None is taken from the first image read; native: every image must already
    have it (else resized). Unreadable images are appended to bad as (relative path, why)."""
    x, labels = None, []
    with bomb_guard() as Image:
        for path, label in files:
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB" if channels == 3 else "L")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                px = re.search(r"\((\d+) pixels\)", str(e))
                raise DataError(f"{path}: {int(px.group(1)) if px else 'too many':,} pixels, above the limit of "
                                f"{MAX_IMAGE_PIXELS:,}: refused as a possible decompression bomb (remove or shrink "
                                f"it)") from None
            except (OSError, ValueError, SyntaxError) as e:
                # NOTE: Pillow reports truncated/corrupt files as OSError, some broken PNGs as SyntaxError.
                bad.append((path.relative_to(root).as_posix(), f"{type(e).__name__}: {e}"))
                if on_image:
                    on_image(1)
                continue
            if hw[0] is None:
                hw[:] = [(im.size[1], im.size[0]), path.relative_to(root).as_posix()]
            if x is None:
                check_budget(len(files) * hw[0][0] * hw[0][1] * channels, f"decoding {root}")
                x = np.empty((len(files),) + tuple(hw[0]) + (channels,), np.uint8)
            if im.size != (hw[0][1], hw[0][0]):
                if native:
                    raise DataError(f"{root}: images differ in size ({hw[1]} is "
                                    f"{show_size(hw[0])}, {path.relative_to(root).as_posix()} is "
                                    f"{im.size[1]}x{im.size[0]}); give --size HxW")
                im = im.resize((hw[0][1], hw[0][0]), Image.BILINEAR)
            x[len(labels)] = np.asarray(im, np.uint8).reshape(x.shape[1:])
            labels.append(label)
            if on_image:
                on_image(1)
    return (None if x is None else x[:len(labels)]), np.asarray(labels, np.int64)


def load_image_folder(root: Path, size: tuple | None, channels: int = 3, on_image: OnImage | None = None) -> Decoded:
    classes, files, layout = folder_files(root)
    hw, bad, parts = [size, None], [], {}
    for split, entries in files.items():
        x, y = _decode_files(root, entries, hw, size is None, channels, bad, on_image)
        if x is None:
            first = next((why for _, why in bad), "no images")
            raise DataError(f"{root}: none of the {len(entries)} images of {split if split != 'all' else 'it'} "
                            f"could be read (first: {first})")
        parts[split] = (x, y)
    if "train" in parts:
        check_subset(parts, classes, str(root))
    return Decoded(parts, classes, layout, bad, sum(len(f) for f in files.values()))


# ============================================================================ .npz
def npz_members(path: Path) -> dict[str, tuple]:
    """{key: (shape, dtype, nbytes)} of every .npy member, from its header alone (limits.npy_header):
    DataError for an object (pickled) array or a header whose shape x itemsize is not the stored size."""
    members = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                with zf.open(info) as f:
                    shape, dtype, declared = npy_header(f, f"{path}: '{key}'", DataError)
                    stored = info.file_size - f.tell()
                if declared != stored:
                    raise DataError(f"{path}: '{key}' declares {dtype} {tuple(shape)} ({declared:,} bytes) but "
                                    f"holds {max(0, stored):,} bytes (truncated or forged)")
                members[key] = (tuple(shape), dtype, declared)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{path}: not a readable .npz ({str(e).splitlines()[0][:160] if str(e) else e!r})") from None
    return members


def npz_keys(path: Path, members: dict) -> tuple[dict[str, tuple[str, str]], str]:
    """{split: (x key, y key)} and the layout ("x, y" or "x_train, y_train, ...")."""
    keys = set(members)
    single = keys & {"images", "x", "labels", "y"}
    split = keys & {f"{a}_{s}" for a in "xy" for s in ("train", "val", "test")}
    if single and split:
        raise DataError(f"{path}: mixes two conventions ({', '.join(sorted(single))} and "
                        f"{', '.join(sorted(split))}): use x, y or x_train, y_train, x_val, y_val[, x_test, y_test]")
    if split:
        pairs = {}
        for s in ("train", "val", "test"):
            have = [k for k in (f"x_{s}", f"y_{s}") if k in keys]
            if len(have) == 1:
                raise DataError(f"{path}: has {have[0]} without its pair "
                                f"{'y' if have[0][0] == 'x' else 'x'}_{s}")
            if have:
                pairs[s] = (f"x_{s}", f"y_{s}")
        if "train" not in pairs:
            raise DataError(f"{path}: has {', '.join(sorted(split))} but no x_train, y_train")
        return pairs, ", ".join(k for p in pairs.values() for k in p)
    xk = next((k for k in ("images", "x") if k in keys), None)
    yk = next((k for k in ("labels", "y") if k in keys), None)
    if xk is None or yk is None:
        raise DataError(f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'), or x_train, y_train, "
                        f"x_val, y_val; has {sorted(keys)}")
    return {"all": (xk, yk)}, f"{xk}, {yk}"


def _check_headers(path: Path, members: dict, pairs: dict) -> None:
    for xk, yk in pairs.values():
        (xs, xd, _), (ys, yd, _) = members[xk], members[yk]
        if xd != np.uint8:
            raise DataError(f"{path}: '{xk}' must be uint8 pixels, got {xd}")
        if not (len(xs) == 3 or (len(xs) == 4 and xs[3] in (1, 3))):
            raise DataError(f"{path}: '{xk}' must be (N,H,W), (N,H,W,1) or (N,H,W,3), got {xs}")
        if len(ys) != 1 or ys[0] != xs[0] or not np.issubdtype(yd, np.integer):
            raise DataError(f"{path}: '{yk}' must be {xs[0]} integer labels, got {yd} {ys}")


def _npz_classes(path: Path, z, members: dict, labels: dict) -> list[str]:
    """The class names: the `classes` array, else 0..max label (at most MAX_CLASSES). Every label is
    range-checked here, before anything is counted."""
    if "classes" in members:
        shape, dtype, _ = members["classes"]
        if len(shape) != 1 or not 1 <= shape[0] <= MAX_CLASSES or dtype.kind not in "USiu":
            raise DataError(f"{path}: 'classes' must be 1 to {MAX_CLASSES} names, got {dtype} {shape}")
        raw = z["classes"]
        classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in raw.tolist()]
        if len(set(classes)) != len(classes):
            dup = next(c for c in classes if classes.count(c) > 1)
            raise DataError(f"{path}: 'classes' names {dup!r} twice")
        for yk, y in labels.items():
            check_labels(y, len(classes), f"{path}: '{yk}'")
        return classes
    for yk, y in labels.items():
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: '{yk}' holds label {int(y.min())}: labels must be >= 0")
        if len(y) and y.max() >= MAX_CLASSES:
            raise DataError(f"{path}: '{yk}' holds label {int(y.max())}: without a 'classes' array labels "
                            f"must be below {MAX_CLASSES}")
    k = max((int(y.max()) + 1 for y in labels.values() if len(y)), default=0)
    return [str(i) for i in range(k)]


def load_npz(path: Path, size: tuple | None, channels: int = 3, on_image: OnImage | None = None) -> Decoded:
    members = npz_members(path)
    pairs, layout = npz_keys(path, members)
    _check_headers(path, members, pairs)
    native = {members[xk][0][1:3] for xk, _ in pairs.values()}
    if size is None and len(native) > 1:
        raise DataError(f"{path}: its splits hold images of different sizes "
                        f"({', '.join(sorted(show_size(s) for s in native))}); give --size HxW")
    hw = size or native.pop()
    n = sum(members[xk][0][0] for xk, _ in pairs.values())
    check_budget(sum(members[k][2] for p in pairs.values() for k in p) + n * hw[0] * hw[1] * channels,
                 f"decoding {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = {yk: z[yk] for _, yk in pairs.values()}
            classes = _npz_classes(path, z, members, labels)
            parts = {s: (None, labels[yk].astype(np.int64)) for s, (_, yk) in pairs.items()}
            if "train" in parts:
                check_subset(parts, classes, str(path))
            for s, (xk, yk) in pairs.items():
                parts[s] = (convert(z[xk], hw, channels, on_image), parts[s][1])
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz ({str(e).splitlines()[0][:160]})") from None
    return Decoded(parts, classes, layout, [], n)


# ============================================================================ entry points
def load(src: Path, size: tuple | None, channels: int = 3, on_image: OnImage | None = None) -> Decoded:
    """An ImageFolder (plain or train/ val/ [test/]) or an .npz -> Decoded (see the module doc)."""
    if channels not in (1, 3):
        raise DataError(f"--channels {channels}: give 1 (grayscale) or 3 (RGB)")
    if not src.exists():
        raise DataError(f"{src}: no such folder or .npz file")
    if src.suffix.lower() == ".npz":
        return load_npz(src, size, channels, on_image)
    if not src.is_dir():
        raise DataError(f"{src}: neither an ImageFolder nor an .npz file")
    return load_image_folder(src, size, channels, on_image)


def count_inputs(src: Path) -> int:
    """How many images a push will decode (for the progress bar); 0 when unknown."""
    try:
        if src.suffix.lower() == ".npz":
            members = npz_members(src)
            return sum(members[xk][0][0] for xk, _ in npz_keys(src, members)[0].values())
        return sum(len(f) for f in folder_files(src)[1].values())
    except (DataError, OSError):
        return 0
