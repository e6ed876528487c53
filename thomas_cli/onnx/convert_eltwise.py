"""Converters of elementwise ops (Clip, Add/Sub/Mul/Div, Sum, Pow, Neg, Reciprocal), with the folds
into a neighbouring Conv/Gemm/BatchNorm and the x * HardSigmoid(x) -> HardSwish fusion.

A constant operand becomes a non-trainable param of exactly its stored shape (exporters write scalars
as () or (1,)); Pow with a constant exponent of 1, 2, 3, 4, -1 or -2 becomes Mul/Div nodes."""
from __future__ import annotations

import numpy as np

from device_agent.model.graph import ParamSpec
from device_agent.ops import get_op

from .common import Malformed, Unsupported, f32, onnx_attrs, vector


def scalar(v, what: str) -> float | None:
    """One number from a constant of any shape with one element (exporters write () or (1,))."""
    if v is None:
        return None
    a = np.asarray(v)
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise Malformed(f"{what} must be one number, got shape {a.shape} ({a.dtype})")
    return float(a.reshape(-1)[0])


def op_Clip(imp, n):
    x = imp.act(n)
    a = onnx_attrs(n)
    if len(n.input) > 1 or imp.opset >= 11:        # opset 11+: min and max are inputs
        lo = scalar(imp.cval(n, 1, "min", required=False), "min")
        hi = scalar(imp.cval(n, 2, "max", required=False), "max")
    else:                                           # opset 6-10: attributes
        lo, hi = scalar(a.get("min"), "min"), scalar(a.get("max"), "max")
    lo = None if lo is None or not np.isfinite(lo) else f32(lo)
    hi = None if hi is None or not np.isfinite(hi) else f32(hi)
    if lo is None and hi is None:
        imp.alias(n, n.output[0], x)
        return
    imp.emit("Clip", imp.node_name(n), [x], {"min": lo, "max": hi}, n.output[0])


def fold_into_producer(imp, n, x: str, c: np.ndarray, op: str, const_first: bool) -> bool:
    """x (op) c, folded into x's Conv/Gemm/BatchNorm when it is plain algebra on its params."""
    onnx_x = n.input[1 if const_first else 0]
    if const_first or imp.uses[onnx_x] != 1 or onnx_x in imp.graph_outputs:
        return False
    p = imp.producer.get(x)
    if p is None or p.op not in ("Conv2d", "Gemm", "BatchNorm") or x in imp.graph_outputs:
        return False
    if op == "Mul" and p.op != "BatchNorm" or op == "Div":
        return False
    xs = imp.shape[x]
    vec = vector(np.asarray(c, np.float32), xs[1], len(xs))
    if vec is None or tuple(np.broadcast_shapes(xs, np.shape(c))) != xs:
        return False
    slots = get_op(p.op).slot_names(len(p.inputs))
    if op == "Mul":
        for slot in ("weight", "bias"):
            t = p.inputs[slots.index(slot)]
            imp.weights[t] = (imp.weights[t] * vec).astype(np.float32)
    else:
        vec = vec if op == "Add" else -vec
        if "bias" in slots:
            t = p.inputs[slots.index("bias")]
            imp.weights[t] = (imp.weights[t] + vec).astype(np.float32)
        else:
            pname = imp.unique(f"{p.name}.bias")
            imp.params[pname] = ParamSpec((xs[1],), "float32", p.name, True)
            imp.weights[pname] = vec.copy()
            imp.shape[pname] = (xs[1],)
            p.inputs.append(pname)
    out = n.output[0]
    if out in imp.graph_outputs:        # x had this node as its only reader: rename it
        p.outputs[0] = out
        imp.producer[out] = imp.producer.pop(x)
        imp.shape[out] = imp.shape[x]
        x = out
    imp.tensor[out] = x
    imp.folded += 1
    return True


def binary(imp, n, op: str, a_name: str, b_name: str):
    ca = imp.const.get(a_name) if a_name not in imp.tensor else None
    cb = imp.const.get(b_name) if b_name not in imp.tensor else None
    if ca is None and cb is None:
        if op == "Mul" and hardswish(imp, n, a_name, b_name):
            return
        imp.emit(op, imp.node_name(n), [imp.tensor[a_name], imp.tensor[b_name]], {}, n.output[0])
        return
    const_first = ca is not None
    x = imp.tensor[b_name if const_first else a_name]
    c = ca if const_first else cb
    if np.asarray(c).dtype.kind not in "fiub":
        raise Unsupported(f"{op} with a non-numeric constant")
    if op in ("Add", "Sub", "Mul") and fold_into_producer(imp, n, x, c, op, const_first):
        return
    slot = "a" if const_first else "b"
    imp.emit(op, imp.node_name(n), [x], {}, n.output[0], {slot: (np.asarray(c, np.float32), False)})


def hardswish(imp, n, a_name: str, b_name: str) -> bool:
    """x * HardSigmoid(x; 1/6, 1/2) -- how torch exports hardswish below opset 14 -- is HardSwish."""
    for x_name, h_name in ((a_name, b_name), (b_name, a_name)):
        h = imp.producer.get(imp.tensor[h_name])
        if (h is not None and h.op == "HardSigmoid" and h.inputs[0] == imp.tensor[x_name]
                and imp.uses[h_name] == 1 and h_name not in imp.graph_outputs
                and abs(h.attrs["alpha"] - 1 / 6) < 1e-6 and h.attrs["beta"] == 0.5):
            imp.nodes.remove(h)
            del imp.producer[h.outputs[0]]
            imp.emit("HardSwish", imp.node_name(n), [h.inputs[0]], {}, n.output[0])
            imp.folded += 1
            return True
    return False


def op_Add(imp, n):
    binary(imp, n, "Add", n.input[0], n.input[1])


def op_Sub(imp, n):
    binary(imp, n, "Sub", n.input[0], n.input[1])


def op_Mul(imp, n):
    binary(imp, n, "Mul", n.input[0], n.input[1])


def op_Div(imp, n):
    binary(imp, n, "Div", n.input[0], n.input[1])


def op_Sum(imp, n):
    ins = [t for t in n.input if t]
    acts = [t for t in ins if t in imp.tensor]
    if len(ins) == 1:
        imp.alias(n, n.output[0], imp.tensor[ins[0]])
        return
    consts = [imp.const[t] for t in ins if t not in imp.tensor]
    cur = imp.tensor[acts[0]]
    rest = [imp.tensor[t] for t in acts[1:]]
    steps = len(rest) + (1 if consts else 0)
    for k, t in enumerate(rest):
        last = k == steps - 1
        cur = imp.emit("Add", imp.node_name(n, "" if last else f".{k}"), [cur, t], {},
                         n.output[0] if last else None)
    if consts:
        total = np.asarray(sum(np.asarray(c, np.float64) for c in consts), np.float32)
        imp.emit("Add", imp.node_name(n), [cur], {}, n.output[0], {"b": (total, False)})


def op_Pow(imp, n):
    """x ** p with a constant scalar p: 1 -> x, 2/3/4 -> Mul chains, -1/-2 -> Div(1, ...)."""
    if n.input[0] not in imp.tensor:
        raise Unsupported("Pow with a computed exponent")
    x = imp.act(n)
    p = scalar(imp.cval(n, 1, "exponent"), "the exponent")
    if p == 1.0:
        imp.alias(n, n.output[0], x)
        return
    if p not in (2.0, 3.0, 4.0, -1.0, -2.0):
        why = "square root" if p == 0.5 else "only 1, 2, 3, 4, -1 and -2 map to Mul/Div"
        raise Unsupported(f"Pow with exponent {p:g} ({why}; no device op)")
    last = abs(p) == 1.0 or (p > 0 and abs(p) == 2.0)
    sq = x if abs(p) == 1.0 else imp.emit("Mul", imp.node_name(n, "" if last else ".square"), [x, x], {},
                                          n.output[0] if last else None)
    if p == 3.0:
        imp.emit("Mul", imp.node_name(n), [sq, x], {}, n.output[0])
    elif p == 4.0:
        imp.emit("Mul", imp.node_name(n), [sq, sq], {}, n.output[0])
    elif p < 0:
        imp.emit("Div", imp.node_name(n), [sq], {}, n.output[0], {"a": (np.float32(1.0), False)})


def op_Neg(imp, n):
    imp.emit("Mul", imp.node_name(n), [imp.act(n)], {}, n.output[0], {"b": (np.float32(-1.0), False)})


def op_Reciprocal(imp, n):
    imp.emit("Div", imp.node_name(n), [imp.act(n)], {}, n.output[0], {"a": (np.float32(1.0), False)})


CONVERTERS = {
    "Clip": op_Clip,
    "Add": op_Add,
    "Sub": op_Sub,
    "Mul": op_Mul,
    "Div": op_Div,
    "Sum": op_Sum,
    "Pow": op_Pow,
    "Neg": op_Neg,
    "Reciprocal": op_Reciprocal,
}
