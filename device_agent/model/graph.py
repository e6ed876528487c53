"""The model package: `model.json` (graph) + `weights.npz` (parameters), and shape inference.

    g = load_package("models/mobilenet_v2")     # validates everything, raises PackageError
    shapes = g.infer_shapes(batch=8)            # tensor name -> shape
    save_package(g, "out/")                     # validates, then writes atomically

model.json (format 1):
    {"format": 1, "name": "mobilenet_v2",
     "inputs":  [{"name": "input", "shape": [null, 3, 224, 224], "dtype": "float32", "layout": "NCHW",
                  "preprocess": {"scale": 0.00392156, "mean": [...], "std": [...]}}],
     "outputs": ["logits"],
     "nodes":   [{"op": "Conv2d", "name": "features.0.0", "inputs": ["input", "features.0.0.weight"],
                  "outputs": ["t1"], "attrs": {...}}, ...],
     "params":  {"features.0.0.weight": {"shape": [32, 3, 3, 3], "dtype": "float32",
                                         "group": "features.0.0", "trainable": true}, ...},
     "labels":  ["tench", ...] | null, "meta": {...}}

A `null` dimension in an input shape is the batch (any size). `group` names the layer a
parameter belongs to (stages count layers by group); buffers (BN running stats) have
`"trainable": false`. Every error is a PackageError with a one-line message naming the
node and field at fault.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PackageError
from ..fsutil import atomic_write
from ..limits import load_npz, read_json
from ..ops import OpError, get_op, normalize_attrs

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS_NPZ = "weights.npz"
PARAM_DTYPES = ("float32",)
MAX_TENSOR_BYTES = 1 << 30           # one tensor of one image (float32): far above any mobile CNN's
INPUT_DTYPES = ("float32",)


@dataclass
class TensorSpec:
    name: str
    shape: tuple                     # None marks the batch dimension
    dtype: str = "float32"
    layout: str = "NCHW"
    preprocess: dict | None = None   # {"scale": float, "mean": [C], "std": [C]}: x = (u8*scale - mean)/std

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout, "preprocess": self.preprocess}


@dataclass
class ParamSpec:
    shape: tuple
    dtype: str = "float32"
    group: str = ""
    trainable: bool = True

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "group": self.group,
                "trainable": self.trainable}


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"op": self.op, "name": self.name, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _jsonable(self.attrs)}


@dataclass
class Graph:
    name: str
    inputs: list[TensorSpec]
    outputs: list[str]
    nodes: list[Node]
    params: dict[str, ParamSpec]
    weights: dict[str, np.ndarray]
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)
    format: int = FORMAT_VERSION

    # ------------------------------------------------------------------ queries
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def producers(self) -> dict[str, Node]:
        return {t: n for n in self.nodes for t in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                out.setdefault(t, []).append(n)
        return out

    def param_groups(self) -> list[str]:
        """Layer names that own trainable parameters, in graph order (first layer first)."""
        seen: list[str] = []
        for n in self.nodes:
            for t in n.inputs:
                p = self.params.get(t)
                if p is not None and p.trainable and p.group not in seen:
                    seen.append(p.group)
        return seen

    def num_params(self, trainable_only: bool = True) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()
                       if p.trainable or not trainable_only))

    def attrs_of(self, node: Node) -> dict:
        """The node's attributes, validated and with defaults filled in."""
        return normalize_attrs(get_op(node.op), node.attrs)

    def infer_shapes(self, batch: int = 1) -> dict[str, tuple]:
        """Shape of every tensor for a given batch size; raises PackageError on a mismatch."""
        shapes: dict[str, tuple] = {}
        for spec in self.inputs:
            shapes[spec.name] = tuple(batch if d is None else int(d) for d in spec.shape)
        for name, p in self.params.items():
            shapes[name] = tuple(p.shape)
        for n in self.nodes:
            op = get_op(n.op)
            try:
                outs = op.infer(normalize_attrs(op, n.attrs), [shapes[t] for t in n.inputs])
            except OpError as e:
                slot = e.field
                names = op.slot_names(len(n.inputs))
                where = f"input '{slot}' ('{n.inputs[names.index(slot)]}')" if slot in names else f"'{slot}'"
                raise PackageError(f"node '{n.name}' ({n.op}): {where}: {e.message}") from None
            if len(outs) != len(n.outputs):
                raise PackageError(f"node '{n.name}' ({n.op}): field 'outputs' lists {len(n.outputs)} "
                                   f"tensors, the op produces {len(outs)}")
            for t, s in zip(n.outputs, outs):
                shapes[t] = tuple(int(d) for d in s)
        return shapes

    # ------------------------------------------------------------------ (de)serialisation
    def to_json(self) -> dict:
        return {"format": self.format, "name": self.name,
                "inputs": [i.to_json() for i in self.inputs], "outputs": list(self.outputs),
                "nodes": [n.to_json() for n in self.nodes],
                "params": {k: p.to_json() for k, p in self.params.items()},
                "labels": self.labels, "meta": _jsonable(self.meta)}

    @classmethod
    def from_json(cls, doc: dict, weights: dict[str, np.ndarray]) -> "Graph":
        return _parse(doc, weights)

    def validate(self) -> "Graph":
        _validate(self)
        return self


# ---------------------------------------------------------------------------- load / save
def load_package(path: str | os.PathLike) -> Graph:
    """Read and fully validate a package directory."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root}: not a model package directory (expected {MODEL_JSON} + {WEIGHTS_NPZ})")
    mj = root / MODEL_JSON
    if not mj.is_file():
        raise PackageError(f"{root}: missing {MODEL_JSON}")
    doc = read_json(mj, PackageError, what=MODEL_JSON)     # size and nesting limits, one-line errors
    weights = read_weights(root / WEIGHTS_NPZ)
    g = _parse(doc, weights)
    _validate(g)
    return g


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Load an npz without ever unpickling: object arrays are refused, and every member's header is
    checked against its real size and the memory budget before any array is allocated (limits.py)."""
    if not path.is_file():
        raise PackageError(f"{path.parent}: missing {WEIGHTS_NPZ}")
    return load_npz(path, PackageError)


def save_package(graph: Graph, path: str | os.PathLike) -> Path:
    """Validate, then write model.json + weights.npz; each file is replaced atomically."""
    _validate(graph)
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    # NOTE: np.ascontiguousarray makes a 0-d array 1-d; np.require keeps the declared shape ()
    arrays = {k: np.require(graph.weights[k], requirements="C") for k in graph.params}
    atomic_write(root / WEIGHTS_NPZ, lambda f: np.savez(f, **arrays))
    text = json.dumps(graph.to_json(), indent=1) + "\n"
    atomic_write(root / MODEL_JSON, lambda f: f.write(text.encode()))
    return root


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---------------------------------------------------------------------------- parsing
def _need(d: dict, key: str, types, where: str):
    if key not in d:
        raise PackageError(f"{where}: missing field '{key}'")
    v = d[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PackageError(f"{where}: field '{key}' has the wrong type ({type(v).__name__})")
    return v


def _only(d: dict, allowed: set, where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise PackageError(f"{where}: unknown field '{extra[0]}'")


def _parse(doc, weights: dict[str, np.ndarray]) -> Graph:
    where = MODEL_JSON
    if not isinstance(doc, dict):
        raise PackageError(f"{where}: top level must be a JSON object")
    fmt = _need(doc, "format", int, where)
    if fmt > FORMAT_VERSION:
        raise PackageError(f"{where}: package format {fmt} is newer than this THOMAS supports "
                           f"(format {FORMAT_VERSION}); upgrade thomas")
    if fmt < 1:
        raise PackageError(f"{where}: field 'format' must be >= 1, got {fmt}")
    _only(doc, {"format", "name", "inputs", "outputs", "nodes", "params", "labels", "meta"}, where)
    name = _need(doc, "name", str, where)
    if not name or len(name) > 200 or name in (".", "..") or any(c in name for c in "/\\") or \
            any(ord(c) < 32 for c in name):
        raise PackageError(f"{where}: field 'name' must be a model name (1-200 characters, no '/', '\\', "
                           f"control characters, '.' or '..'), got {name[:60]!r}")

    inputs = []
    for i, d in enumerate(_need(doc, "inputs", list, where)):
        w = f"{where}: inputs[{i}]"
        if not isinstance(d, dict):
            raise PackageError(f"{w}: must be an object")
        _only(d, {"name", "shape", "dtype", "layout", "preprocess"}, w)
        shape = _need(d, "shape", list, w)
        if not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and s > 0) for s in shape):
            raise PackageError(f"{w}: field 'shape' must hold positive integers or null, got {shape}")
        dtype = d.get("dtype", "float32")
        if dtype not in INPUT_DTYPES:
            raise PackageError(f"{w}: field 'dtype' must be one of {list(INPUT_DTYPES)}, got {dtype!r}")
        pre = d.get("preprocess")
        if pre is not None:
            _check_preprocess(pre, shape, f"{w}.preprocess")
        inputs.append(TensorSpec(_need(d, "name", str, w), tuple(shape), dtype, d.get("layout", "NCHW"), pre))

    outputs = _need(doc, "outputs", list, where)
    if not outputs or not all(isinstance(o, str) for o in outputs):
        raise PackageError(f"{where}: field 'outputs' must be a non-empty list of tensor names")

    nodes = []
    for i, d in enumerate(_need(doc, "nodes", list, where)):
        w = f"{where}: nodes[{i}]"
        if not isinstance(d, dict):
            raise PackageError(f"{w}: must be an object")
        _only(d, {"op", "name", "inputs", "outputs", "attrs"}, w)
        nname = _need(d, "name", str, w)
        w = f"node '{nname}'"
        ins = _need(d, "inputs", list, w)
        outs = _need(d, "outputs", list, w)
        if not all(isinstance(t, str) for t in ins + outs):
            raise PackageError(f"{w}: fields 'inputs' and 'outputs' must list tensor names")
        attrs = d.get("attrs", {})
        if not isinstance(attrs, dict):
            raise PackageError(f"{w}: field 'attrs' must be an object")
        nodes.append(Node(_need(d, "op", str, w), nname, ins, outs, attrs))

    params = {}
    for pname, d in _need(doc, "params", dict, where).items():
        w = f"param '{pname}'"
        if not isinstance(d, dict):
            raise PackageError(f"{w}: must be an object")
        _only(d, {"shape", "dtype", "group", "trainable"}, w)
        shape = _need(d, "shape", list, w)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise PackageError(f"{w}: field 'shape' must hold non-negative integers, got {shape}")
        trainable = d.get("trainable", True)
        if not isinstance(trainable, bool):
            raise PackageError(f"{w}: field 'trainable' must be true or false")
        params[pname] = ParamSpec(tuple(shape), d.get("dtype", "float32"), str(d.get("group", "")), trainable)

    labels = doc.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise PackageError(f"{where}: field 'labels' must be a list of strings or null")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise PackageError(f"{where}: field 'meta' must be an object")
    return Graph(name, inputs, outputs, nodes, params, dict(weights), labels, meta, fmt)


def _check_preprocess(pre, shape, where: str) -> None:
    if not isinstance(pre, dict):
        raise PackageError(f"{where}: must be an object")
    _only(pre, {"scale", "mean", "std"}, where)
    c = shape[1] if len(shape) > 1 else None
    for key in ("mean", "std"):
        v = pre.get(key)
        if v is None:
            continue
        if not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise PackageError(f"{where}: field '{key}' must be a list of numbers")
        if c is not None and len(v) != c:
            raise PackageError(f"{where}: field '{key}' has {len(v)} entries for {c} channels")
        if key == "std" and any(x <= 0 for x in v):
            raise PackageError(f"{where}: field 'std' must be positive")
    s = pre.get("scale", 1.0)
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0:
        raise PackageError(f"{where}: field 'scale' must be a positive number")


# ---------------------------------------------------------------------------- validation
def _validate(g: Graph) -> None:
    names_in = [t.name for t in g.inputs]
    if not names_in:
        raise PackageError(f"{MODEL_JSON}: field 'inputs' is empty")
    known: dict[str, str] = {}
    for t in names_in:
        if t in known:
            raise PackageError(f"{MODEL_JSON}: input '{t}' is declared twice")
        known[t] = "graph input"
    for p in g.params:
        if p in known:
            raise PackageError(f"param '{p}': name is also a graph input")
        known[p] = "param"

    seen_nodes: set[str] = set()
    producer: dict[str, str] = {}
    for n in g.nodes:
        if n.name in seen_nodes:
            raise PackageError(f"node '{n.name}': name is used by two nodes")
        seen_nodes.add(n.name)
        try:
            op = get_op(n.op)
        except OpError as e:
            raise PackageError(f"node '{n.name}': field 'op': {e.message}") from None
        lo, hi = op.arity()
        if not lo <= len(n.inputs) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise PackageError(f"node '{n.name}' ({n.op}): field 'inputs' has {len(n.inputs)} tensors, "
                               f"the op takes {want}")
        try:
            normalize_attrs(op, n.attrs)
        except OpError as e:
            raise PackageError(f"node '{n.name}' ({n.op}): attrs.{e.field}: {e.message}") from None
        if not n.outputs:
            raise PackageError(f"node '{n.name}' ({n.op}): field 'outputs' is empty")
        for t in n.outputs:
            if t in known or t in producer:
                raise PackageError(f"node '{n.name}': output '{t}' is already produced by "
                                   f"{producer.get(t) and repr(producer[t]) or known[t]}")
            producer[t] = n.name
        slots = op.slot_names(len(n.inputs))
        for slot, t in zip(slots, n.inputs):
            p = g.params.get(t)
            is_state = slot in op.params or slot in op.buffers
            if is_state and p is None:
                raise PackageError(f"node '{n.name}' ({n.op}): input '{slot}' ('{t}') must be a param "
                                   f"listed in the package's params")
            if slot in op.buffers and p is not None and p.trainable:
                raise PackageError(f"param '{t}': buffer of node '{n.name}' must have \"trainable\": false")

    _check_order(g, known, producer)

    used = {t for n in g.nodes for t in n.inputs}
    for o in g.outputs:
        if o not in producer and o not in known:
            raise PackageError(f"{MODEL_JSON}: output '{o}' is not produced by any node")
    for pname, p in g.params.items():
        w = f"param '{pname}'"
        if pname not in used:
            raise PackageError(f"{w}: not used by any node")
        if p.dtype not in PARAM_DTYPES:
            raise PackageError(f"{w}: field 'dtype' must be one of {list(PARAM_DTYPES)}, got {p.dtype!r}")
        if pname not in g.weights:
            raise PackageError(f"{w}: missing from {WEIGHTS_NPZ}")
        arr = g.weights[pname]
        if arr.dtype != np.dtype(p.dtype):
            raise PackageError(f"{w}: {WEIGHTS_NPZ} holds dtype {arr.dtype}, model.json says {p.dtype}")
        if tuple(arr.shape) != tuple(p.shape):
            raise PackageError(f"{w}: {WEIGHTS_NPZ} holds shape {tuple(arr.shape)}, "
                               f"model.json says {tuple(p.shape)}")
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise PackageError(f"{w}: {bad} non-finite value(s) (NaN or Inf) in {WEIGHTS_NPZ}")
    extra = sorted(set(g.weights) - set(g.params))
    if extra:
        raise PackageError(f"{WEIGHTS_NPZ}: array '{extra[0]}' is not listed in model.json params")
    _check_sizes(g, g.infer_shapes(batch=1))


def _check_sizes(g: Graph, shapes: dict) -> None:
    """Declared sizes a device could never hold are refused here, before anything is allocated: a
    tensor above MAX_TENSOR_BYTES for one image (a 10^9 x 10^9 input, a runaway Resize), labels that do
    not match the classifier's output width."""
    for spec in g.inputs:
        _tensor_fits(f"{MODEL_JSON}: input '{spec.name}' declares shape {list(spec.shape)}", shapes[spec.name])
    for n in g.nodes:
        for t in n.outputs:
            _tensor_fits(f"node '{n.name}' ({n.op}): output '{t}' has shape {list(shapes[t])}", shapes[t])
    out = shapes.get(g.outputs[0], ())
    if g.labels is not None and len(out) == 2 and out[1] != len(g.labels):
        raise PackageError(f"{MODEL_JSON}: field 'labels' names {len(g.labels)} classes, output "
                           f"'{g.outputs[0]}' has {out[1]}")


def _tensor_fits(what: str, shape: tuple) -> None:
    nbytes = math.prod(shape) * 4
    if nbytes > MAX_TENSOR_BYTES:
        raise PackageError(f"{what}: {nbytes / 2**30:.3g} GiB for one image, more than the "
                           f"{MAX_TENSOR_BYTES >> 30} GiB a tensor may take")


def _check_order(g: Graph, known: dict, producer: dict) -> None:
    """Every input must exist, nodes must be acyclic and listed in topological order."""
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    for i, n in enumerate(g.nodes):
        for t in n.inputs:
            if t in known:
                continue
            if t not in producer:
                raise PackageError(f"node '{n.name}': input '{t}' is dangling (no node, param or "
                                   f"graph input produces it)")
            if pos[producer[t]] >= i:
                cycle = _find_cycle(g, producer)
                if cycle:
                    raise PackageError(f"{MODEL_JSON}: the graph has a cycle: {' -> '.join(cycle)}")
                raise PackageError(f"node '{n.name}': input '{t}' is produced later by node "
                                   f"'{producer[t]}' (nodes must be in topological order)")


def _find_cycle(g: Graph, producer: dict) -> list[str] | None:
    deps = {n.name: [producer[t] for t in n.inputs if t in producer] for n in g.nodes}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for u in deps[v]:
            if state.get(u) == 1:
                return stack[stack.index(u):] + [u]
            if u not in state:
                c = visit(u)
                if c:
                    return c
        stack.pop()
        state[v] = 2
        return None

    for v in deps:
        if v not in state:
            c = visit(v)
            if c:
                return c
    return None
