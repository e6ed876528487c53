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
from device_agent.model.graph import Graph, Node

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
        if tuple(a["dilation"]) != (1, 1):
            self.need(10 if onnx_op == "MaxPool" else 19, "dilation", n)
            kw["dilations"] = list(a["dilation"])
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

    def _ex_Softmax(self, n, a, s, op="Softmax"):
        r = len(s[0])
        axis = a["axis"] + r if a["axis"] < 0 else a["axis"]
        if self.opset < 13 and axis != r - 1:
            raise OnnxError(f"node '{n.name}' ({op}): a {op.lower()} over axis {axis} of a rank-{r} tensor "
                            f"needs opset >= 13")
        self.add(op, n.inputs, n.outputs, n.name, axis=axis)

    def _ex_LogSoftmax(self, n, a, s):
        self._ex_Softmax(n, a, s, op="LogSoftmax")

    def _ex_LeakyRelu(self, n, a, s):
        self.add("LeakyRelu", n.inputs, n.outputs, n.name, alpha=a["alpha"])

    def _ex_PRelu(self, n, a, s):
        # ONNX broadcasts slope against x from the right: a (C,) slope goes along axis 1 as (C,1,..)
        x, slope = n.inputs
        r, c = len(s[0]), s[1][0]
        if c > 1 and r > 2:
            shape = self.const(f"{n.name}.slope_shape", np.array([c] + [1] * (r - 2), np.int64))
            slope_v = self.fresh(f"{n.name}.slope_view")
            self.add("Reshape", [slope, shape], [slope_v], f"{n.name}.slope_view")
            slope = slope_v
        self.add("PRelu", [x, slope], n.outputs, n.name)

    def _ex_Transpose(self, n, a, s):
        self.add("Transpose", n.inputs, n.outputs, n.name, perm=list(a["perm"]))

    def _ex_Slice(self, n, a, s):
        r = len(s[0])
        axis = a["axis"] + r if a["axis"] < 0 else a["axis"]
        if self.opset < 10:
            self.add("Slice", n.inputs, n.outputs, n.name, starts=[a["start"]], ends=[a["end"]], axes=[axis])
            return
        ins = [n.inputs[0]] + [self.const(f"{n.name}.{k}", np.array([v], np.int64))
                               for k, v in (("starts", a["start"]), ("ends", a["end"]), ("axes", axis))]
        self.add("Slice", ins, n.outputs, n.name)

    def _reduce(self, op, n, a, s):
        r = len(s[0])
        axes = [d + r if d < 0 else d for d in a["axes"]]
        if self.opset >= 18:
            ins = [n.inputs[0], self.const(f"{n.name}.axes", np.array(axes, np.int64))]
            self.add(op, ins, n.outputs, n.name, keepdims=int(a["keepdims"]))
        else:
            self.add(op, n.inputs, n.outputs, n.name, axes=axes, keepdims=int(a["keepdims"]))

    def _ex_ReduceMean(self, n, a, s):
        self._reduce("ReduceMean", n, a, s)

    def _ex_ReduceMax(self, n, a, s):
        self._reduce("ReduceMax", n, a, s)

    def _ex_ResizeNearest(self, n, a, s):
        export_resize(self, n, a, s[0])


def _resize_scales(n, a, hw) -> list[float]:
    """The H, W scales the node maps coordinates with (null = size / input, in float32), checked
    to give exactly its output size under ONNX's floor(input * scale)."""
    f = np.float32
    out = []
    for key, o, i in (("scale_h", a["size"][0], hw[0]), ("scale_w", a["size"][1], hw[1])):
        sc = f(o) / f(i) if a[key] is None else f(a[key])
        if int(f(i) * sc) != o:
            raise OnnxError(f"node '{n.name}' (ResizeNearest): scale {float(sc)} of an axis of {i} does not "
                            f"give its output size {o} in ONNX; export at opset >= 11 with sizes")
        out.append(float(sc))
    return out


def export_resize(ex: Exporter, n: Node, a: dict, xs: tuple) -> None:
    """ResizeNearest -> Resize (opset >= 11: sizes, or scales when the node has them; coordinate and
    nearest modes), Resize-10 / Upsample (7-9: asymmetric, floor enlarging / ceil shrinking only)."""
    x, (oh, ow) = n.inputs[0], a["size"]
    if ex.opset < 11:
        sc = _resize_scales(n, a, xs[2:])
        legacy = {"ceil" if v < 1.0 else "floor" for v in sc if v != 1.0}
        if a["coord"] != "asymmetric" or len(legacy) > 1 or (legacy and legacy != {a["nearest"]}):
            ex.need(11, f"coord={a['coord']}, nearest={a['nearest']} at scales {sc}", n)
        scales = np.array([1.0, 1.0] + sc, np.float32)
        if ex.opset == 10:
            ex.add("Resize", [x, ex.const(f"{n.name}.scales", scales)], n.outputs, n.name, mode="nearest")
        elif min(sc) < 1.0:
            ex.need(10, "a shrinking nearest resize", n)
        elif ex.opset == 9:
            ex.add("Upsample", [x, ex.const(f"{n.name}.scales", scales)], n.outputs, n.name, mode="nearest")
        else:
            ex.add("Upsample", [x], n.outputs, n.name, mode="nearest", scales=scales.tolist())
        return
    empty = ex.const(f"{n.name}.empty", np.zeros(0, np.float32)) if ex.opset < 13 else ""
    kw = dict(mode="nearest", coordinate_transformation_mode=a["coord"], nearest_mode=a["nearest"])
    if a["scale_h"] is not None or a["scale_w"] is not None:
        scales = ex.const(f"{n.name}.scales", np.array([1.0, 1.0] + _resize_scales(n, a, xs[2:]), np.float32))
        ex.add("Resize", [x, empty, scales], n.outputs, n.name, **kw)
        return
    if ex.opset >= 18:
        sizes = ex.const(f"{n.name}.sizes", np.array([oh, ow], np.int64))
        kw["axes"] = [2, 3]
    else:      # sizes must name N and C too: Shape(x)[0:2] ++ [OH, OW] keeps the batch free
        shp, nc, sizes = (ex.fresh(f"{n.name}.{k}") for k in ("shape", "nc", "sizes"))
        ex.add("Shape", [x], [shp], shp)
        ex.add("Slice", [shp, ex.const(f"{n.name}.zero", np.array([0], np.int64)),
                         ex.const(f"{n.name}.two", np.array([2], np.int64))], [nc], nc)
        ex.add("Concat", [nc, ex.const(f"{n.name}.hw", np.array([oh, ow], np.int64))], [sizes], sizes, axis=0)
    ex.add("Resize", [x, empty, empty, sizes], n.outputs, n.name, **kw)


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
    # NOTE: np.require keeps a 0-d param 0-d (np.ascontiguousarray would make it (1,))
    inits = [numpy_helper.from_array(np.require(graph.weights[k], np.float32, "C"), k) for k in graph.params]
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
