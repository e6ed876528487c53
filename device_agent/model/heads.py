"""Which tensor of a classifier the loss reads: the logits, never its probabilities.

    t = loss_output(graph)          # the tensor training, eval loss and the feature cache's head use
    g = loss_graph(graph)           # the graph training runs: one output, the (N,K) logits

Most exported classifiers (Keras, Paddle, TF, many ONNX zoo models) end in Softmax or LogSoftmax.
Cross-entropy of softmax(probabilities) trains on the wrong quantity, so the loss reads the tensor
before a final Softmax/LogSoftmax; `graph.outputs[0]` stays what inference returns.

The forms recognised after the logits z (ONNX exports at opset 11 and 13, torch.nn heads):
    z (N,K)        -> Softmax|LogSoftmax(axis 1 or -1)
    z (N,K,1,1)    -> Softmax|LogSoftmax(axis 1)                    (opset >= 13, a conv head)
    z (N,K,1,1)    -> Flatten(1) -> Softmax(-1) -> Reshape(N,K,1,1) (opset < 13 import of the same)
each optionally followed by shape-only nodes (Identity, Reshape, Flatten). A softmax over any other
axis (the batch, or one of several non-1 axes: a per-pixel softmax) is not a class softmax and is
left in place. The loss reads z reshaped to (N, K): loss_graph appends a Flatten when z has rank > 2.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
PASS_THROUGH = ("Identity", "Reshape", "Flatten")   # shape-only nodes between the softmax and the output


def _class_axis(shape: tuple, axis: int) -> bool:
    """True when a softmax over `axis` of `shape` (N, ...) normalises one score per class: the axis
    is not the batch and every other non-batch dimension is 1."""
    r = len(shape)
    a = axis + r if axis < 0 else axis
    return 0 < a < r and all(d == 1 for i, d in enumerate(shape) if i not in (0, a))


def loss_output(graph: Graph) -> str:
    """The tensor the loss reads: graph.outputs[0], or the input of the class Softmax/LogSoftmax that
    ends it (through shape-only nodes after it; for an opset < 13 export, the Flatten's output).
    Its values reshaped to (N, -1) are the logits."""
    out = graph.outputs[0]
    producers = graph.producers()
    t = out
    while t in producers and producers[t].op in PASS_THROUGH:
        t = producers[t].inputs[0]
    n = producers.get(t)
    if n is None or n.op not in SOFTMAX_OPS:
        return out
    shapes = graph.infer_shapes(batch=2)
    x = n.inputs[0]
    batch = shapes[graph.inputs[0].name][0]
    if shapes[x][0] != batch or not _class_axis(shapes[x], int(graph.attrs_of(n)["axis"])):
        return out
    return x


def loss_graph(graph: Graph) -> Graph:
    """The graph training and evaluation run: the nodes that compute loss_output(graph), with that
    tensor (flattened to (N, K) when its rank is > 2) as the one output. The graph itself when it
    already is one (a model that ends in its logits), so such models train exactly as before."""
    t = loss_output(graph)
    shapes = graph.infer_shapes(batch=1)
    flat = len(shapes[t]) > 2
    if t == graph.outputs[0] and len(graph.outputs) == 1 and not flat:
        return graph
    need, keep = {t}, []
    for n in reversed(graph.nodes):
        if any(o in need for o in n.outputs):
            keep.append(Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs)))
            need.update(n.inputs)
    keep.reverse()
    out = t
    if flat:
        names = {n.name for n in graph.nodes} | set(shapes)
        out = _fresh(f"{t}.logits", names)
        keep.append(Node("Flatten", _fresh(f"{t}.flatten", names), [t], [out], {"axis": 1}))
    used = [k for k in graph.params if k in need]
    g = Graph(graph.name, graph.inputs, [out], keep, {k: graph.params[k] for k in used},
              {k: graph.weights[k] for k in used}, graph.labels, graph.meta, graph.format)
    return g.validate()


def num_classes(graph: Graph) -> int:
    """K: the width of the logits the loss reads."""
    shapes = graph.infer_shapes(batch=1)
    return int(np.prod(shapes[loss_output(graph)][1:], dtype=np.int64))


def _fresh(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}{i}", i + 1
    return out
