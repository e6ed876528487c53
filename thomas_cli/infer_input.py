"""Host-side decoding of `thomas infer` inputs into one preprocessed float32 batch.

    names, x = load_inputs("photos/", graph.inputs[0])     # x (N, C, H, W) float32

Accepted:
  FILE.npy   float arrays are taken as already preprocessed model input, (C,H,W) or (N,C,H,W);
             uint8 arrays are images, (H,W,C) or (N,H,W,C), and get the model's preprocessing
  IMAGE      anything Pillow reads: converted to RGB (L for 1-channel models), resized to the
             model's H x W (bilinear), then x = (pixel * scale - mean) / std
  DIR        every image in the folder (sorted by name; other files are skipped)
A model without a preprocess spec gets x = pixel / 255.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device_agent.errors import InputError
from device_agent.model.graph import TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


def _preprocess(u8: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """u8 (N,H,W,C) -> x (N,C,H,W) float32 = (u8 * scale - mean) / std"""
    pre = spec.preprocess or {"scale": 1.0 / 255.0}
    c = u8.shape[-1]
    x = u8.astype(np.float32) * np.float32(pre.get("scale", 1.0))
    mean = np.asarray(pre.get("mean") or [0.0] * c, np.float32)
    std = np.asarray(pre.get("std") or [1.0] * c, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _image_dims(spec: TensorSpec) -> tuple[int, int, int]:
    if len(spec.shape) != 4:
        raise InputError(f"model input '{spec.name}' has shape {list(spec.shape)}: images need an NCHW input")
    _, c, h, w = spec.shape
    if c not in (1, 3):
        raise InputError(f"model input '{spec.name}' has {c} channels: images give 1 (gray) or 3 (RGB)")
    return c, h, w


def load_image(path: Path, spec: TensorSpec) -> np.ndarray:
    """One image file -> u8 (H, W, C) at the model's size."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = _image_dims(spec)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if c == 3 else "L")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as e:   # truncated / corrupt image data
        raise InputError(f"{path}: cannot decode the image ({e})") from None
    return a.reshape(h, w, c)


def _load_npy(path: Path, spec: TensorSpec) -> tuple[list[str], np.ndarray]:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: not a numeric .npy array ({e})") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read the .npy file ({e})") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{path}: holds an archive, not one array; save the batch with np.save")
    want = tuple(spec.shape[1:])
    shown = "x".join("N" if d is None else str(d) for d in spec.shape)
    if a.dtype == np.uint8:
        c, h, w = _image_dims(spec)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[1:] != (h, w, c):
            raise InputError(f"{path}: uint8 images must be (N,{h},{w},{c}) or ({h},{w},{c}) for this "
                             f"model, got {a.shape}")
        x = _preprocess(a, spec)
    elif a.dtype.kind == "f":
        if a.ndim == len(want):
            a = a[None]
        if a.ndim != len(spec.shape) or tuple(a.shape[1:]) != want or a.shape[0] < 1:
            raise InputError(f"{path}: array of shape {a.shape} does not fit the model input {shown} "
                             f"(float arrays are preprocessed input)")
        if not np.all(np.isfinite(a)):
            raise InputError(f"{path}: the array holds NaN or Inf")
        x = a.astype(np.float32)
    else:
        raise InputError(f"{path}: dtype {a.dtype}; give float32 (preprocessed) or uint8 (images)")
    stem = path.name
    return ([stem] if x.shape[0] == 1 else [f"{stem}[{i}]" for i in range(x.shape[0])]), x


def load_inputs(path, spec: TensorSpec) -> tuple[list[str], np.ndarray]:
    """--input PATH -> (a name per sample, x (N, *input dims) float32)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{p}: no images in the folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        u8 = np.stack([load_image(f, spec) for f in files])
        return [f.name for f in files], _preprocess(u8, spec)
    if p.suffix.lower() == ".npy":
        return _load_npy(p, spec)
    return [p.name], _preprocess(load_image(p, spec)[None], spec)
