"""Converters of pooling, reductions and resizing: MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool, ReduceMean, ReduceMax, Resize and Upsample (mode nearest). One function per ONNX op,
`op_X(imp, n)`, listed in CONVERTERS."""
from __future__ import annotations

import numpy as np

from .common import Malformed, Unsupported, attr_int, attr_ints, attr_str, auto_pads, onnx_attrs

# ONNX Resize coordinate_transformation_mode / nearest_mode values the ResizeNearest op implements
RESIZE_COORDS = ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn")
RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


def pool_attrs(imp, n, xs) -> dict:
    """kernel, stride, pads (auto_pad resolved), ceil_mode and, when not 1, dilation."""
    a = onnx_attrs(n)
    if len(xs) != 4:
        raise Unsupported(f"{n.op_type} on rank-{len(xs)} input (only 2-D images)")
    k = attr_ints(a, "kernel_shape", length=2)
    dil = attr_ints(a, "dilations", [1, 1], length=2)
    stride = attr_ints(a, "strides", [1, 1], length=2)
    pads = auto_pads(attr_str(a, "auto_pad", "NOTSET"), xs[2:], k, stride, dil)
    if pads is None:
        pads = attr_ints(a, "pads", [0, 0, 0, 0], length=4)
    if min(pads) < 0:
        raise Unsupported(f"{n.op_type} with negative pads")
    ek = [(kk - 1) * d + 1 for kk, d in zip(k, dil)]
    if max(pads[0], pads[2]) >= ek[0] or max(pads[1], pads[3]) >= ek[1]:
        raise Unsupported(f"{n.op_type} with pads as large as the kernel")
    out = {"kernel": k, "stride": stride, "pads": pads, "ceil_mode": bool(attr_int(a, "ceil_mode", 0))}
    if dil != [1, 1]:
        out["dilation"] = dil
    return out


def op_MaxPool(imp, n):
    x = imp.act(n)
    imp.no_extra_outputs(n)
    if attr_int(onnx_attrs(n), "storage_order", 0) not in (0, 1):
        raise Malformed("attribute 'storage_order' must be 0 or 1")
    imp.emit("MaxPool", imp.node_name(n), [x], pool_attrs(imp, n, imp.shape[x]), n.output[0])


def op_AveragePool(imp, n):
    x = imp.act(n)
    attrs = pool_attrs(imp, n, imp.shape[x])
    attrs["count_include_pad"] = bool(attr_int(onnx_attrs(n), "count_include_pad", 0))
    imp.emit("AveragePool", imp.node_name(n), [x], attrs, n.output[0])


def _global(imp, n, x, op: str, onnx_out):
    """Global average (GlobalAveragePool) or max (MaxPool over the whole map) of x (N,C,H,W)."""
    xs = imp.shape[x]
    if len(xs) != 4:
        raise Unsupported(f"{n.op_type} on a non-image input")
    if op == "avg":
        return imp.emit("GlobalAveragePool", imp.node_name(n), [x], {}, onnx_out)
    attrs = {"kernel": list(xs[2:]), "stride": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": False}
    return imp.emit("MaxPool", imp.node_name(n), [x], attrs, onnx_out)


def op_GlobalAveragePool(imp, n):
    _global(imp, n, imp.act(n), "avg", n.output[0])


def op_GlobalMaxPool(imp, n):
    _global(imp, n, imp.act(n), "max", n.output[0])


def _reduce(imp, n, op: str):
    """ReduceMean/ReduceMax: over H and W of an image -> the global pool (exact), + a Reshape when
    keepdims=0; over other axes (never the batch) -> the ReduceMean/ReduceMax op."""
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    a = onnx_attrs(n)
    keep = bool(attr_int(a, "keepdims", 1))
    if "axes" in a:
        axes = attr_ints(a, "axes")
    else:
        c = imp.cval(n, 1, "axes", required=False)
        axes = None if c is None else [int(d) for d in np.asarray(c).reshape(-1)]
    if not axes:
        if attr_int(a, "noop_with_empty_axes", 0):
            imp.alias(n, n.output[0], x)
            return
        axes = list(range(r))
    if any(not -r <= d < r for d in axes):
        raise Malformed(f"axes {axes} out of range for an input of rank {r}")
    axes = sorted({d % r for d in axes})
    if 0 in axes:
        raise Unsupported(f"{n.op_type} over the batch axis")
    if r == 4 and axes == [2, 3]:
        y = _global(imp, n, x, "avg" if op == "ReduceMean" else "max", n.output[0] if keep else None)
        if not keep:
            imp.emit("Reshape", imp.node_name(n, ".squeeze"), [y], {"shape": [0, xs[1]]}, n.output[0])
        return
    imp.emit(op, imp.node_name(n), [x], {"axes": axes, "keepdims": keep}, n.output[0])


def op_ReduceMean(imp, n):
    _reduce(imp, n, "ReduceMean")


def op_ReduceMax(imp, n):
    _reduce(imp, n, "ReduceMax")


# ------------------------------------------------------------------ Resize / Upsample (nearest)
def _resize_target(imp, n, xs, scales, sizes, axes) -> tuple[list[int], list | None]:
    """(output H,W, the H,W scales or None when sizes gave the output) from Resize's inputs."""
    r = len(xs)
    axes = list(range(r)) if axes is None else [d % r for d in axes]
    if sizes is not None and np.size(sizes):
        full = list(xs)
        for ax, s in zip(axes, np.asarray(sizes).reshape(-1)):
            full[ax] = int(s)
        if len(np.asarray(sizes).reshape(-1)) != len(axes) or full[1] != xs[1] or full[0] != xs[0]:
            raise Unsupported("Resize that changes the batch or channel axis")
        return full[2:], None
    if scales is None or not np.size(scales):
        raise Malformed("neither scales nor sizes is given")
    full = [1.0] * r
    sc = np.asarray(scales, np.float32).reshape(-1)
    if len(sc) != len(axes) or not np.all(sc > 0):
        raise Malformed(f"scales {sc.tolist()} do not give one positive scale per axis")
    for ax, s in zip(axes, sc):
        full[ax] = float(s)
    if full[0] != 1.0 or full[1] != 1.0:
        raise Unsupported("Resize that scales the batch or channel axis")
    size = [int(np.float32(d) * np.float32(s)) for d, s in zip(xs[2:], full[2:])]
    if min(size) < 1:
        raise Malformed(f"scales {full} make an empty output from {list(xs)}")
    return size, full[2:]


def _emit_resize(imp, n, x, size, scales, coord: str, nearest: str):
    attrs = {"size": size, "coord": coord, "nearest": nearest}
    if scales is not None:
        attrs["scale_h"], attrs["scale_w"] = (float(np.float32(s)) for s in scales)
    imp.emit("ResizeNearest", imp.node_name(n), [x], attrs, n.output[0])


def _legacy_nearest(scales) -> str:
    """Upsample and Resize-10 in onnxruntime: asymmetric, floor when enlarging, ceil when shrinking."""
    up = {s > 1.0 for s in scales if s != 1.0}
    if len(up) > 1:
        raise Unsupported("Resize (opset 10) that enlarges one axis and shrinks the other")
    return "ceil" if up == {False} else "floor"


def _image_act(imp, n) -> tuple[str, tuple]:
    x = imp.act(n)
    xs = imp.shape[x]
    a = onnx_attrs(n)
    if len(xs) != 4:
        raise Unsupported(f"{n.op_type} on rank-{len(xs)} input (only 2-D images)")
    mode = attr_str(a, "mode", "nearest")
    if mode != "nearest":
        raise Unsupported(f"{n.op_type} mode={mode}")
    return x, xs


def op_Resize(imp, n):
    x, xs = _image_act(imp, n)
    a = onnx_attrs(n)
    if imp.opset < 11:
        size, scales = _resize_target(imp, n, xs, imp.cval(n, 1, "scales"), None, None)
        _emit_resize(imp, n, x, size, scales, "asymmetric", _legacy_nearest(scales))
        return
    coord = attr_str(a, "coordinate_transformation_mode", "half_pixel")
    nearest = attr_str(a, "nearest_mode", "round_prefer_floor")
    if coord not in RESIZE_COORDS:
        raise Unsupported(f"Resize with coordinate_transformation_mode={coord}")
    if nearest not in RESIZE_NEAREST:
        raise Unsupported(f"Resize with nearest_mode={nearest}")
    if attr_str(a, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported(f"Resize with keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']}")
    scales = imp.cval(n, 2, "scales", required=False)
    sizes = imp.cval(n, 3, "sizes", required=False)
    axes = attr_ints(a, "axes") if "axes" in a else None
    size, sc = _resize_target(imp, n, xs, scales, sizes, axes)
    _emit_resize(imp, n, x, size, sc, coord, nearest)


def op_Upsample(imp, n):
    """Upsample (opsets 7-9): scales as attribute (7, 8) or input (9); onnxruntime's nearest."""
    x, xs = _image_act(imp, n)
    a = onnx_attrs(n)
    raw = a["scales"] if "scales" in a else imp.cval(n, 1, "scales")
    size, scales = _resize_target(imp, n, xs, np.asarray(raw, np.float32), None, None)
    _emit_resize(imp, n, x, size, scales, "asymmetric", _legacy_nearest(scales))


CONVERTERS = {
    "MaxPool": op_MaxPool,
    "AveragePool": op_AveragePool,
    "GlobalAveragePool": op_GlobalAveragePool,
    "GlobalMaxPool": op_GlobalMaxPool,
    "ReduceMean": op_ReduceMean,
    "ReduceMax": op_ReduceMax,
    "Resize": op_Resize,
    "Upsample": op_Upsample,
}
