"""ONNX <-> model package, on the host only (device_agent never imports onnx).

    g = import_onnx("mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))   # a validated Graph
    report = onnx_parity("mobilenet_v2.onnx", g)                         # max abs/rel error vs onnxruntime
    export_onnx(g, "out.onnx", opset=17)

Import walks the ONNX graph once, in topological order. Every node either
  * folds: all its inputs are known constants (initializers, Constant nodes, folded values,
    or the shape of an activation, which is known because the input shape is); Shape, Size,
    Constant and ConstantOfShape are evaluated here, anything else by onnx's reference
    evaluator. Shape sub-graphs (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) vanish.
  * converts into package nodes (the `_op_<OpType>` methods of `_Importer`), or
  * is unsupported: the walk goes on and ONE OnnxError lists every unsupported op with its
    count and the first node's name.
Activations carry their shapes at the import batch size. The package keeps the batch
dimension free (null) whenever the converted graph works at another batch size too; a
Reshape that keeps the batch gets 0 ("copy") in its first slot, so a fixed-batch export
such as `Reshape(x, [1, 9216])` still runs at any batch.

Parameters are named "<node>.<slot>" and owned (`group`) by their node; Conv/Gemm weight and
bias and BatchNorm scale/bias are trainable, BN running statistics and constant operands of
Add/Sub/Mul/Div/Concat are not. Folded into the neighbouring Conv/Gemm/BatchNorm, where it
is plain algebra: a per-channel constant Add/Sub after it (-> bias), a per-channel Mul after
a BatchNorm (-> scale and bias); MatMul + Add becomes one Gemm.

Export maps every package op to one ONNX op (HardSwish below opset 14 to x * HardSigmoid(x));
BatchNorm is exported in inference form, Dropout as Identity. docs/ONNX.md has the tables.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from device_agent.errors import OnnxError, PackageError
from device_agent.fsutil import atomic_write
from device_agent.graph import Graph, Node, ParamSpec, TensorSpec
from device_agent.ops import OpError, get_op, normalize_attrs

DEFAULT_OPSET = 17
EXPORT_OPSETS = range(7, 22)          # opsets export_onnx writes
DEFAULT_TOLERANCE = 1e-4              # parity: max|ours - onnxruntime| / max|onnxruntime|
_DEFAULT_DOMAINS = ("", "ai.onnx")
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}
# ops of shape sub-graphs: they fold when their inputs are known, so one that reads the output
# of an unsupported node is not itself reported
_SHAPE_OPS = {"Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Constant",
              "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Tile", "Not", "Less", "Greater",
              "ReduceProd", "Floor", "Ceil", "Neg", "Abs", "Min", "Max"}
_WEIGHTED = {"Conv", "Gemm", "MatMul", "BatchNormalization"}
_WEIGHT_SUFFIXES = (".weight", "_weight", "_w_0", "_W", "_w")
META_PREFIX = "thomas."               # metadata_props keys written by export, read by import


# ============================================================================ small helpers
def _f32(v) -> float:
    """The shortest decimal that is the same float32 (ONNX float attributes are float32):
    9.99999974737875e-06 -> 1e-05."""
    return float(str(np.float32(v)))


def _attrs(n: onnx.NodeProto) -> dict:
    out = {}
    for a in n.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _fmt_shape(shape) -> str:
    return "x".join("N" if d is None else str(d) for d in shape)


def parse_shape(text: str) -> tuple:
    """'1,3,224,224' -> (1, 3, 224, 224); a batch of -1, N or ? -> None. OnnxError on junk."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    dims = []
    for i, p in enumerate(parts):
        if i == 0 and p in ("-1", "N", "n", "?"):
            dims.append(None)
            continue
        try:
            d = int(p)
        except ValueError:
            d = 0
        if d <= 0:
            raise OnnxError(f"--input-shape {text!r}: dimensions must be positive integers "
                            f"(the batch may be -1), e.g. 1,3,224,224")
        dims.append(d)
    if not dims:
        raise OnnxError(f"--input-shape {text!r}: give the dimensions, e.g. 1,3,224,224")
    return tuple(dims)


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines skipped), or a JSON list of strings."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OnnxError(f"{p}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxError(f"{p}: cannot read labels ({_first_line(e)})") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as e:
            raise OnnxError(f"{p}: invalid JSON labels at line {e.lineno}: {e.msg}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise OnnxError(f"{p}: a JSON labels file must hold a list of strings")
        return labels
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise OnnxError(f"{p}: the labels file is empty")
    return labels


# ============================================================================ loading
def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data (which must lie inside the model's folder)."""
    p = Path(path)
    if not p.exists():
        raise OnnxError(f"{p}: no such file")
    if not p.is_file():
        raise OnnxError(f"{p}: not a file")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError, TypeError, UnicodeDecodeError) as e:
        raise OnnxError(f"{p}: not a readable ONNX model (truncated or not ONNX: {_first_line(e)})") from None
    if not m.HasField("graph") or (not m.graph.node and not m.graph.output):
        raise OnnxError(f"{p}: not an ONNX model (no graph inside; truncated or a different file type)")
    if _opset_of(m) is None:
        raise OnnxError(f"{p}: the model declares no opset of the default ONNX domain")
    base = p.resolve().parent
    for t in _all_tensors(m.graph):
        if t.data_location == TensorProto.EXTERNAL:
            _read_external(t, base, p)
    return m


def _opset_of(m: onnx.ModelProto) -> int | None:
    for o in m.opset_import:
        if o.domain in _DEFAULT_DOMAINS:
            return int(o.version)
    return None


def _all_tensors(g: onnx.GraphProto):
    yield from g.initializer
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors


def _read_external(t: TensorProto, base: Path, model_path: Path) -> None:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    where = f"{model_path}: tensor '{t.name}'"
    if not loc:
        raise OnnxError(f"{where}: external data without a location")
    target = (base / loc).resolve()
    if Path(loc).is_absolute() or not target.is_relative_to(base):
        raise OnnxError(f"{where}: external data path '{loc}' escapes the model's folder {base}; "
                        f"refusing to read it")
    if not target.is_file():
        raise OnnxError(f"{where}: external data file '{loc}' is missing (looked in {base})")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise OnnxError(f"{where}: external data offset/length are not integers") from None
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read() if length is None else f.read(length)
    if length is not None and len(data) != length:
        raise OnnxError(f"{where}: external data file '{loc}' is truncated "
                        f"(wanted {length} bytes at offset {offset}, got {len(data)})")
    t.raw_data = data
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT


def _to_array(t: TensorProto, where: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise OnnxError(f"{where}: tensor '{t.name}' cannot be read ({_first_line(e)})") from None


def _input_dims(vi: onnx.ValueInfoProto) -> tuple | None:
    """Declared shape: ints for fixed dims, None for symbolic/-1/0/unknown; None if no shape at all."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)


def _model_input(m: onnx.ModelProto, path) -> onnx.ValueInfoProto:
    inits = {t.name for t in m.graph.initializer}
    real = [i for i in m.graph.input if i.name not in inits]
    if len(real) != 1:
        names = ", ".join(repr(i.name) for i in real) or "none"
        raise OnnxError(f"{path}: THOMAS packages take exactly one input tensor; this model has "
                        f"{len(real)} ({names})")
    vi = real[0]
    et = vi.type.tensor_type.elem_type
    if vi.type.WhichOneof("value") != "tensor_type" or et not in (0, TensorProto.FLOAT):
        raise OnnxError(f"{path}: input '{vi.name}' must be a float32 tensor "
                        f"(got {TensorProto.DataType.Name(et) if et else 'a non-tensor'})")
    return vi


def _resolve_shape(dims: tuple | None, input_shape, name: str, path) -> tuple[tuple, bool]:
    """(concrete shape used to import and check, whether the file leaves the batch free)."""
    dynamic_batch = dims is None or not dims or dims[0] is None
    if input_shape is not None:
        want = tuple(input_shape)
        if dims is not None and len(want) != len(dims):
            raise OnnxError(f"--input-shape {','.join('-1' if d is None else str(d) for d in want)} has rank "
                            f"{len(want)}, but input '{name}' of {path} has rank {len(dims)} "
                            f"(declared {_fmt_shape(dims)})")
        if want[0] is None:
            dynamic_batch = True
        batch = want[0] if want[0] is not None else (dims[0] if dims and dims[0] else 2)
        return (batch,) + tuple(want[1:]), dynamic_batch
    if dims is None:
        raise OnnxError(f"{path}: input '{name}' declares no shape; pass --input-shape, e.g. 1,3,224,224")
    if any(d is None for d in dims[1:]):
        raise OnnxError(f"{path}: input '{name}' has free dimensions ({_fmt_shape(dims)}); "
                        f"pass --input-shape, e.g. 1,3,224,224")
    # NOTE: a free batch is imported (and checked) at 2, never 1, so that a batch-sized value
    # in a shape sub-graph cannot pass for a literal 1.
    return (dims[0] or 2,) + tuple(dims[1:]), dynamic_batch


def _toposort(nodes: list, known: set, path) -> list:
    """ONNX asks for topological order but not every exporter obeys: stable Kahn sort."""
    produced = {o for n in nodes for o in n.output if o}
    out, seen, pending = [], set(known), list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(not t or t in seen or t not in produced for t in n.input):
                out.append(n)
                seen.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise OnnxError(f"{path}: the graph has a cycle through node '{rest[0].name or rest[0].op_type}'")
        pending = rest
    return out


# ============================================================================ import
class _Unsupported(Exception):
    """A node THOMAS cannot represent; `label` is what the error lists ('Transpose', 'Gemm with transA=1')."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class _Importer:
    def __init__(self, m: onnx.ModelProto, path, x_name: str, x_shape: tuple):
        self.path = path
        self.m = m
        self.x_shape = tuple(x_shape)
        self._cur_index = 0
        self.opset = _opset_of(m)
        self.const: dict[str, np.ndarray] = {}     # ONNX name -> constant value
        self.tensor: dict[str, str] = {x_name: x_name}   # ONNX activation -> our tensor
        self.shape: dict[str, tuple] = {x_name: tuple(x_shape)}   # our tensor -> shape at the import batch
        self.nodes: list[Node] = []
        self.producer: dict[str, Node] = {}
        self.params: dict[str, ParamSpec] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.graph_outputs = [o.name for o in m.graph.output]
        self.taken: set[str] = {x_name, *self.graph_outputs}
        self.uses = Counter(t for n in m.graph.node for t in n.input if t)
        self.uses.update(self.graph_outputs)
        self.unsupported: dict[str, list] = {}      # label -> [count, first node name]
        self.dead: set[str] = set()
        self.folded = 0
        for t in m.graph.initializer:
            self.const[t.name] = _to_array(t, str(path))

    # ------------------------------------------------------------------ the walk
    def run(self) -> None:
        nodes = _toposort(list(self.m.graph.node), set(self.const) | set(self.tensor), self.path)
        for i, n in enumerate(nodes):
            label = n.op_type if n.domain in _DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
            shown = n.name or f"#{i} ({n.op_type})"
            ins = list(n.input)
            if any(t in self.dead for t in ins if t):
                self.dead.update(n.output)
                if n.domain not in _DEFAULT_DOMAINS or not self._known_op(n.op_type):
                    self._record(label, shown)
                continue
            for t in ins:
                if t and t not in self.const and t not in self.tensor:
                    raise OnnxError(f"{self.path}: node '{shown}' reads tensor '{t}', which no node, "
                                    f"initializer or input produces (truncated file?)")
            try:
                if n.domain not in _DEFAULT_DOMAINS:
                    raise _Unsupported(label)
                self._node(n, i)
            except _Unsupported as u:
                self._record(u.label, shown)
                self.dead.update(o for o in n.output if o)
            except OpError as e:
                raise OnnxError(f"{self.path}: node '{shown}' ({n.op_type}) does not fit input shape "
                                f"{_fmt_shape(self.x_shape)}: {e.message}") from None
        if self.unsupported:
            kinds = sorted(self.unsupported.items(), key=lambda kv: (-kv[1][0], kv[0]))
            listing = ", ".join(f"{k} ×{c} (first: '{first}')" for k, (c, first) in kinds)
            total = sum(c for c, _ in self.unsupported.values())
            raise OnnxError(f"{self.path}: {total} node(s) use ops THOMAS cannot import: {listing}")

    def _known_op(self, op: str) -> bool:
        return hasattr(self, f"_op_{op}") or op in _SHAPE_OPS

    def _record(self, label: str, node_name: str) -> None:
        e = self.unsupported.setdefault(label, [0, node_name])
        e[0] += 1

    def _node(self, n: onnx.NodeProto, i: int) -> None:
        op = n.op_type
        ins = list(n.input)
        self._cur_index = i
        if op == "Constant":
            self._set_const(n, 0, self._constant(n))
            return
        if op in _RANDOM_OPS:
            raise _Unsupported(op)
        if op in ("Shape", "Size") and ins and ins[0] in self.tensor:
            self._set_const(n, 0, self._shape_value(n, self.shape[self.tensor[ins[0]]]))
            return
        if any(ins) and all(not t or t in self.const for t in ins):
            self._fold(n)
            return
        conv = getattr(self, f"_op_{op}", None)
        if conv is None:
            raise _Unsupported(op)
        conv(n)

    # ------------------------------------------------------------------ constants
    def _set_const(self, n, k: int, v: np.ndarray) -> None:
        if k < len(n.output) and n.output[k]:
            self.const[n.output[k]] = v

    def _constant(self, n) -> np.ndarray:
        a = _attrs(n)
        where = f"{self.path}: node '{n.name or 'Constant'}'"
        if "value" in a:
            return _to_array(a["value"], where)
        for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype=dt)
        raise _Unsupported("Constant (" + (", ".join(sorted(a)) or "no value") + ")")

    def _shape_value(self, n, shape: tuple) -> np.ndarray:
        if n.op_type == "Size":
            return np.array(int(np.prod(shape)), dtype=np.int64)
        a = _attrs(n)
        r = len(shape)
        start, end = a.get("start", 0), a.get("end", r)
        start, end = (max(0, min(r, s + r if s < 0 else s)) for s in (start, end))
        return np.array(shape[start:end], dtype=np.int64)

    def _fold(self, n) -> None:
        vals = [self.const[t] if t else None for t in n.input]
        op = n.op_type
        self.folded += 1
        if op in ("Shape", "Size"):
            self._set_const(n, 0, self._shape_value(n, np.shape(vals[0])))
            return
        if op == "Identity":
            self._set_const(n, 0, vals[0])
            return
        if op == "ConstantOfShape":
            a = _attrs(n)
            v = _to_array(a["value"], str(self.path)) if "value" in a else np.zeros(1, np.float32)
            shape = tuple(int(d) for d in np.asarray(vals[0]).reshape(-1))
            self._set_const(n, 0, np.full(shape, v.reshape(-1)[0], dtype=v.dtype))
            return
        # anything else: onnx's reference evaluator, one node at the model's opset
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
            raise _Unsupported(f"{op} on a non-numeric constant") from None
        node = onnx.NodeProto()
        node.CopyFrom(n)
        del node.input[:]
        node.input.extend([f"in{k}" if t else "" for k, t in enumerate(n.input)])
        del node.output[:]
        node.output.extend([f"out{k}" if t else "" for k, t in enumerate(n.output)])
        outs_vi = [helper.make_tensor_value_info(f"out{k}", TensorProto.UNDEFINED, None)
                   for k, t in enumerate(n.output) if t]
        g = helper.make_graph([node], "fold", vis, outs_vi)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            res = ReferenceEvaluator(model).run(None, feeds)
        except (ValueError, TypeError, RuntimeError, IndexError, KeyError, AttributeError,
                ZeroDivisionError, NotImplementedError) as e:      # the reference op refused: cannot fold
            raise _Unsupported(f"{op} (constant folding failed: {_first_line(e)})") from None
        k = 0
        for j, t in enumerate(n.output):
            if t:
                self.const[t] = np.asarray(res[k])
                k += 1

    def _cval(self, n, k: int, what: str, required: bool = True):
        """The constant value of input k (None if absent and optional)."""
        if k >= len(n.input) or not n.input[k]:
            if required:
                raise _Unsupported(f"{n.op_type} without {what}")
            return None
        t = n.input[k]
        if t not in self.const:
            raise _Unsupported(f"{n.op_type} with a computed (non-constant) {what}")
        return self.const[t]

    def _act(self, n, k: int = 0) -> str:
        t = n.input[k]
        if t not in self.tensor:
            raise _Unsupported(f"{n.op_type} on a constant")
        return self.tensor[t]

    def _no_extra_outputs(self, n, keep: int = 1) -> None:
        for o in n.output[keep:]:
            if o and self.uses[o]:
                raise _Unsupported(f"{n.op_type} with its output #{list(n.output).index(o)} used")

    # ------------------------------------------------------------------ emitting package nodes
    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def _node_name(self, n, suffix: str = "") -> str:
        """Layer names readers know: from the weight ("features.0.weight" -> "features.0",
        Caffe2's "conv1_w_0" -> "conv1"), else from torch's node path, else the node's name."""
        if n.op_type in _WEIGHTED and len(n.input) > 1 and n.input[1] in self.const and "::" not in n.input[1]:
            w = n.input[1]
            for end in _WEIGHT_SUFFIXES:
                if w.endswith(end) and len(w) > len(end) and (w[:-len(end)] + suffix) not in self.taken:
                    return self._unique(w[:-len(end)] + suffix)
        raw = n.name or f"{n.op_type}_{self._cur_index}"
        base = raw
        if raw.startswith("/"):
            # torch exports: "/features/features.0/features.0.0/Conv" -> "features.0.0"
            parts = [p for p in raw.split("/") if p]
            cand = parts[-2] if len(parts) >= 2 else (parts[-1] if parts else raw)
            base = cand if (cand + suffix) not in self.taken else raw
        return self._unique(base + suffix)

    def _emit(self, op: str, name: str, inputs: list[str], attrs: dict, onnx_out: str | None,
              params: dict | None = None) -> str:
        """Append one package node and return its output tensor. `inputs` fill the op's slots in
        order, skipping those given in params = {slot: (array, trainable)}, which become params
        "<name>.<slot>" owned by this node. The output is named after the node, or onnx_out
        when that is a graph output."""
        opdef = get_op(op)
        try:
            a = normalize_attrs(opdef, attrs)
        except OpError as e:
            raise _Unsupported(f"{op} with {e.message}") from None
        pnames = {}
        for slot, (arr, trainable) in (params or {}).items():
            pname = self._unique(f"{name}.{slot}")
            arr = np.array(arr, dtype=np.float32, copy=True)
            self.params[pname] = ParamSpec(tuple(arr.shape), "float32", name, bool(trainable))
            self.weights[pname] = arr
            self.shape[pname] = tuple(arr.shape)
            pnames[slot] = pname
        if opdef.variadic:
            ins = list(inputs)
        else:
            ins, acts = [], iter(inputs)
            for slot in opdef.slot_names(len(opdef.inputs)):
                t = pnames.get(slot) or next(acts, None)
                if t is None:
                    break
                ins.append(t)
        outs = opdef.infer(a, [self.shape[t] for t in ins])
        out = onnx_out if onnx_out is not None and onnx_out in self.graph_outputs else name
        node = Node(op, name, ins, [out], dict(attrs))
        self.nodes.append(node)
        self.producer[out] = node
        self.shape[out] = tuple(int(d) for d in outs[0])
        if onnx_out is not None:
            self.tensor[onnx_out] = out
        return out

    def _alias(self, n, onnx_out: str, ours: str) -> None:
        """onnx_out is the same tensor as ours (Identity, Dropout at ratio 0, Cast to float)."""
        if onnx_out in self.graph_outputs:
            self._emit("Identity", self._node_name(n), [ours], {}, onnx_out)
        else:
            self.tensor[onnx_out] = ours

    # ------------------------------------------------------------------ layers with parameters
    def _op_Conv(self, n):
        x = self._act(n)
        xs = self.shape[x]
        if len(xs) != 4:
            raise _Unsupported(f"Conv on rank-{len(xs)} input (only 2-D images)")
        w = self._cval(n, 1, "weight")
        b = self._cval(n, 2, "bias", required=False)
        a = _attrs(n)
        k = list(a.get("kernel_shape", w.shape[2:]))
        if list(w.shape[2:]) != k:
            raise _Unsupported("Conv whose kernel_shape disagrees with its weight")
        stride = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = _auto_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, stride, dil)
        if pads is None:
            pads = list(a.get("pads", [0, 0, 0, 0]))
        if min(pads) < 0:
            raise _Unsupported("Conv with negative pads")
        params = {"weight": (w, True)}
        if b is not None:
            params["bias"] = (b, True)
        attrs = {"out_channels": int(w.shape[0]), "kernel": k, "stride": stride, "pads": pads,
                 "dilation": dil, "groups": int(a.get("group", 1))}
        self._emit("Conv2d", self._node_name(n), [x], attrs, n.output[0], params)

    def _op_Gemm(self, n):
        x = self._act(n)
        if len(self.shape[x]) != 2:
            raise _Unsupported("Gemm on a non-matrix input")
        a = _attrs(n)
        if a.get("transA", 0):
            raise _Unsupported("Gemm with transA=1")
        bmat = np.asarray(self._cval(n, 1, "B"), dtype=np.float32)
        if bmat.ndim != 2:
            raise _Unsupported("Gemm with a B that is not a matrix")
        w = bmat if a.get("transB", 0) else bmat.T                 # (M, F): torch Linear layout
        alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
        if alpha != 1.0:
            w = w * np.float32(alpha)
        c = self._cval(n, 2, "C", required=False)
        params = {"weight": (w, True)}
        if c is not None and beta != 0.0:
            bias = self._vector(np.asarray(c, np.float32), w.shape[0], rank=2)
            if bias is None:
                raise _Unsupported("Gemm with a C that is not one bias per output")
            params["bias"] = (bias * np.float32(beta) if beta != 1.0 else bias, True)
        self._emit("Gemm", self._node_name(n), [x], {"out_features": int(w.shape[0])}, n.output[0], params)

    def _op_MatMul(self, n):
        x = self._act(n)
        if len(self.shape[x]) != 2:
            raise _Unsupported(f"MatMul on a rank-{len(self.shape[x])} input")
        bmat = self._cval(n, 1, "right-hand matrix")
        if np.ndim(bmat) != 2:
            raise _Unsupported("MatMul with a right-hand side that is not a matrix")
        w = np.asarray(bmat, np.float32).T
        self._emit("Gemm", self._node_name(n), [x], {"out_features": int(w.shape[0])}, n.output[0],
                   {"weight": (w, True)})

    def _op_BatchNormalization(self, n):
        x = self._act(n)
        xs = self.shape[x]
        if len(xs) not in (2, 4):
            raise _Unsupported(f"BatchNormalization on rank-{len(xs)} input")
        a = _attrs(n)
        if a.get("spatial", 1) == 0 and len(xs) == 4:
            raise _Unsupported("BatchNormalization with spatial=0")
        self._no_extra_outputs(n)
        vals = [np.asarray(self._cval(n, k, what), np.float32)
                for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
        c = xs[1]
        if any(v.shape != (c,) for v in vals):
            raise _Unsupported("BatchNormalization with parameters not shaped (C,)")
        m = a.get("momentum", 0.9)
        attrs = {"eps": _f32(a.get("epsilon", 1e-5)), "momentum": _f32(1.0 - _f32(m))}
        params = {"weight": (vals[0], True), "bias": (vals[1], True),
                  "running_mean": (vals[2], False), "running_var": (vals[3], False)}
        self._emit("BatchNorm", self._node_name(n), [x], attrs, n.output[0], params)

    # ------------------------------------------------------------------ activations
    def _simple(self, n, op: str, attrs: dict | None = None):
        self._emit(op, self._node_name(n), [self._act(n)], attrs or {}, n.output[0])

    def _op_Relu(self, n):
        self._simple(n, "Relu")

    def _op_Sigmoid(self, n):
        self._simple(n, "Sigmoid")

    def _op_HardSwish(self, n):
        self._simple(n, "HardSwish")

    def _op_HardSigmoid(self, n):
        a = _attrs(n)
        self._simple(n, "HardSigmoid", {"alpha": _f32(a.get("alpha", 0.2)), "beta": _f32(a.get("beta", 0.5))})

    def _op_Clip(self, n):
        x = self._act(n)
        a = _attrs(n)
        if len(n.input) > 1 or self.opset >= 11:        # opset 11+: min and max are inputs
            lo = self._cval(n, 1, "min", required=False)
            hi = self._cval(n, 2, "max", required=False)
        else:                                           # opset 6-10: attributes
            lo, hi = a.get("min"), a.get("max")
        lo = None if lo is None or not np.isfinite(float(np.asarray(lo))) else _f32(np.asarray(lo).reshape(()))
        hi = None if hi is None or not np.isfinite(float(np.asarray(hi))) else _f32(np.asarray(hi).reshape(()))
        if lo is None and hi is None:
            self._alias(n, n.output[0], x)
            return
        self._emit("Clip", self._node_name(n), [x], {"min": lo, "max": hi}, n.output[0])

    # ------------------------------------------------------------------ elementwise
    def _vector(self, c: np.ndarray, k: int, rank: int) -> np.ndarray | None:
        """A constant that broadcasts against (N,K,...) of `rank` along K only -> (K,); else None."""
        if c.ndim > rank:
            return None
        cc = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if any(d != 1 for i, d in enumerate(cc.shape) if i != 1) or cc.shape[1] not in (1, k):
            return None
        return np.broadcast_to(cc.reshape(cc.shape[1]), (k,)).astype(np.float32)

    def _fold_into_producer(self, n, x: str, c: np.ndarray, op: str, const_first: bool) -> bool:
        """x (op) c, folded into x's Conv/Gemm/BatchNorm when it is plain algebra on its params."""
        onnx_x = n.input[1 if const_first else 0]
        if const_first or self.uses[onnx_x] != 1 or onnx_x in self.graph_outputs:
            return False
        p = self.producer.get(x)
        if p is None or p.op not in ("Conv2d", "Gemm", "BatchNorm") or x in self.graph_outputs:
            return False
        if op == "Mul" and p.op != "BatchNorm" or op == "Div":
            return False
        xs = self.shape[x]
        vec = self._vector(np.asarray(c, np.float32), xs[1], len(xs))
        if vec is None or tuple(np.broadcast_shapes(xs, np.shape(c))) != xs:
            return False
        slots = get_op(p.op).slot_names(len(p.inputs))
        if op == "Mul":
            for slot in ("weight", "bias"):
                t = p.inputs[slots.index(slot)]
                self.weights[t] = (self.weights[t] * vec).astype(np.float32)
        else:
            vec = vec if op == "Add" else -vec
            if "bias" in slots:
                t = p.inputs[slots.index("bias")]
                self.weights[t] = (self.weights[t] + vec).astype(np.float32)
            else:
                pname = self._unique(f"{p.name}.bias")
                self.params[pname] = ParamSpec((xs[1],), "float32", p.name, True)
                self.weights[pname] = vec.copy()
                self.shape[pname] = (xs[1],)
                p.inputs.append(pname)
        out = n.output[0]
        if out in self.graph_outputs:        # x had this node as its only reader: rename it
            p.outputs[0] = out
            self.producer[out] = self.producer.pop(x)
            self.shape[out] = self.shape[x]
            x = out
        self.tensor[out] = x
        self.folded += 1
        return True

    def _binary(self, n, op: str, a_name: str, b_name: str):
        ca = self.const.get(a_name) if a_name not in self.tensor else None
        cb = self.const.get(b_name) if b_name not in self.tensor else None
        if ca is None and cb is None:
            if op == "Mul" and self._hardswish(n, a_name, b_name):
                return
            self._emit(op, self._node_name(n), [self.tensor[a_name], self.tensor[b_name]], {}, n.output[0])
            return
        const_first = ca is not None
        x = self.tensor[b_name if const_first else a_name]
        c = ca if const_first else cb
        if np.asarray(c).dtype.kind not in "fiub":
            raise _Unsupported(f"{op} with a non-numeric constant")
        if op in ("Add", "Sub", "Mul") and self._fold_into_producer(n, x, c, op, const_first):
            return
        slot = "a" if const_first else "b"
        self._emit(op, self._node_name(n), [x], {}, n.output[0], {slot: (np.asarray(c, np.float32), False)})

    def _hardswish(self, n, a_name: str, b_name: str) -> bool:
        """x * HardSigmoid(x; 1/6, 1/2) -- how torch exports hardswish below opset 14 -- is HardSwish."""
        for x_name, h_name in ((a_name, b_name), (b_name, a_name)):
            h = self.producer.get(self.tensor[h_name])
            if (h is not None and h.op == "HardSigmoid" and h.inputs[0] == self.tensor[x_name]
                    and self.uses[h_name] == 1 and h_name not in self.graph_outputs
                    and abs(h.attrs["alpha"] - 1 / 6) < 1e-6 and h.attrs["beta"] == 0.5):
                self.nodes.remove(h)
                del self.producer[h.outputs[0]]
                self._emit("HardSwish", self._node_name(n), [h.inputs[0]], {}, n.output[0])
                self.folded += 1
                return True
        return False

    def _op_Add(self, n):
        self._binary(n, "Add", n.input[0], n.input[1])

    def _op_Sub(self, n):
        self._binary(n, "Sub", n.input[0], n.input[1])

    def _op_Mul(self, n):
        self._binary(n, "Mul", n.input[0], n.input[1])

    def _op_Div(self, n):
        self._binary(n, "Div", n.input[0], n.input[1])

    def _op_Sum(self, n):
        ins = [t for t in n.input if t]
        acts = [t for t in ins if t in self.tensor]
        if len(ins) == 1:
            self._alias(n, n.output[0], self.tensor[ins[0]])
            return
        consts = [self.const[t] for t in ins if t not in self.tensor]
        cur = self.tensor[acts[0]]
        rest = [self.tensor[t] for t in acts[1:]]
        steps = len(rest) + (1 if consts else 0)
        for k, t in enumerate(rest):
            last = k == steps - 1
            cur = self._emit("Add", self._node_name(n, "" if last else f".{k}"), [cur, t], {},
                             n.output[0] if last else None)
        if consts:
            total = np.asarray(sum(np.asarray(c, np.float64) for c in consts), np.float32)
            self._emit("Add", self._node_name(n), [cur], {}, n.output[0], {"b": (total, False)})

    # ------------------------------------------------------------------ pooling and normalisation
    def _pool_attrs(self, n, xs) -> dict:
        a = _attrs(n)
        if len(xs) != 4:
            raise _Unsupported(f"{n.op_type} on rank-{len(xs)} input (only 2-D images)")
        k = list(a["kernel_shape"])
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Unsupported(f"{n.op_type} with dilations")
        stride = list(a.get("strides", [1, 1]))
        pads = _auto_pads(a.get("auto_pad", "NOTSET"), xs[2:], k, stride, [1, 1])
        if pads is None:
            pads = list(a.get("pads", [0, 0, 0, 0]))
        if max(pads[0], pads[2]) >= k[0] or max(pads[1], pads[3]) >= k[1]:
            raise _Unsupported(f"{n.op_type} with pads as large as the kernel")
        return {"kernel": k, "stride": stride, "pads": pads, "ceil_mode": bool(a.get("ceil_mode", 0))}

    def _op_MaxPool(self, n):
        x = self._act(n)
        self._no_extra_outputs(n)
        self._emit("MaxPool", self._node_name(n), [x], self._pool_attrs(n, self.shape[x]), n.output[0])

    def _op_AveragePool(self, n):
        x = self._act(n)
        attrs = self._pool_attrs(n, self.shape[x])
        attrs["count_include_pad"] = bool(_attrs(n).get("count_include_pad", 0))
        self._emit("AveragePool", self._node_name(n), [x], attrs, n.output[0])

    def _op_GlobalAveragePool(self, n):
        x = self._act(n)
        if len(self.shape[x]) != 4:
            raise _Unsupported("GlobalAveragePool on a non-image input")
        self._emit("GlobalAveragePool", self._node_name(n), [x], {}, n.output[0])

    def _op_GlobalMaxPool(self, n):
        x = self._act(n)
        xs = self.shape[x]
        if len(xs) != 4:
            raise _Unsupported("GlobalMaxPool on a non-image input")
        attrs = {"kernel": list(xs[2:]), "stride": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": False}
        self._emit("MaxPool", self._node_name(n), [x], attrs, n.output[0])

    def _op_LRN(self, n):
        x = self._act(n)
        if len(self.shape[x]) != 4:
            raise _Unsupported("LRN on a non-image input")
        a = _attrs(n)
        attrs = {"size": int(a["size"]), "alpha": _f32(a.get("alpha", 1e-4)), "beta": _f32(a.get("beta", 0.75)),
                 "bias": _f32(a.get("bias", 1.0))}
        self._emit("LRN", self._node_name(n), [x], attrs, n.output[0])

    def _op_Dropout(self, n):
        x = self._act(n)
        self._no_extra_outputs(n)
        a = _attrs(n)
        ratio = a.get("ratio", 0.5)
        if len(n.input) > 1 and n.input[1]:
            ratio = float(np.asarray(self._cval(n, 1, "ratio")).reshape(()))
        if ratio == 0.0:
            self._alias(n, n.output[0], x)
            return
        self._emit("Dropout", self._node_name(n), [x], {"ratio": _f32(ratio)}, n.output[0])

    def _op_Softmax(self, n):
        x = self._act(n)
        xs = self.shape[x]
        r = len(xs)
        a = _attrs(n)
        axis = a.get("axis", -1 if self.opset >= 13 else 1)
        axis = axis + r if axis < 0 else axis
        if self.opset >= 13 or axis == r - 1:
            self._emit("Softmax", self._node_name(n), [x], {"axis": axis - r}, n.output[0])
            return
        # opset < 13: softmax over everything from `axis` on, as one flattened vector
        f = self._emit("Flatten", self._node_name(n, ".flatten"), [x], {"axis": axis}, None)
        s = self._emit("Softmax", self._node_name(n, ".softmax"), [f], {"axis": -1}, None)
        self._emit("Reshape", self._node_name(n), [s], {"shape": _reshape_attr(xs, xs)}, n.output[0])

    # ------------------------------------------------------------------ shapes
    def _op_Identity(self, n):
        self._alias(n, n.output[0], self._act(n))

    def _op_Cast(self, n):
        x = self._act(n)
        if _attrs(n).get("to") != TensorProto.FLOAT:
            raise _Unsupported("Cast of an activation to a type other than float32")
        self._alias(n, n.output[0], x)

    def _op_Flatten(self, n):
        x = self._act(n)
        self._emit("Flatten", self._node_name(n), [x], {"axis": int(_attrs(n).get("axis", 1))}, n.output[0])

    def _reshape_to(self, n, x: str, out_shape: tuple):
        self._emit("Reshape", self._node_name(n), [x], {"shape": _reshape_attr(self.shape[x], out_shape)},
                   n.output[0])

    def _op_Reshape(self, n):
        x = self._act(n)
        xs = self.shape[x]
        a = _attrs(n)
        if len(n.input) > 1:
            target = [int(d) for d in np.asarray(self._cval(n, 1, "shape")).reshape(-1)]
        else:
            target = [int(d) for d in a.get("shape", [])]
        if a.get("allowzero", 0) and 0 in target:
            raise _Unsupported("Reshape with allowzero=1 and a zero dimension")
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
        self._reshape_to(n, x, tuple(out))

    def _axes(self, n) -> list[int] | None:
        """Squeeze/Unsqueeze axes: the attribute (opset < 13) or the second input; None if absent."""
        a = _attrs(n)
        if "axes" in a:
            return [int(d) for d in a["axes"]]
        if len(n.input) > 1 and n.input[1]:
            return [int(d) for d in np.asarray(self._cval(n, 1, "axes")).reshape(-1)]
        return None

    def _op_Squeeze(self, n):
        x = self._act(n)
        xs = self.shape[x]
        axes = self._axes(n)
        axes = [i for i, d in enumerate(xs) if d == 1] if axes is None else [d % len(xs) for d in axes]
        if any(xs[i] != 1 for i in axes):
            raise OpError("axes", f"Squeeze axes {axes} of shape {xs} are not all 1")
        self._reshape_to(n, x, tuple(d for i, d in enumerate(xs) if i not in axes))

    def _op_Unsqueeze(self, n):
        x = self._act(n)
        xs = self.shape[x]
        axes = self._axes(n)
        if axes is None:
            raise _Unsupported("Unsqueeze without axes")
        r = len(xs) + len(axes)
        out = list(xs)
        for ax in sorted(d % r for d in axes):
            out.insert(ax, 1)
        self._reshape_to(n, x, tuple(out))

    def _op_Concat(self, n):
        name = self._node_name(n)
        names = []
        for k, t in enumerate(n.input):
            if t in self.tensor:
                names.append(self.tensor[t])
                continue
            arr = np.array(self.const[t], np.float32, copy=True)      # a constant piece: a param
            pname = self._unique(f"{name}.input{k}")
            self.params[pname] = ParamSpec(tuple(arr.shape), "float32", name, False)
            self.weights[pname] = arr
            self.shape[pname] = tuple(arr.shape)
            names.append(pname)
        self._emit("Concat", name, names, {"axis": int(_attrs(n).get("axis", 1))}, n.output[0])

    def _op_Pad(self, n):
        x = self._act(n)
        xs = self.shape[x]
        r = len(xs)
        a = _attrs(n)
        mode = a.get("mode", "constant")
        if len(n.input) > 1 or self.opset >= 11:        # opset 11+: pads (and value, axes) are inputs
            pads = [int(p) for p in np.asarray(self._cval(n, 1, "pads")).reshape(-1)]
            v = self._cval(n, 2, "constant_value", required=False)
            value = 0.0 if v is None else float(np.asarray(v).reshape(()))
            axes = self._cval(n, 3, "axes", required=False)
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
            raise _Unsupported(f"Pad with mode '{mode}'")
        if len(pads) != 2 * r:
            raise OpError("pads", f"Pad needs {2 * r} pads for input shape {xs}, got {pads}")
        if min(pads) < 0:
            raise _Unsupported("Pad with negative pads (cropping)")
        if not any(pads):
            self._alias(n, n.output[0], x)
            return
        self._emit("Pad", self._node_name(n), [x], {"pads": pads, "mode": mode, "value": _f32(value)},
                   n.output[0])

    # ------------------------------------------------------------------ the result
    def finish(self, x_spec: TensorSpec, name: str, labels, meta: dict) -> Graph:
        outputs = []
        for o in self.graph_outputs:
            if o in self.const:
                raise OnnxError(f"{self.path}: output '{o}' is a constant; there is nothing to run")
            if self.tensor.get(o) not in self.producer:
                raise OnnxError(f"{self.path}: output '{o}' is not computed from the input")
            outputs.append(o)
        # a classifier that ends in Softmax: its input becomes the first output, because the
        # package's first output is the logits (training's loss, `thomas infer`'s raw scores)
        last = self.producer[outputs[0]]
        if len(outputs) == 1 and last.op == "Softmax" and len(self.shape[last.inputs[0]]) == 2 \
                and last.inputs[0] in self.producer:
            outputs.insert(0, last.inputs[0])
            meta["logits"] = f"'{last.inputs[0]}', the input of the final Softmax '{last.name}'"
        nodes, params = _prune(self.nodes, self.params, outputs)
        g = Graph(name, [x_spec], outputs, nodes, params, {k: self.weights[k] for k in params},
                  labels, meta)
        return g


def _prune(nodes: list[Node], params: dict, outputs: list[str]) -> tuple[list[Node], dict]:
    """Drop nodes (and their params) that no output depends on."""
    need = set(outputs)
    keep = []
    for nd in reversed(nodes):
        if any(o in need for o in nd.outputs):
            keep.append(nd)
            need.update(nd.inputs)
    keep.reverse()
    return keep, {k: p for k, p in params.items() if k in need}


def _auto_pads(mode: str, hw, k, stride, dil) -> list[int] | None:
    """ONNX auto_pad resolved for a known input size -> [top, left, bottom, right]; None = NOTSET."""
    if mode in ("NOTSET", ""):
        return None
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={mode}")
    begin, end = [], []
    for size, kk, s, d in zip(hw, k, stride, dil):
        out = -(-size // s)
        total = max((out - 1) * s + (kk - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        b, e = (small, big) if mode == "SAME_UPPER" else (big, small)
        begin.append(b)
        end.append(e)
    return begin + end


def _reshape_attr(in_shape: tuple, out_shape: tuple) -> list[int]:
    """A Reshape target that keeps the batch free: 0 (copy) where the batch dim passes through."""
    out = [int(d) for d in out_shape]
    if out and in_shape and out[0] == in_shape[0]:
        out[0] = 0
    return out


def import_onnx(path, input_shape=None, name: str | None = None, labels: list[str] | None = None,
                preprocess: dict | None = None) -> Graph:
    """Convert an ONNX file to a validated package Graph (raises OnnxError, one line).

    input_shape: the full input shape (batch may be None); overrides what the file declares.
    labels / preprocess / name: override those stored by `thomas export` in the file's metadata."""
    path = Path(path)
    m = load_model(path)
    vi = _model_input(m, path)
    dims = _input_dims(vi)
    shape, dynamic = _resolve_shape(dims, input_shape, vi.name, path)
    imp = _Importer(m, path, vi.name, shape)
    imp.run()
    md = {p.key: p.value for p in m.metadata_props}
    name = name or md.get(META_PREFIX + "name") or path.stem
    if preprocess is None and META_PREFIX + "preprocess" in md:
        try:
            preprocess = json.loads(md[META_PREFIX + "preprocess"])
        except json.JSONDecodeError:
            preprocess = None
    if labels is None and META_PREFIX + "labels" in md:
        try:
            labels = json.loads(md[META_PREFIX + "labels"])
        except json.JSONDecodeError:
            labels = None
    layout = {4: "NCHW", 2: "NC"}.get(len(shape), "")
    meta = {"source": "onnx", "onnx_file": path.name, "opset": imp.opset,
            "producer": " ".join(x for x in (m.producer_name, m.producer_version) if x) or None,
            "import_batch": shape[0], "folded_nodes": imp.folded}
    spec = TensorSpec(vi.name, (None,) + tuple(shape[1:]), "float32", layout, preprocess)
    g = imp.finish(spec, name, None, meta)
    # keep the batch free when the graph runs at other batch sizes too; else fix it
    try:
        g.infer_shapes(batch=shape[0])
        g.infer_shapes(batch=shape[0] + 1)
        g.meta["batch"] = "free"
    except PackageError as e:
        spec.shape = tuple(shape)
        g.meta["batch"] = f"fixed at {shape[0]} ({e})"
    if labels is not None:
        out = g.infer_shapes(batch=1)[g.outputs[0]]
        width = int(np.prod(out[1:]))
        if len(labels) != width:
            raise OnnxError(f"{len(labels)} labels given, but output '{g.outputs[0]}' has {width} classes "
                            f"(shape {_fmt_shape(out)})")
        g.labels = [str(s) for s in labels]
    g.meta["dynamic_batch_in_file"] = dynamic
    try:
        g.validate()
    except PackageError as e:
        raise OnnxError(f"{path}: the converted graph is invalid: {e}") from None
    return g


# ============================================================================ parity with onnxruntime
def _ort_errors() -> tuple:
    """onnxruntime's exception classes (they derive from Exception directly) and the usual ones."""
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(st, n) for n in names if hasattr(st, n)) + (RuntimeError, ValueError)


def _ort_session(model_bytes: bytes, path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3          # no VerifyOutputSizes chatter on stderr
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except _ort_errors() as e:
        raise OnnxError(f"{path}: onnxruntime cannot load the model ({_first_line(e)})") from None


def onnx_parity(path, graph: Graph, input_shape=None, seed: int = 0, batch: int | None = None) -> dict:
    """Run the ONNX file in onnxruntime and `graph` in the numpy engine on one seeded batch.

    Returns {"batch", "seed", "max_abs", "max_rel", "outputs": {name: {"max_abs", "max_rel"}}},
    rel = max|ours - ort| / max|ort| per output (the worst output is reported at the top);
    every output the ONNX file has is compared, by name."""
    from device_agent.backends.numpy_ref import NumpyRef

    path = Path(path)
    m = load_model(path)
    vi = _model_input(m, path)
    dims = _input_dims(vi)
    shape, dynamic = _resolve_shape(dims, input_shape, vi.name, path)
    spec = graph.inputs[0]
    if batch is None:
        batch = shape[0]
    if spec.shape[0] is not None:
        batch = spec.shape[0]
    x_shape = (batch,) + tuple(d for d in shape[1:])
    # onnxruntime gets the model as we read it, with the input dims we check at and no stale shapes
    tt = vi.type.tensor_type
    tt.ClearField("shape")
    for d in x_shape:
        tt.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    sess = _ort_session(m.SerializeToString(), path)
    del m
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)
    try:
        ref = sess.run(None, {vi.name: x})
    except _ort_errors() as e:
        raise OnnxError(f"{path}: onnxruntime failed to run the model at input shape "
                        f"{_fmt_shape(x_shape)} ({_first_line(e)})") from None
    ref = dict(zip([o.name for o in sess.get_outputs()], ref))
    ours = NumpyRef(graph).forward({spec.name: x})
    outs = {}
    for name in graph.outputs:
        if name not in ref:          # the logits THOMAS exposes before a final Softmax
            continue
        o, r = ours[name], ref[name]
        r = np.asarray(r, np.float32)
        if o.shape != r.shape:
            raise OnnxError(f"output '{name}': THOMAS gives shape {o.shape}, onnxruntime {r.shape}")
        diff = float(np.max(np.abs(o.astype(np.float64) - r))) if o.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        outs[name] = {"max_abs": diff, "max_rel": diff / max(scale, 1e-30) if diff else 0.0,
                      "shape": list(r.shape)}
    if not outs:
        raise OnnxError(f"{path}: none of the model's outputs {list(ref)} is an output of the package")
    worst = max(outs.values(), key=lambda v: v["max_rel"])
    return {"batch": batch, "seed": seed, "input_shape": list(x_shape), "max_abs": worst["max_abs"],
            "max_rel": worst["max_rel"], "outputs": outs}


# ============================================================================ export
class _Exporter:
    def __init__(self, graph: Graph, opset: int):
        self.g = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.taken = set(graph.params) | {t.name for t in graph.inputs} | {o for n in graph.nodes for o in n.outputs}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(self, op: str, ins: list[str], outs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))

    def need(self, opset: int, what: str, node: Node) -> None:
        if self.opset < opset:
            raise OnnxError(f"node '{node.name}' ({node.op}): {what} needs opset >= {opset}, "
                            f"exporting at opset {self.opset}")

    def run(self) -> None:
        shapes = self.g.infer_shapes(batch=1)
        for n in self.g.nodes:
            a = self.g.attrs_of(n)
            fn = getattr(self, f"_ex_{n.op}", None)
            if fn is None:
                raise OnnxError(f"node '{n.name}': op {n.op} has no ONNX export")
            fn(n, a, [shapes[t] for t in n.inputs])

    # -- one method per package op
    def _ex_Conv2d(self, n, a, s):
        self.add("Conv", n.inputs, n.outputs, n.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                 pads=list(a["pads"]), dilations=list(a["dilation"]), group=a["groups"])

    def _ex_Gemm(self, n, a, s):
        self.add("Gemm", n.inputs, n.outputs, n.name, transB=1)

    def _ex_BatchNorm(self, n, a, s):
        # inference form: normalise with the running statistics; ONNX momentum = 1 - PyTorch momentum
        self.add("BatchNormalization", n.inputs, n.outputs, n.name, epsilon=a["eps"],
                 momentum=_f32(1.0 - a["momentum"]))

    def _ex_Relu(self, n, a, s):
        self.add("Relu", n.inputs, n.outputs, n.name)

    def _ex_Sigmoid(self, n, a, s):
        self.add("Sigmoid", n.inputs, n.outputs, n.name)

    def _ex_HardSigmoid(self, n, a, s):
        self.add("HardSigmoid", n.inputs, n.outputs, n.name, alpha=a["alpha"], beta=a["beta"])

    def _ex_HardSwish(self, n, a, s):
        if self.opset >= 14:
            self.add("HardSwish", n.inputs, n.outputs, n.name)
            return
        hs = self.fresh(f"{n.name}.hardsigmoid")
        self.add("HardSigmoid", n.inputs, [hs], f"{n.name}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
        self.add("Mul", [n.inputs[0], hs], n.outputs, n.name)

    def _ex_Clip(self, n, a, s):
        if self.opset >= 11:
            ins = [n.inputs[0],
                   "" if a["min"] is None else self.const(f"{n.name}.min", np.array(a["min"], np.float32)),
                   "" if a["max"] is None else self.const(f"{n.name}.max", np.array(a["max"], np.float32))]
            while ins[-1] == "":
                ins.pop()
            self.add("Clip", ins, n.outputs, n.name)
        else:
            kw = {k: a[k] for k in ("min", "max") if a[k] is not None}
            self.add("Clip", n.inputs, n.outputs, n.name, **kw)

    def _pool(self, onnx_op, n, a, **extra):
        k = list(a["kernel"])
        kw = dict(kernel_shape=k, strides=list(a["stride"] if a["stride"] is not None else k),
                  pads=list(a["pads"]), **extra)
        if a["ceil_mode"]:
            self.need(10, "ceil_mode", n)
            kw["ceil_mode"] = 1
        self.add(onnx_op, n.inputs, n.outputs, n.name, **kw)

    def _ex_MaxPool(self, n, a, s):
        self._pool("MaxPool", n, a)

    def _ex_AveragePool(self, n, a, s):
        self._pool("AveragePool", n, a, count_include_pad=int(a["count_include_pad"]))

    def _ex_GlobalAveragePool(self, n, a, s):
        self.add("GlobalAveragePool", n.inputs, n.outputs, n.name)

    def _ex_LRN(self, n, a, s):
        self.add("LRN", n.inputs, n.outputs, n.name, size=a["size"], alpha=a["alpha"], beta=a["beta"],
                 bias=a["bias"])

    def _ex_Dropout(self, n, a, s):
        self.add("Identity", n.inputs, n.outputs, n.name)    # inference: dropout is the identity

    def _ex_Identity(self, n, a, s):
        self.add("Identity", n.inputs, n.outputs, n.name)

    def _ex_Add(self, n, a, s):
        self.add("Add", n.inputs, n.outputs, n.name)

    def _ex_Sub(self, n, a, s):
        self.add("Sub", n.inputs, n.outputs, n.name)

    def _ex_Mul(self, n, a, s):
        self.add("Mul", n.inputs, n.outputs, n.name)

    def _ex_Div(self, n, a, s):
        self.add("Div", n.inputs, n.outputs, n.name)

    def _ex_Flatten(self, n, a, s):
        r = len(s[0])
        self.add("Flatten", n.inputs, n.outputs, n.name, axis=a["axis"] + r if a["axis"] < 0 else a["axis"])

    def _ex_Reshape(self, n, a, s):
        shape = self.const(f"{n.name}.shape", np.array(a["shape"], np.int64))
        self.add("Reshape", [n.inputs[0], shape], n.outputs, n.name)

    def _ex_Concat(self, n, a, s):
        r = len(s[0])
        self.add("Concat", n.inputs, n.outputs, n.name, axis=a["axis"] + r if a["axis"] < 0 else a["axis"])

    def _ex_Pad(self, n, a, s):
        if self.opset >= 11:
            ins = [n.inputs[0], self.const(f"{n.name}.pads", np.array(a["pads"], np.int64))]
            if a["mode"] == "constant" and a["value"] != 0.0:
                ins.append(self.const(f"{n.name}.value", np.array(a["value"], np.float32)))
            self.add("Pad", ins, n.outputs, n.name, mode=a["mode"])
        else:
            self.add("Pad", n.inputs, n.outputs, n.name, mode=a["mode"], pads=list(a["pads"]), value=a["value"])

    def _ex_Softmax(self, n, a, s):
        r = len(s[0])
        axis = a["axis"] + r if a["axis"] < 0 else a["axis"]
        if self.opset < 13 and axis != r - 1:
            raise OnnxError(f"node '{n.name}' (Softmax): a softmax over axis {axis} of a rank-{r} tensor "
                            f"needs opset >= 13")
        self.add("Softmax", n.inputs, n.outputs, n.name, axis=axis)


def export_onnx(graph: Graph, path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `graph` as an ONNX model (weights inside the file) and return the path.

    The batch dimension is symbolic ("N") when the package leaves it free. Labels,
    preprocessing and the name travel in metadata_props (thomas.labels, ...), which
    import_onnx reads back."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in EXPORT_OPSETS:
        raise OnnxError(f"--opset {opset!r}: THOMAS exports opsets {EXPORT_OPSETS.start}..{EXPORT_OPSETS.stop - 1}")
    try:
        graph.validate()
    except PackageError as e:
        raise OnnxError(f"cannot export an invalid package: {e}") from None
    ex = _Exporter(graph, opset)
    ex.run()
    shapes = graph.infer_shapes(batch=1)
    free = graph.inputs[0].shape[0] is None

    def dims(shape, batch_free):
        return ["N" if (i == 0 and batch_free) else int(d) for i, d in enumerate(shape)]

    inputs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT,
                                            dims(tuple(1 if d is None else d for d in t.shape), free))
              for t in graph.inputs]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims(shapes[o], free)) for o in graph.outputs]
    inits = [numpy_helper.from_array(np.ascontiguousarray(graph.weights[k], np.float32), k) for k in graph.params]
    g = helper.make_graph(ex.nodes, graph.name, inputs, outputs, inits + ex.inits)
    opsets = [helper.make_opsetid("", opset)]
    import device_agent

    m = helper.make_model(g, opset_imports=opsets, producer_name="thomas",
                          producer_version=device_agent.__version__,
                          ir_version=helper.find_min_ir_version_for(opsets))
    md = {"name": graph.name}
    if graph.labels is not None:
        md["labels"] = json.dumps(graph.labels)
    if graph.inputs[0].preprocess is not None:
        md["preprocess"] = json.dumps(graph.inputs[0].preprocess)
    helper.set_model_props(m, {META_PREFIX + k: v for k, v in md.items()})
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise OnnxError(f"the exported model fails onnx's checker: {_first_line(e)}") from None
    dest = Path(path)
    if dest.is_dir():
        raise OnnxError(f"{dest}: is a directory; give the .onnx file to write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = m.SerializeToString()
    return atomic_write(dest, lambda f: f.write(data))
