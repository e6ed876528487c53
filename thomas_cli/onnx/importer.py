"""The import walk: an ONNX graph -> a validated package Graph.

    g = import_onnx("mobilenet_v2.onnx", input_shape=(1, 3, 224, 224))

Import walks the ONNX graph once, in topological order. Every node either
  * folds: all its inputs are known constants (initializers, Constant nodes, folded values,
    or the shape of an activation, which is known because the input shape is); Shape, Size,
    Constant and ConstantOfShape are evaluated here, anything else by onnx's reference
    evaluator. Shape sub-graphs (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) vanish.
  * converts into package nodes (the `op_<OpType>(imp, n)` functions of the convert_*.py
    modules, gathered in CONVERTERS), or
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
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from device_agent.errors import OnnxError, PackageError, ThomasError
from device_agent.model.graph import Graph, Node, ParamSpec, TensorSpec
from device_agent.ops import OpError, get_op, normalize_attrs

from . import fold
from .common import (DEFAULT_DOMAINS, META_PREFIX, Malformed, Unsupported, check_memory, first_line,
                     fmt_shape, input_dims, load_model, model_input, opset_of, resolve_shape, to_array,
                     toposort)
from .convert_act import CONVERTERS as _ACT
from .convert_eltwise import CONVERTERS as _ELTWISE
from .convert_nn import CONVERTERS as _NN
from .convert_pool import CONVERTERS as _POOL
from .convert_shape import CONVERTERS as _SHAPE

CONVERTERS = {**_NN, **_ACT, **_POOL, **_ELTWISE, **_SHAPE}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli"}
# ops of shape sub-graphs: they fold when their inputs are known, so one that reads the output
# of an unsupported node is not itself reported
SHAPE_OPS = {"Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Constant",
             "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Tile", "Not", "Less", "Greater",
             "ReduceProd", "Floor", "Ceil", "Neg", "Abs", "Min", "Max"}
_WEIGHTED = {"Conv", "Gemm", "MatMul", "BatchNormalization", "PRelu"}
_WEIGHT_SUFFIXES = (".weight", "_weight", "_w_0", "_W", "_w")
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError)


class Importer:
    def __init__(self, m: onnx.ModelProto, path, x_name: str, x_shape: tuple, budget: int | None = None):
        self.path = path
        self.m = m
        self.x_shape = tuple(x_shape)
        self._cur_index = 0
        self.opset = opset_of(m)
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
        self.budget = budget                        # bytes the parity batch's activations may take
        self.act_bytes = 4 * math.prod(self.x_shape)
        for t in m.graph.initializer:
            self.const[t.name] = to_array(t, str(path))

    # ------------------------------------------------------------------ the walk
    def run(self) -> None:
        nodes = toposort(list(self.m.graph.node), set(self.const) | set(self.tensor), self.path)
        for i, n in enumerate(nodes):
            label = n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
            shown = n.name or f"#{i} ({n.op_type})"
            if any(t in self.dead for t in n.input if t):
                self.dead.update(n.output)
                if n.domain not in DEFAULT_DOMAINS or not self._known_op(n.op_type):
                    self._record(label, shown)
                continue
            for t in n.input:
                if t and t not in self.const and t not in self.tensor:
                    raise OnnxError(f"{self.path}: node '{shown}' reads tensor '{t}', which no node, "
                                    f"initializer or input produces (truncated file?)")
            try:
                if n.domain not in DEFAULT_DOMAINS:
                    raise Unsupported(label)
                self._step(n, i, shown)
            except Unsupported as u:
                self._record(u.label, shown)
                self.dead.update(o for o in n.output if o)
        if self.unsupported:
            kinds = sorted(self.unsupported.items(), key=lambda kv: (-kv[1][0], kv[0]))
            listing = ", ".join(f"{k} ×{c} (first: '{first}')" for k, (c, first) in kinds)
            total = sum(c for c, _ in self.unsupported.values())
            raise OnnxError(f"{self.path}: {total} node(s) use ops THOMAS cannot import: {listing}")

    def _step(self, n: onnx.NodeProto, i: int, shown: str) -> None:
        """One node; every way a node can be wrong becomes one OnnxError naming it."""
        where = f"{self.path}: node '{shown}' ({n.op_type})"
        try:
            self._node(n, i)
        except (Unsupported, ThomasError):
            raise
        except OpError as e:
            raise OnnxError(f"{where} does not fit input shape {fmt_shape(self.x_shape)}: {e.message}") from None
        except Malformed as e:
            raise OnnxError(f"{where}: {e}") from None
        except _MALFORMED as e:     # a malformed node the checks above missed: still one line
            raise OnnxError(f"{where} is malformed ({type(e).__name__}: {first_line(e)})") from None

    def _known_op(self, op: str) -> bool:
        return op in CONVERTERS or op in SHAPE_OPS

    def _record(self, label, node_name: str) -> None:
        # NOTE: protobuf hands back bytes for a string field that is not valid UTF-8
        label = label if isinstance(label, str) else bytes(label).decode("utf-8", "replace")
        e = self.unsupported.setdefault(label, [0, node_name])
        e[0] += 1

    def _node(self, n: onnx.NodeProto, i: int) -> None:
        op = n.op_type
        ins = list(n.input)
        self._cur_index = i
        if op == "Constant":
            self.set_const(n, 0, fold.constant(self, n))
            return
        if op in RANDOM_OPS:
            raise Unsupported(op)
        if op in ("Shape", "Size") and ins and ins[0] in self.tensor:
            self.set_const(n, 0, fold.shape_value(n, self.shape[self.tensor[ins[0]]]))
            return
        if any(ins) and all(not t or t in self.const for t in ins):
            fold.fold(self, n)
            return
        conv = CONVERTERS.get(op)
        if conv is None:
            raise Unsupported(op)
        conv(self, n)

    # ------------------------------------------------------------------ constants and inputs
    def set_const(self, n, k: int, v: np.ndarray) -> None:
        if k < len(n.output) and n.output[k]:
            self.const[n.output[k]] = v

    def cval(self, n, k: int, what: str, required: bool = True):
        """The constant value of input k (None if absent and optional)."""
        if k >= len(n.input) or not n.input[k]:
            if required:
                raise Unsupported(f"{n.op_type} without {what}")
            return None
        t = n.input[k]
        if t not in self.const:
            raise Unsupported(f"{n.op_type} with a computed (non-constant) {what}")
        return self.const[t]

    def act(self, n, k: int = 0) -> str:
        t = n.input[k]
        if t not in self.tensor:
            raise Unsupported(f"{n.op_type} on a constant")
        return self.tensor[t]

    def no_extra_outputs(self, n, keep: int = 1) -> None:
        for o in n.output[keep:]:
            if o and self.uses[o]:
                raise Unsupported(f"{n.op_type} with its output #{list(n.output).index(o)} used")

    # ------------------------------------------------------------------ emitting package nodes
    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def node_name(self, n, suffix: str = "") -> str:
        """Layer names readers know: from the weight ("features.0.weight" -> "features.0",
        Caffe2's "conv1_w_0" -> "conv1"), else from torch's node path, else the node's name."""
        if n.op_type in _WEIGHTED and len(n.input) > 1 and n.input[1] in self.const and "::" not in n.input[1]:
            w = n.input[1]
            for end in _WEIGHT_SUFFIXES:
                if w.endswith(end) and len(w) > len(end) and (w[:-len(end)] + suffix) not in self.taken:
                    return self.unique(w[:-len(end)] + suffix)
        raw = n.name or f"{n.op_type}_{self._cur_index}"
        base = raw
        if raw.startswith("/"):
            # torch exports: "/features/features.0/features.0.0/Conv" -> "features.0.0"
            parts = [p for p in raw.split("/") if p]
            cand = parts[-2] if len(parts) >= 2 else (parts[-1] if parts else raw)
            base = cand if (cand + suffix) not in self.taken else raw
        return self.unique(base + suffix)

    def emit(self, op: str, name: str, inputs: list[str], attrs: dict, onnx_out: str | None,
              params: dict | None = None) -> str:
        """Append one package node and return its output tensor. `inputs` fill the op's slots in
        order, skipping those given in params = {slot: (array, trainable)}, which become params
        "<name>.<slot>" owned by this node. The output is named after the node, or onnx_out
        when that is a graph output."""
        opdef = get_op(op)
        try:
            a = normalize_attrs(opdef, attrs)
        except OpError as e:
            raise Unsupported(f"{op} with {e.message}") from None
        pnames = {}
        for slot, (arr, trainable) in (params or {}).items():
            pname = self.unique(f"{name}.{slot}")
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
        self._account(self.shape[out])
        if onnx_out is not None:
            self.tensor[onnx_out] = out
        return out

    def _account(self, shape: tuple) -> None:
        """The parity check holds every activation (ours and onnxruntime's): stop before it cannot."""
        self.act_bytes += 4 * math.prod(shape)
        if self.budget is not None and 2 * self.act_bytes > self.budget:
            check_memory(2 * self.act_bytes, f"{self.path}: checking the import at input "
                         f"{fmt_shape(self.x_shape)} (the parity batch's activations)",
                         "pass a smaller --input-shape", self.budget)

    def alias(self, n, onnx_out: str, ours: str) -> None:
        """onnx_out is the same tensor as ours (Identity, Dropout at ratio 0, Cast to float)."""
        if onnx_out in self.graph_outputs:
            self.emit("Identity", self.node_name(n), [ours], {}, onnx_out)
        else:
            self.tensor[onnx_out] = ours

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
        nodes, params = prune(self.nodes, self.params, outputs)
        return Graph(name, [x_spec], outputs, nodes, params, {k: self.weights[k] for k in params}, labels, meta)


def prune(nodes: list[Node], params: dict, outputs: list[str]) -> tuple[list[Node], dict]:
    """Drop nodes (and their params) that no output depends on."""
    need = set(outputs)
    keep = []
    for nd in reversed(nodes):
        if any(o in need for o in nd.outputs):
            keep.append(nd)
            need.update(nd.inputs)
    keep.reverse()
    return keep, {k: p for k, p in params.items() if k in need}


def _metadata(m: onnx.ModelProto, key: str):
    """A value `thomas export` stored in metadata_props (JSON), or None."""
    for p in m.metadata_props:
        if p.key == META_PREFIX + key:
            try:
                return json.loads(p.value) if key != "name" else p.value
            except json.JSONDecodeError:
                return None
    return None


def _settle_batch(g: Graph, spec: TensorSpec, shape: tuple) -> None:
    """Keep the batch free when the graph runs at other batch sizes too; else fix it."""
    try:
        g.infer_shapes(batch=shape[0])
        g.infer_shapes(batch=shape[0] + 1)
        g.meta["batch"] = "free"
    except PackageError as e:
        spec.shape = tuple(shape)
        g.meta["batch"] = f"fixed at {shape[0]} ({e})"


def import_onnx(path, input_shape=None, name: str | None = None, labels: list[str] | None = None,
                preprocess: dict | None = None) -> Graph:
    """Convert an ONNX file to a validated package Graph (raises OnnxError, one line).

    input_shape: the full input shape (batch may be None); overrides what the file declares.
    labels / preprocess / name: override those stored by `thomas export` in the file's metadata.
    The parity batch (the import shape) must fit the memory available: checked before anything
    of its size is allocated."""
    from device_agent.limits import memory_budget

    path = Path(path)
    m = load_model(path)
    if not m.graph.output:
        raise OnnxError(f"{path}: the graph declares no outputs; there is nothing to import")
    vi = model_input(m, path)
    shape, dynamic = resolve_shape(input_dims(vi), input_shape, vi.name, path)
    budget = memory_budget()
    check_memory(8 * math.prod(shape), f"{path}: an input of {fmt_shape(shape)} (the parity batch)",
                 "pass a smaller --input-shape", budget)
    imp = Importer(m, path, vi.name, shape, budget)
    imp.run()
    name = name or _metadata(m, "name") or path.stem
    if preprocess is None:
        preprocess = _metadata(m, "preprocess")
    if labels is None:
        labels = _metadata(m, "labels")
    meta = {"source": "onnx", "onnx_file": path.name, "opset": imp.opset,
            "producer": " ".join(x for x in (m.producer_name, m.producer_version) if x) or None,
            "import_batch": shape[0], "folded_nodes": imp.folded}
    layout = {4: "NCHW", 2: "NC"}.get(len(shape), "")
    spec = TensorSpec(vi.name, (None,) + tuple(shape[1:]), "float32", layout, preprocess)
    g = imp.finish(spec, name, None, meta)
    _settle_batch(g, spec, shape)
    if labels is not None:
        out = g.infer_shapes(batch=1)[g.outputs[0]]
        width = math.prod(out[1:])
        if not isinstance(labels, list) or len(labels) != width:
            n = len(labels) if isinstance(labels, list) else "no list of"
            raise OnnxError(f"{n} labels given, but output '{g.outputs[0]}' has {width} classes "
                            f"(shape {fmt_shape(out)})")
        g.labels = [str(s) for s in labels]
    g.meta["dynamic_batch_in_file"] = dynamic
    try:
        g.validate()
    except PackageError as e:
        raise OnnxError(f"{path}: the converted graph is invalid: {e}") from None
    return g
