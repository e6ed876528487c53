"""Build model graphs in code (stdlib + numpy only: this runs on the phone too).

    b = GraphBuilder("tiny", input_shape=(None, 3, 32, 32), preprocess=IMAGENET_PREPROCESS, seed=0)
    x = b.conv(b.input, 16, 3, stride=2, name="features.0.0")     # -> tensor name
    x = b.relu(b.bn(x, name="features.0.1"))
    x = b.flatten(b.gap(x))
    x = b.linear(x, 10, name="classifier")
    g = b.finish({"logits": x}, labels=None)                       # validated Graph

Every method returns the name of the tensor it produced. A node's output tensor is named
after the node, so parameters read like torchvision's ("features.0.0.weight"). Nodes
without an explicit name get "<op>_<n>". Parameters belong to (`group`) the node that
owns them; BatchNorm running statistics are buffers (`trainable` false).

Shapes are tracked while building (through each op's registered `infer`), so a misfit
layer raises a ValueError naming the node at once, not at `finish`.

Initialisation is seeded (numpy default_rng(seed)), float32 and PyTorch-like:
    conv  init="fan_out"  kaiming_normal_(mode="fan_out", nonlinearity="relu"):
                          N(0, 2 / (out_channels·R·S)); bias 0  (torchvision MobileNets, ResNets)
          init="torch"    nn.Conv2d's default reset_parameters (kaiming_uniform_(a=√5)):
                          U(±1/√fan_in) for weight and bias, fan_in = C/g·R·S (torchvision AlexNet)
    linear init="normal"  N(0, 0.01), bias 0 (torchvision MobileNets)
           init="torch"   nn.Linear's default: U(±1/√in_features) for weight and bias
    bn     weight 1, bias 0, running_mean 0, running_var 1
"""
from __future__ import annotations

import copy
import math

import numpy as np

from ..ops import OpError, get_op, normalize_attrs
from .graph import Graph, Node, PackageError, ParamSpec, TensorSpec

IMAGENET_PREPROCESS = {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

CONV_INITS = ("fan_out", "torch")
LINEAR_INITS = ("normal", "torch")


def default_labels(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _pads4(pad, what: str = "pad") -> tuple[int, int, int, int]:
    """int p -> (p,p,p,p); (ph, pw) -> (ph,pw,ph,pw); (top,left,bottom,right) as is."""
    if isinstance(pad, (list, tuple)):
        if len(pad) == 2:
            return int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1])
        if len(pad) == 4:
            return tuple(int(p) for p in pad)
        raise ValueError(f"{what} must be an int, (h, w) or (top, left, bottom, right), got {pad!r}")
    return int(pad), int(pad), int(pad), int(pad)


# ------------------------------------------------------------------------------- initialisers
def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32, copy=False)


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    u = rng.random(shape, dtype=np.float32)               # [0, 1)
    u *= np.float32(2 * bound)
    u -= np.float32(bound)
    return u


def init_conv(rng, out_ch: int, in_per_group: int, kh: int, kw: int, bias: bool, init: str):
    shape = (out_ch, in_per_group, kh, kw)
    if init == "fan_out":
        w = _normal(rng, shape, math.sqrt(2.0 / (out_ch * kh * kw)))
        b = np.zeros(out_ch, np.float32) if bias else None
    elif init == "torch":
        bound = 1.0 / math.sqrt(in_per_group * kh * kw)
        w = _uniform(rng, shape, bound)
        b = _uniform(rng, (out_ch,), bound) if bias else None
    else:
        raise ValueError(f"unknown conv init {init!r} (known: {', '.join(CONV_INITS)})")
    return w, b


def init_linear(rng, out_f: int, in_f: int, bias: bool, init: str):
    if init == "normal":
        w = _normal(rng, (out_f, in_f), 0.01)
        b = np.zeros(out_f, np.float32) if bias else None
    elif init == "torch":
        bound = 1.0 / math.sqrt(in_f)
        w = _uniform(rng, (out_f, in_f), bound)
        b = _uniform(rng, (out_f,), bound) if bias else None
    else:
        raise ValueError(f"unknown linear init {init!r} (known: {', '.join(LINEAR_INITS)})")
    return w, b


# ------------------------------------------------------------------------------- builder
class GraphBuilder:
    def __init__(self, name: str, input_shape=(None, 3, 224, 224), preprocess: dict | None = None,
                 seed: int = 0, input_name: str = "input"):
        shape = tuple(None if d is None else int(d) for d in input_shape)
        if not shape or any(d is not None and d <= 0 for d in shape):
            raise ValueError(f"input_shape must hold positive ints or None, got {input_shape!r}")
        self.name = name
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.input = input_name
        layout = {4: "NCHW", 2: "NC"}.get(len(shape), "")
        self.inputs = [TensorSpec(input_name, shape, "float32", layout, copy.deepcopy(preprocess))]
        self.nodes: list[Node] = []
        self.params: dict[str, ParamSpec] = {}
        self.weights: dict[str, np.ndarray] = {}
        # shapes at batch 1 (the batch dimension never matters to a layer's parameters)
        self.shapes: dict[str, tuple] = {input_name: tuple(1 if d is None else d for d in shape)}
        self._node_names: set[str] = set()
        self._counts: dict[str, int] = {}

    # --------------------------------------------------------------------- core
    def shape(self, t: str) -> tuple:
        """Shape of tensor t at batch 1."""
        return self.shapes[t]

    def channels(self, t: str) -> int:
        return self.shapes[t][1]

    def _auto_name(self, op: str) -> str:
        base = op.lower()
        while True:
            n = self._counts.get(base, 0)
            self._counts[base] = n + 1
            cand = f"{base}_{n}"
            if cand not in self._node_names and cand not in self.shapes:
                return cand

    def op(self, op_name: str, inputs: list[str], attrs: dict | None = None, name: str | None = None,
           params: dict[str, tuple[np.ndarray, bool]] | None = None) -> str:
        """Append one node. `params` = {slot: (array, trainable)}: each becomes the param
        "<name>.<slot>", owned by this node, and is appended to the node's inputs in order."""
        name = name or self._auto_name(op_name)
        if name in self._node_names:
            raise ValueError(f"node name '{name}' is used twice")
        if name in self.shapes:
            raise ValueError(f"node name '{name}' clashes with an existing tensor")
        for t in inputs:
            if t not in self.shapes:
                raise ValueError(f"node '{name}' ({op_name}): input '{t}' does not exist")
        ins = list(inputs)
        new_params = {}
        for slot, (arr, trainable) in (params or {}).items():
            pname = f"{name}.{slot}"
            if pname in self.shapes or pname in self.params:
                raise ValueError(f"node '{name}': parameter name '{pname}' is already taken")
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            new_params[pname] = (arr, trainable)
            ins.append(pname)
        try:
            opdef = get_op(op_name)
            a = normalize_attrs(opdef, attrs or {})
            shapes_in = [self.shapes[t] for t in inputs] + [p[0].shape for p in new_params.values()]
            outs = opdef.infer(a, shapes_in)
        except OpError as e:
            raise ValueError(f"node '{name}' ({op_name}): {e.message}") from None
        if len(outs) != 1:
            raise ValueError(f"node '{name}' ({op_name}): builder nodes have one output, op gives {len(outs)}")
        out_shape = tuple(int(d) for d in outs[0])
        if any(d <= 0 for d in out_shape):
            raise ValueError(f"node '{name}' ({op_name}): output shape {out_shape} is empty "
                             f"(input {self.shapes[inputs[0]]} too small?)")
        for pname, (arr, trainable) in new_params.items():
            self.params[pname] = ParamSpec(tuple(arr.shape), "float32", name, bool(trainable))
            self.weights[pname] = arr
            self.shapes[pname] = tuple(arr.shape)
        self.nodes.append(Node(op_name, name, ins, [name], dict(attrs or {})))
        self._node_names.add(name)
        self.shapes[name] = out_shape
        return name

    # --------------------------------------------------------------------- layers with parameters
    def conv(self, x: str, out_ch: int, k, stride=1, pad=None, groups: int = 1, bias: bool = False,
             dilation=1, name: str | None = None, init: str = "fan_out") -> str:
        """Conv2d; pad None = (k-1)//2·dilation each side ("same" at stride 1 for odd k)."""
        c = self.channels(x)
        kh, kw = _pair(k, "kernel")
        dh, dw = _pair(dilation, "dilation")
        if pad is None:
            pad = ((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
        groups = int(groups)
        if groups < 1 or c % groups or out_ch % groups:
            raise ValueError(f"conv '{name}': groups={groups} must divide in ({c}) and out ({out_ch}) channels")
        w, b = init_conv(self.rng, int(out_ch), c // groups, kh, kw, bias, init)
        params = {"weight": (w, True)}
        if b is not None:
            params["bias"] = (b, True)
        attrs = {"out_channels": int(out_ch), "kernel": [kh, kw], "stride": list(_pair(stride, "stride")),
                 "pads": list(_pads4(pad)), "dilation": [dh, dw], "groups": groups}
        return self.op("Conv2d", [x], attrs, name, params)

    def linear(self, x: str, out_features: int, name: str | None = None, bias: bool = True,
               init: str = "normal") -> str:
        s = self.shape(x)
        if len(s) != 2:
            raise ValueError(f"linear '{name}': input '{x}' has shape {s}; flatten it first")
        w, b = init_linear(self.rng, int(out_features), s[1], bias, init)
        params = {"weight": (w, True)}
        if b is not None:
            params["bias"] = (b, True)
        return self.op("Gemm", [x], {"out_features": int(out_features)}, name, params)

    def bn(self, x: str, name: str | None = None, eps: float = 1e-5, momentum: float = 0.1) -> str:
        c = self.channels(x)
        params = {"weight": (np.ones(c, np.float32), True), "bias": (np.zeros(c, np.float32), True),
                  "running_mean": (np.zeros(c, np.float32), False),
                  "running_var": (np.ones(c, np.float32), False)}
        return self.op("BatchNorm", [x], {"eps": float(eps), "momentum": float(momentum)}, name, params)

    # --------------------------------------------------------------------- activations
    def relu(self, x: str, name: str | None = None) -> str:
        return self.op("Relu", [x], {}, name)

    def clip(self, x: str, lo: float | None, hi: float | None, name: str | None = None) -> str:
        return self.op("Clip", [x], {"min": None if lo is None else float(lo),
                                     "max": None if hi is None else float(hi)}, name)

    def relu6(self, x: str, name: str | None = None) -> str:
        return self.clip(x, 0.0, 6.0, name)

    def hardswish(self, x: str, name: str | None = None) -> str:
        return self.op("HardSwish", [x], {}, name)

    def hardsigmoid(self, x: str, name: str | None = None) -> str:
        return self.op("HardSigmoid", [x], {}, name)

    def sigmoid(self, x: str, name: str | None = None) -> str:
        return self.op("Sigmoid", [x], {}, name)

    def leaky_relu(self, x: str, alpha: float = 0.01, name: str | None = None) -> str:
        return self.op("LeakyRelu", [x], {"alpha": float(alpha)}, name)

    def prelu(self, x: str, shared: bool = False, init: float = 0.25, name: str | None = None) -> str:
        """PRelu with a trainable slope: one per channel (C,), or one for all (1,) when shared
        (torch nn.PReLU(num_parameters=C or 1, init))."""
        c = 1 if shared else self.channels(x)
        return self.op("PRelu", [x], {}, name, params={"slope": (np.full(c, init, np.float32), True)})

    def act(self, x: str, kind: str | None, name: str | None = None) -> str:
        """kind: "relu" | "relu6" | "hardswish" | "hardsigmoid" | "sigmoid" | "leaky_relu" (0.01) |
        "prelu" (per channel) | None (identity: no node)."""
        if kind is None:
            return x
        fns = {"relu": self.relu, "relu6": self.relu6, "hardswish": self.hardswish,
               "hardsigmoid": self.hardsigmoid, "sigmoid": self.sigmoid, "leaky_relu": self.leaky_relu,
               "prelu": self.prelu}
        if kind not in fns:
            raise ValueError(f"unknown activation {kind!r} (known: {', '.join(fns)})")
        return fns[kind](x, name=name)

    # --------------------------------------------------------------------- pooling, normalisation, misc
    def maxpool(self, x: str, k, stride=None, pad=0, ceil_mode: bool = False, dilation=1,
                name: str | None = None) -> str:
        attrs = {"kernel": list(_pair(k, "kernel")),
                 "stride": None if stride is None else list(_pair(stride, "stride")),
                 "pads": list(_pads4(pad)), "ceil_mode": bool(ceil_mode)}
        if _pair(dilation, "dilation") != (1, 1):       # written only when used: packages stay as they were
            attrs["dilation"] = list(_pair(dilation, "dilation"))
        return self.op("MaxPool", [x], attrs, name)

    def avgpool(self, x: str, k, stride=None, pad=0, ceil_mode: bool = False,
                count_include_pad: bool = False, dilation=1, name: str | None = None) -> str:
        attrs = {"kernel": list(_pair(k, "kernel")),
                 "stride": None if stride is None else list(_pair(stride, "stride")),
                 "pads": list(_pads4(pad)), "ceil_mode": bool(ceil_mode),
                 "count_include_pad": bool(count_include_pad)}
        if _pair(dilation, "dilation") != (1, 1):
            attrs["dilation"] = list(_pair(dilation, "dilation"))
        return self.op("AveragePool", [x], attrs, name)

    def gap(self, x: str, name: str | None = None) -> str:
        return self.op("GlobalAveragePool", [x], {}, name)

    def lrn(self, x: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
            name: str | None = None) -> str:
        return self.op("LRN", [x], {"size": int(size), "alpha": float(alpha), "beta": float(beta),
                                    "bias": float(bias)}, name)

    def dropout(self, x: str, ratio: float = 0.5, name: str | None = None) -> str:
        return self.op("Dropout", [x], {"ratio": float(ratio)}, name)

    def flatten(self, x: str, axis: int = 1, name: str | None = None) -> str:
        return self.op("Flatten", [x], {"axis": int(axis)}, name)

    def reshape(self, x: str, shape, name: str | None = None) -> str:
        return self.op("Reshape", [x], {"shape": [int(d) for d in shape]}, name)

    def add(self, a: str, b: str, name: str | None = None) -> str:
        return self.op("Add", [a, b], {}, name)

    def sub(self, a: str, b: str, name: str | None = None) -> str:
        return self.op("Sub", [a, b], {}, name)

    def mul(self, a: str, b: str, name: str | None = None) -> str:
        return self.op("Mul", [a, b], {}, name)

    def div(self, a: str, b: str, name: str | None = None) -> str:
        return self.op("Div", [a, b], {}, name)

    def concat(self, xs: list[str], axis: int = 1, name: str | None = None) -> str:
        return self.op("Concat", list(xs), {"axis": int(axis)}, name)

    def pad(self, x: str, pads, mode: str = "constant", value: float = 0.0, name: str | None = None) -> str:
        """pads in ONNX order [begin_0, ..., begin_r-1, end_0, ..., end_r-1]; mode constant/reflect/edge."""
        return self.op("Pad", [x], {"pads": [int(p) for p in pads], "mode": mode, "value": float(value)}, name)

    def softmax(self, x: str, axis: int = -1, name: str | None = None) -> str:
        return self.op("Softmax", [x], {"axis": int(axis)}, name)

    def log_softmax(self, x: str, axis: int = -1, name: str | None = None) -> str:
        return self.op("LogSoftmax", [x], {"axis": int(axis)}, name)

    def identity(self, x: str, name: str | None = None) -> str:
        return self.op("Identity", [x], {}, name)

    # --------------------------------------------------------------------- finish
    def finish(self, outputs, labels: list[str] | None = None, meta: dict | None = None) -> Graph:
        """Make the validated Graph.

        outputs: a tensor name, a list of them, or {public_name: tensor} to rename the
        tensors (e.g. {"logits": "classifier.1"}). labels: class names for the (single)
        rank-2 output, checked against its width; None = no labels."""
        if isinstance(outputs, str):
            outputs = [outputs]
        if isinstance(outputs, dict):
            rename = {t: pub for pub, t in outputs.items()}
            out_names = list(outputs)
        else:
            rename = {}
            out_names = list(outputs)
        if not out_names:
            raise ValueError("finish: no outputs given")
        nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in self.nodes]
        shapes = dict(self.shapes)
        for t, pub in rename.items():
            if t not in shapes:
                raise ValueError(f"finish: output tensor '{t}' does not exist")
            if pub == t:
                continue
            if pub in shapes:
                raise ValueError(f"finish: output name '{pub}' is already a tensor of the graph")
            for n in nodes:
                n.inputs = [pub if i == t else i for i in n.inputs]
                n.outputs = [pub if o == t else o for o in n.outputs]
            shapes[pub] = shapes.pop(t)
        for o in out_names:
            if o not in shapes:
                raise ValueError(f"finish: output tensor '{o}' does not exist")
        if labels is not None:
            labels = [str(s) for s in labels]
            s = shapes[out_names[0]]
            if len(s) == 2 and len(labels) != s[1]:
                raise ValueError(f"finish: {len(labels)} labels for output '{out_names[0]}' of width {s[1]}")
        g = Graph(self.name, copy.deepcopy(self.inputs), out_names, nodes, dict(self.params),
                  dict(self.weights), labels, copy.deepcopy(meta or {}))
        try:
            g.validate()
        except PackageError as e:
            raise ValueError(f"graph '{self.name}' is invalid: {e}") from None
        return g


# ------------------------------------------------------------------------------- head surgery
def replace_head(graph: Graph, num_classes: int, seed: int = 0, labels: list[str] | None = None) -> Graph:
    """A copy of `graph` whose classifier (the last Gemm node) predicts `num_classes` classes.

    The classifier's weight (and bias, if it has one) are replaced by freshly initialised
    ones, N(0, 0.01) and 0 (torchvision's MobileNet classifier init, seeded by `seed`);
    every other parameter is copied unchanged. Labels become `labels` or class_0...
    Raises ValueError when the graph has no Gemm or num_classes < 1."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    num_classes = int(num_classes)
    gemms = [i for i, n in enumerate(graph.nodes) if n.op == "Gemm"]
    if not gemms:
        raise ValueError(f"graph '{graph.name}' has no Gemm (fully connected) node to replace")
    idx = gemms[-1]
    head = graph.nodes[idx]
    if len(head.inputs) < 2 or head.inputs[1] not in graph.params:
        raise ValueError(f"node '{head.name}': the classifier's weight is not a param")
    w_name = head.inputs[1]
    b_name = head.inputs[2] if len(head.inputs) > 2 else None
    in_f = int(graph.params[w_name].shape[1])
    if labels is None:
        labels = default_labels(num_classes)
    labels = [str(s) for s in labels]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for {num_classes} classes")

    rng = np.random.default_rng(seed)
    w, b = init_linear(rng, num_classes, in_f, b_name is not None, "normal")
    nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in graph.nodes]
    nodes[idx].attrs["out_features"] = num_classes
    params = {k: ParamSpec(tuple(p.shape), p.dtype, p.group, p.trainable) for k, p in graph.params.items()}
    weights = {k: np.array(v, copy=True) for k, v in graph.weights.items()}
    params[w_name].shape = tuple(w.shape)
    weights[w_name] = w
    if b_name is not None:
        params[b_name].shape = tuple(b.shape)
        weights[b_name] = b
    meta = copy.deepcopy(graph.meta)
    if "num_classes" in meta:
        meta["num_classes"] = num_classes
    g = Graph(graph.name, copy.deepcopy(graph.inputs), list(graph.outputs), nodes, params, weights,
              labels, meta, graph.format)
    try:
        g.validate()
    except PackageError as e:
        raise ValueError(f"replace_head: the new graph is invalid: {e}") from None
    return g


# ------------------------------------------------------------------------------- re-initialisation
def reinit(graph: Graph, seed: int = 0, conv_init: str | None = None, linear_init: str | None = None) -> Graph:
    """A copy of `graph` with every parameter freshly initialised (the `--init scratch` stage).

    Nodes are visited in graph order with default_rng(seed), drawing exactly what GraphBuilder
    draws, so reinit(zoo.build(name, seed=s1), s2) has the weights of zoo.build(name, seed=s2).
    Conv2d -> conv_init, Gemm -> linear_init, BatchNorm -> weight 1, bias 0, running_mean 0,
    running_var 1. The defaults are the zoo's: "torch"/"torch" for AlexNets (meta.arch), else
    "fan_out"/"normal"; meta["init"] = {"conv": ..., "linear": ...} overrides them."""
    arch = str(graph.meta.get("arch", ""))
    given = graph.meta.get("init") if isinstance(graph.meta.get("init"), dict) else {}
    conv_init = conv_init or given.get("conv") or ("torch" if arch.startswith("alexnet") else "fan_out")
    linear_init = linear_init or given.get("linear") or ("torch" if arch.startswith("alexnet") else "normal")
    rng = np.random.default_rng(seed)
    weights = {k: np.array(v, copy=True) for k, v in graph.weights.items()}
    for n in graph.nodes:
        slots = dict(zip(get_op(n.op).slot_names(len(n.inputs)), n.inputs))
        w, b = slots.get("weight"), slots.get("bias")
        if n.op == "Conv2d":
            k, cg, kh, kw = graph.params[w].shape
            nw, nb = init_conv(rng, k, cg, kh, kw, b is not None, conv_init)
        elif n.op == "Gemm":
            out_f, in_f = graph.params[w].shape
            nw, nb = init_linear(rng, out_f, in_f, b is not None, linear_init)
        elif n.op == "BatchNorm":
            c = graph.params[w].shape[0]
            nw, nb = np.ones(c, np.float32), np.zeros(c, np.float32)
            weights[slots["running_mean"]] = np.zeros(c, np.float32)
            weights[slots["running_var"]] = np.ones(c, np.float32)
        else:
            continue
        weights[w] = nw
        if b is not None:
            weights[b] = nb
    g = Graph(graph.name, copy.deepcopy(graph.inputs), list(graph.outputs),
              [Node(n.op, n.name, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in graph.nodes],
              {k: ParamSpec(tuple(p.shape), p.dtype, p.group, p.trainable) for k, p in graph.params.items()},
              weights, graph.labels, copy.deepcopy(graph.meta), graph.format)
    g.validate()
    return g
