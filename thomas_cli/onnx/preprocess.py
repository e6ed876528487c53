"""The input preprocessing `thomas import` records in model.json (torchvision Normalize convention).

    pre = build_preprocess(None, "0.5", "0.5", None, channels=3)
    # {"scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

x = (pixel * scale - mean) / std per channel, pixel in 0..255. Presets: imagenet (x/255, ImageNet
mean/std; 3 channels), unit (x/255), signed ((x/255 - 0.5) / 0.5). One mean/std value means every
channel. `--scale` is a float or a fraction such as 1/255 (the default when mean/std are given).
The host (thomas_cli.infer_input._preprocess) and the device (device_agent.training.data.normalize) apply it.
"""
from __future__ import annotations

import math

from device_agent.errors import OnnxError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PRESETS = ("imagenet", "unit", "signed")


def parse_scale(text: str) -> float:
    """'1/255' or '0.00392' -> a positive finite float; OnnxError (one line) otherwise."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            v = float(num) / float(den)
        else:
            v = float(s)
    except (ValueError, ZeroDivisionError):
        raise OnnxError(f"--scale {text!r}: give a number or a fraction, e.g. 1/255") from None
    if not (math.isfinite(v) and v > 0):
        raise OnnxError(f"--scale {text!r}: must be a positive finite number")
    return v


def parse_values(text: str, flag: str) -> list[float]:
    """'0.485,0.456,0.406' -> [0.485, 0.456, 0.406]; OnnxError naming the flag on junk."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise OnnxError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.5,0.5,0.5") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise OnnxError(f"{flag} {text!r}: give finite numbers, e.g. 0.5,0.5,0.5")
    return vals


def _per_channel(vals: list[float], flag: str, text: str, channels: int) -> list[float]:
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise OnnxError(f"{flag} {text!r}: {len(vals)} values for a model input of {channels} channels "
                        f"(give 1 or {channels})")
    return vals


def build_preprocess(preset: str | None, mean: str | None, std: str | None, scale: str | None,
                     shape: tuple | None) -> dict | None:
    """The model.json preprocess dict for the import options, checked against the input shape
    (shape None: only check the values themselves, before anything is imported)."""
    if preset is not None and (mean is not None or std is not None or scale is not None):
        raise OnnxError("--preprocess is a preset: give it, or --mean/--std/--scale, not both")
    if preset is None and mean is None and std is None and scale is None:
        return None
    if preset is not None and preset not in PRESETS:
        raise OnnxError(f"--preprocess {preset!r}: known: {', '.join(PRESETS)}")
    if shape is None:
        if scale is not None:
            parse_scale(scale)
        if mean is not None:
            parse_values(mean, "--mean")
        if std is not None and any(v <= 0 for v in parse_values(std, "--std")):
            raise OnnxError(f"--std {std!r}: every std must be > 0")
        return None
    if preset == "unit" or (preset is None and mean is None and std is None):
        return {"scale": 1.0 / 255.0 if scale is None else parse_scale(scale)}
    if len(shape) != 4:
        dims = "x".join("N" if d is None else str(d) for d in shape)
        raise OnnxError(f"per-channel mean/std need an image input N,C,H,W; this model's input is {dims}")
    c = int(shape[1])
    if preset == "imagenet":
        if c != 3:
            raise OnnxError(f"--preprocess imagenet needs a 3-channel input; this model has {c} channel(s)")
        return {"scale": 1.0 / 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if preset == "signed":
        return {"scale": 1.0 / 255.0, "mean": [0.5] * c, "std": [0.5] * c}
    m = [0.0] * c if mean is None else _per_channel(parse_values(mean, "--mean"), "--mean", mean, c)
    s = [1.0] * c if std is None else _per_channel(parse_values(std, "--std"), "--std", std, c)
    if any(v <= 0 for v in s):
        raise OnnxError(f"--std {std!r}: every std must be > 0")
    return {"scale": 1.0 / 255.0 if scale is None else parse_scale(scale), "mean": m, "std": s}


def describe(pre: dict | None) -> str:
    """One line for `thomas inspect`: what a pixel 0..255 becomes."""
    if pre is None:
        return "none recorded (infer uses pixel / 255)"
    sc = pre.get("scale", 1.0)
    text = f"x = (pixel * {sc:.6g}" if abs(sc * 255 - 1) > 1e-12 else "x = (pixel / 255"
    mean, std = pre.get("mean"), pre.get("std")
    text += f" - {_vec(mean)})" if mean else ")"
    return text + (f" / {_vec(std)}" if std else "")


def _vec(v: list) -> str:
    return "[" + ", ".join(f"{x:.6g}" for x in v) + "]"
