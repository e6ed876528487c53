"""Converters of shape ops on activations: Identity, Cast, Flatten, Reshape, Squeeze, Unsqueeze,
Concat, Pad."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from device_agent.graph import ParamSpec
from device_agent.ops import OpError

from .common import Unsupported, f32, onnx_attrs, reshape_attr


def op_Identity(imp, n):
    imp.alias(n, n.output[0], imp.act(n))


def op_Cast(imp, n):
    x = imp.act(n)
    if onnx_attrs(n).get("to") != TensorProto.FLOAT:
        raise Unsupported("Cast of an activation to a type other than float32")
    imp.alias(n, n.output[0], x)


def op_Flatten(imp, n):
    x = imp.act(n)
    imp.emit("Flatten", imp.node_name(n), [x], {"axis": int(onnx_attrs(n).get("axis", 1))}, n.output[0])


def reshape_to(imp, n, x: str, out_shape: tuple):
    imp.emit("Reshape", imp.node_name(n), [x], {"shape": reshape_attr(imp.shape[x], out_shape)},
               n.output[0])


def op_Reshape(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    a = onnx_attrs(n)
    if len(n.input) > 1:
        target = [int(d) for d in np.asarray(imp.cval(n, 1, "shape")).reshape(-1)]
    else:
        target = [int(d) for d in a.get("shape", [])]
    if a.get("allowzero", 0) and 0 in target:
        raise Unsupported("Reshape with allowzero=1 and a zero dimension")
    out = []
    for i, d in enumerate(target):
        if d == 0:
            if i >= len(xs):
                raise OpError("shape", f"Reshape target {target} copies dimension {i} of {xs}")
            d = xs[i]
        out.append(d)
    total = int(np.prod(xs))
    if out.count(-1) == 1:
        rest = int(np.prod([d for d in out if d != -1]))
        if rest == 0 or total % rest:
            raise OpError("shape", f"cannot reshape {xs} to {target}")
        out[out.index(-1)] = total // rest
    if int(np.prod(out)) != total or any(d < 0 for d in out):
        raise OpError("shape", f"cannot reshape {xs} ({total} elements) to {target}")
    reshape_to(imp, n, x, tuple(out))


def axes_of(imp, n) -> list[int] | None:
    """Squeeze/Unsqueeze axes: the attribute (opset < 13) or the second input; None if absent."""
    a = onnx_attrs(n)
    if "axes" in a:
        return [int(d) for d in a["axes"]]
    if len(n.input) > 1 and n.input[1]:
        return [int(d) for d in np.asarray(imp.cval(n, 1, "axes")).reshape(-1)]
    return None


def op_Squeeze(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    axes = axes_of(imp, n)
    axes = [i for i, d in enumerate(xs) if d == 1] if axes is None else [d % len(xs) for d in axes]
    if any(xs[i] != 1 for i in axes):
        raise OpError("axes", f"Squeeze axes {axes} of shape {xs} are not all 1")
    reshape_to(imp, n, x, tuple(d for i, d in enumerate(xs) if i not in axes))


def op_Unsqueeze(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    axes = axes_of(imp, n)
    if axes is None:
        raise Unsupported("Unsqueeze without axes")
    r = len(xs) + len(axes)
    out = list(xs)
    for ax in sorted(d % r for d in axes):
        out.insert(ax, 1)
    reshape_to(imp, n, x, tuple(out))


def op_Concat(imp, n):
    name = imp.node_name(n)
    names = []
    for k, t in enumerate(n.input):
        if t in imp.tensor:
            names.append(imp.tensor[t])
            continue
        arr = np.array(imp.const[t], np.float32, copy=True)      # a constant piece: a param
        pname = imp.unique(f"{name}.input{k}")
        imp.params[pname] = ParamSpec(tuple(arr.shape), "float32", name, False)
        imp.weights[pname] = arr
        imp.shape[pname] = tuple(arr.shape)
        names.append(pname)
    imp.emit("Concat", name, names, {"axis": int(onnx_attrs(n).get("axis", 1))}, n.output[0])


def op_Pad(imp, n):
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    a = onnx_attrs(n)
    mode = a.get("mode", "constant")
    if len(n.input) > 1 or imp.opset >= 11:        # opset 11+: pads (and value, axes) are inputs
        pads = [int(p) for p in np.asarray(imp.cval(n, 1, "pads")).reshape(-1)]
        v = imp.cval(n, 2, "constant_value", required=False)
        value = 0.0 if v is None else float(np.asarray(v).reshape(()))
        axes = imp.cval(n, 3, "axes", required=False)
        if axes is not None:
            axes = [int(d) + r if int(d) < 0 else int(d) for d in np.asarray(axes).reshape(-1)]
            full = [0] * (2 * r)
            for j, ax in enumerate(axes):
                full[ax], full[r + ax] = pads[j], pads[len(axes) + j]
            pads = full
    else:                                           # opset 2-10: attributes
        pads = [int(p) for p in a.get("pads", a.get("paddings", []))]
        value = float(a.get("value", 0.0))
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"Pad with mode '{mode}'")
    if len(pads) != 2 * r:
        raise OpError("pads", f"Pad needs {2 * r} pads for input shape {xs}, got {pads}")
    if min(pads) < 0:
        raise Unsupported("Pad with negative pads (cropping)")
    if not any(pads):
        imp.alias(n, n.output[0], x)
        return
    imp.emit("Pad", imp.node_name(n), [x], {"pads": pads, "mode": mode, "value": f32(value)},
               n.output[0])


CONVERTERS = {
    "Identity": op_Identity,
    "Cast": op_Cast,
    "Flatten": op_Flatten,
    "Reshape": op_Reshape,
    "Squeeze": op_Squeeze,
    "Unsqueeze": op_Unsqueeze,
    "Concat": op_Concat,
    "Pad": op_Pad,
}
