"""Converters of shape ops on activations: Identity, Cast, Flatten, Reshape, Squeeze, Unsqueeze,
Concat, Pad, Transpose, Slice and Split (one Slice node per used piece). One function per ONNX op,
`op_X(imp, n)`, listed in CONVERTERS."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from device_agent.model.graph import ParamSpec
from device_agent.ops import OpError

from .common import Malformed, Unsupported, attr_int, attr_ints, attr_str, f32, onnx_attrs, reshape_attr

OPEN_END = 2 ** 31 - 1      # an end at least this large means "to the end" (torch writes INT64_MAX)


def op_Identity(imp, n):
    imp.alias(n, n.output[0], imp.act(n))


def op_Cast(imp, n):
    x = imp.act(n)
    if onnx_attrs(n).get("to") != TensorProto.FLOAT:
        raise Unsupported("Cast of an activation to a type other than float32")
    imp.alias(n, n.output[0], x)


def op_Flatten(imp, n):
    x = imp.act(n)
    r = len(imp.shape[x])
    axis = attr_int(onnx_attrs(n), "axis", 1)
    if not -r <= axis <= r:
        raise Malformed(f"axis {axis} is out of range for an input of rank {r}")
    axis = axis + r if axis < 0 else axis
    if axis == 0:
        raise Unsupported("Flatten with axis=0 (it merges the batch into one row)")
    imp.emit("Flatten", imp.node_name(n), [x], {"axis": axis}, n.output[0])


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


def _pad_args(imp, n, r: int) -> tuple[list[int], float]:
    """(pads of all 2r begin/end values, constant value) from inputs (opset 11+) or attributes."""
    a = onnx_attrs(n)
    if len(n.input) > 1 or imp.opset >= 11:        # opset 11+: pads (and value, axes) are inputs
        pads = [int(p) for p in np.asarray(imp.cval(n, 1, "pads")).reshape(-1)]
        v = imp.cval(n, 2, "constant_value", required=False)
        value = 0.0 if v is None or np.size(v) == 0 else float(np.asarray(v).reshape(-1)[0])
        axes = imp.cval(n, 3, "axes", required=False)
        if axes is not None:
            axes = [int(d) % r for d in np.asarray(axes).reshape(-1)]
            if len(pads) != 2 * len(axes):
                raise Malformed(f"{len(pads)} pads for {len(axes)} axes")
            full = [0] * (2 * r)
            for j, ax in enumerate(axes):
                full[ax], full[r + ax] = pads[j], pads[len(axes) + j]
            pads = full
    else:                                           # opset 2-10: attributes
        pads = attr_ints(a, "pads" if "pads" in a else "paddings")
        value = float(a.get("value", 0.0))
    return pads, value


def op_Pad(imp, n):
    """Pad; negative pads (cropping, constant mode) become Slice nodes first."""
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    mode = attr_str(onnx_attrs(n), "mode", "constant")
    pads, value = _pad_args(imp, n, r)
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"Pad with mode '{mode}'")
    if len(pads) != 2 * r:
        raise OpError("pads", f"Pad needs {2 * r} pads for input shape {xs}, got {pads}")
    if min(pads) < 0:
        if mode != "constant":
            raise Unsupported(f"Pad with negative pads (cropping) in mode '{mode}'")
        crop = [(i, -min(pads[i], 0), xs[i] + min(pads[r + i], 0), 1) for i in range(r)
                if min(pads[i], pads[r + i]) < 0]
        pads = [max(p, 0) for p in pads]
        x = emit_slices(imp, n, x, crop, None if any(pads) else n.output[0], ".crop", batch_ok=False)
        if not any(pads):
            return
    if not any(pads):
        imp.alias(n, n.output[0], x)
        return
    imp.emit("Pad", imp.node_name(n), [x], {"pads": pads, "mode": mode, "value": f32(value)}, n.output[0])


def op_Transpose(imp, n):
    x = imp.act(n)
    r = len(imp.shape[x])
    perm = attr_ints(onnx_attrs(n), "perm", list(reversed(range(r))))
    if sorted(perm) != list(range(r)):
        raise Malformed(f"perm {perm} is not a permutation of the {r} axes")
    if perm == list(range(r)):
        imp.alias(n, n.output[0], x)
        return
    if perm[0] != 0:
        raise Unsupported("Transpose that moves the batch axis")
    if r > 6:
        raise Unsupported(f"Transpose of a rank-{r} tensor (at most 6)")
    imp.emit("Transpose", imp.node_name(n), [x], {"perm": perm}, n.output[0])


def emit_slices(imp, n, x: str, pieces, onnx_out, suffix: str = "", batch_ok: bool = True) -> str:
    """x[.., start:end, ..] for each (axis, start, end, step) in pieces: one Slice node per axis that
    really changes (ONNX clamping resolved here), the last one producing onnx_out; none -> alias."""
    xs = imp.shape[x]
    r = len(xs)
    todo = []
    for ax, st, en, step in pieces:
        if not -r <= ax < r:
            raise Malformed(f"axis {ax} is out of range for an input of rank {r}")
        ax %= r
        if step != 1:
            raise Unsupported(f"Slice with step {step}")
        if ax == 0:
            if batch_ok and st == 0 and en >= OPEN_END:
                continue
            raise Unsupported("Slice of the batch axis")
        d = xs[ax]
        b, e = (max(0, min(d, v + d if v < 0 else v)) for v in (st, en))
        if e <= b:
            raise OpError("x", f"Slice [{st}:{en}] of axis {ax} (size {d}) is empty")
        if (b, e) != (0, d):
            todo.append((ax, b, e))
    if not todo:
        if onnx_out is not None:
            imp.alias(n, onnx_out, x)
        return x
    for i, (ax, b, e) in enumerate(todo):
        last = i == len(todo) - 1
        x = imp.emit("Slice", imp.node_name(n, suffix if last else f"{suffix}.{i}"), [x],
                     {"axis": ax, "start": b, "end": e}, onnx_out if last else None)
    return x


def op_Slice(imp, n):
    """Slice of an activation: attributes (opset < 10) or inputs starts, ends, axes, steps."""
    x = imp.act(n)
    a = onnx_attrs(n)
    if imp.opset < 10:
        starts, ends = attr_ints(a, "starts"), attr_ints(a, "ends")
        axes = attr_ints(a, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        def ints(k, what, default=None):
            v = imp.cval(n, k, what, required=default is None)
            return default if v is None else [int(d) for d in np.asarray(v).reshape(-1)]
        starts, ends = ints(1, "starts"), ints(2, "ends")
        axes = ints(3, "axes", list(range(len(starts))))
        steps = ints(4, "steps", [1] * len(starts))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Malformed(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    emit_slices(imp, n, x, list(zip(axes, starts, ends, steps)), n.output[0])


def _split_sizes(imp, n, a: dict, d: int) -> list[int]:
    """The piece sizes of Split along an axis of length d: attribute split (< 13), input split
    (>= 13), num_outputs (18: the last piece may be smaller), else equal pieces per output."""
    if "split" in a:
        return attr_ints(a, "split")
    if len(n.input) > 1 and n.input[1]:
        return [int(s) for s in np.asarray(imp.cval(n, 1, "split")).reshape(-1)]
    k = attr_int(a, "num_outputs", len(n.output))
    if k < 1:
        raise Malformed(f"num_outputs must be >= 1, got {k}")
    if "num_outputs" in a:
        chunk = -(-d // k)
        return [chunk] * (k - 1) + [d - chunk * (k - 1)]
    if d % k:
        raise OpError("x", f"Split of an axis of length {d} into {k} equal pieces")
    return [d // k] * k


def op_Split(imp, n):
    """Split of an activation -> one Slice node per output that is used."""
    x = imp.act(n)
    xs = imp.shape[x]
    r = len(xs)
    a = onnx_attrs(n)
    axis = attr_int(a, "axis", 0)
    if not -r <= axis < r:
        raise Malformed(f"axis {axis} is out of range for an input of rank {r}")
    axis %= r
    if axis == 0:
        raise Unsupported("Split of the batch axis")
    sizes = _split_sizes(imp, n, a, xs[axis])
    if len(sizes) != len(n.output) or sum(sizes) != xs[axis] or min(sizes) < 1:
        raise OpError("x", f"Split sizes {sizes} for {len(n.output)} outputs do not cover axis {axis} "
                           f"of length {xs[axis]}")
    start = 0
    for k, (o, s) in enumerate(zip(n.output, sizes)):
        if o and (imp.uses[o] or o in imp.graph_outputs):
            emit_slices(imp, n, x, [(axis, start, start + s, 1)], o, f".{k}")
        start += s


CONVERTERS = {
    "Identity": op_Identity,
    "Cast": op_Cast,
    "Flatten": op_Flatten,
    "Reshape": op_Reshape,
    "Squeeze": op_Squeeze,
    "Unsqueeze": op_Unsqueeze,
    "Concat": op_Concat,
    "Pad": op_Pad,
    "Transpose": op_Transpose,
    "Slice": op_Slice,
    "Split": op_Split,
}
