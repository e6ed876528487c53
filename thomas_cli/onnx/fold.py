"""Constant folding during import: nodes whose inputs are all known constants are evaluated here.

    value = constant(imp, n)                  # a Constant node's value
    fold(imp, n)                              # every output of n -> imp.const

Shape/Size of a constant, Identity and ConstantOfShape are evaluated directly; anything else by
onnx's reference evaluator, one node at the model's opset. Ops that can make a large tensor out of
a few numbers (ConstantOfShape, Expand, Tile, Range) are sized first: a constant that (with its
float32 copy as a param) would not fit in the memory available is refused, so a hostile shape
input cannot allocate gigabytes (light_vgg19's 400 MB fc6 weight, made by ConstantOfShape, folds).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .common import Malformed, Unsupported, attr_int, first_line, onnx_attrs, to_array


def constant(imp, n) -> np.ndarray:
    """The value of a Constant node (value, value_float(s), value_int(s))."""
    a = onnx_attrs(n)
    where = f"{imp.path}: node '{n.name or 'Constant'}'"
    if "value" in a:
        if not isinstance(a["value"], TensorProto):
            raise Malformed("attribute 'value' must be a tensor")
        return to_array(a["value"], where)
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                    ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            try:
                return np.array(a[key], dtype=dt)
            except (TypeError, ValueError):
                raise Malformed(f"attribute '{key}' is not numeric") from None
    raise Unsupported("Constant (" + (", ".join(sorted(a)) or "no value") + ")")


def shape_value(n, shape: tuple) -> np.ndarray:
    """Shape (with start/end, opset 15) or Size of a tensor of `shape`, as int64."""
    if n.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    a = onnx_attrs(n)
    r = len(shape)
    start, end = attr_int(a, "start", 0), attr_int(a, "end", r)
    start, end = (max(0, min(r, s + r if s < 0 else s)) for s in (start, end))
    return np.array(shape[start:end], dtype=np.int64)


def _dims(v) -> tuple:
    d = np.asarray(v).reshape(-1)
    if d.dtype.kind not in "iu":
        raise Malformed(f"a shape input must hold integers, got {d.dtype}")
    return tuple(int(x) for x in d)


def _guard(imp, n, vals) -> None:
    """Unsupported when folding n would make a constant that does not fit in memory: its bytes
    (8 per element at most) plus a float32 copy, against imp.budget."""
    op, size = n.op_type, None
    if op == "ConstantOfShape":
        size = int(np.prod([max(d, 0) for d in _dims(vals[0])], dtype=np.float64))
    elif op == "Expand" and len(vals) > 1:
        dims = _dims(vals[1])
        shape = np.shape(vals[0])
        r = max(len(dims), len(shape))
        a = (1,) * (r - len(shape)) + tuple(shape)
        b = (1,) * (r - len(dims)) + dims
        size = float(np.prod([max(x, y) for x, y in zip(a, b)], dtype=np.float64))
    elif op == "Tile" and len(vals) > 1:
        size = float(np.size(vals[0])) * float(np.prod([max(d, 0) for d in _dims(vals[1])], dtype=np.float64))
    elif op == "Range" and len(vals) > 2:
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in vals[:3])
        size = 0.0 if delta == 0 else max(np.ceil((limit - start) / delta), 0.0)
    if size is None:
        return
    if imp.budget is None:
        from device_agent.limits import memory_budget

        imp.budget = memory_budget()
    if 12 * size > imp.budget:
        raise Unsupported(f"{op} making a constant of {size:.3g} elements (more than the memory available)")


def fold(imp, n) -> None:
    """Evaluate n (all inputs constant) and record its outputs in imp.const."""
    vals = [imp.const[t] if t else None for t in n.input]
    op = n.op_type
    imp.folded += 1
    _guard(imp, n, vals)
    if op in ("Shape", "Size"):
        imp.set_const(n, 0, shape_value(n, np.shape(vals[0])))
        return
    if op == "Identity":
        imp.set_const(n, 0, vals[0])
        return
    if op == "ConstantOfShape":
        a = onnx_attrs(n)
        v = to_array(a["value"], str(imp.path)) if "value" in a else np.zeros(1, np.float32)
        if v.size != 1:
            raise Malformed(f"attribute 'value' must hold one element, got {v.size}")
        imp.set_const(n, 0, np.full(_dims(vals[0]), v.reshape(-1)[0], dtype=v.dtype))
        return
    res = _evaluate(imp, n, vals)
    k = 0
    for t in n.output:
        if t:
            imp.const[t] = np.asarray(res[k])
            k += 1


def _evaluate(imp, n, vals) -> list:
    """One node through onnx's reference evaluator at the model's opset."""
    from onnx.reference import ReferenceEvaluator

    feeds = {}
    vis = []
    try:
        for k, (t, v) in enumerate(zip(n.input, vals)):
            if t:
                feeds[f"in{k}"] = v
                vis.append(helper.make_tensor_value_info(
                    f"in{k}", helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None))
    except (KeyError, TypeError, ValueError):
        raise Unsupported(f"{n.op_type} on a non-numeric constant") from None
    node = onnx.NodeProto()
    node.CopyFrom(n)
    del node.input[:]
    node.input.extend([f"in{k}" if t else "" for k, t in enumerate(n.input)])
    del node.output[:]
    node.output.extend([f"out{k}" if t else "" for k, t in enumerate(n.output)])
    outs_vi = [helper.make_tensor_value_info(f"out{k}", TensorProto.UNDEFINED, None)
               for k, t in enumerate(n.output) if t]
    g = helper.make_graph([node], "fold", vis, outs_vi)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", imp.opset)])
    try:
        return ReferenceEvaluator(model).run(None, feeds)
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError, AttributeError,
            ZeroDivisionError, NotImplementedError, MemoryError) as e:   # the reference op refused
        raise Unsupported(f"{n.op_type} (constant folding failed: {first_line(e)})") from None
