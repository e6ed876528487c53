"""Which tensor of a classifier the loss reads: the logits, never its probabilities.

    t = loss_output(graph)          # the tensor training, eval loss and the feature cache's head use

Most exported classifiers (Keras, Paddle, TF, many ONNX zoo models) end in Softmax or LogSoftmax.
Cross-entropy of softmax(probabilities) trains on the wrong quantity, so the loss reads the tensor
before a final Softmax/LogSoftmax; `graph.outputs[0]` stays what inference returns.
"""
from __future__ import annotations

from .graph import Graph

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
PASS_THROUGH = ("Identity", "Reshape", "Flatten")   # shape-only nodes between the softmax and the output


def loss_output(graph: Graph) -> str:
    """The tensor the loss reads: graph.outputs[0], or the input of the Softmax/LogSoftmax that
    ends it (through shape-only nodes after it, and through the Flatten of opset < 13 exports)."""
    out = graph.outputs[0]
    producers = graph.producers()
    t = out
    while t in producers and producers[t].op in PASS_THROUGH:
        t = producers[t].inputs[0]
    n = producers.get(t)
    if n is None or n.op not in SOFTMAX_OPS:
        return out
    return n.inputs[0]
