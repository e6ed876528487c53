"""A package Graph -> an ONNX model: one ONNX op per package op (HardSwish below opset 14 as
x * HardSigmoid(x)); BatchNorm in inference form, Dropout as Identity.

    export_onnx(g, "out.onnx", opset=17)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from device_agent.errors import OnnxError, PackageError
from device_agent.fsutil import atomic_write
from device_agent.graph import Graph, Node

from .common import DEFAULT_OPSET, EXPORT_OPSETS, META_PREFIX, f32, first_line


class Exporter:
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
                 momentum=f32(1.0 - a["momentum"]))

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
    ex = Exporter(graph, opset)
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
        raise OnnxError(f"the exported model fails onnx's checker: {first_line(e)}") from None
    dest = Path(path)
    if dest.is_dir():
        raise OnnxError(f"{dest}: is a directory; give the .onnx file to write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = m.SerializeToString()
    return atomic_write(dest, lambda f: f.write(data))
