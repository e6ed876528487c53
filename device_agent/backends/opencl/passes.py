"""Graph rewrites a Plan applies before it allocates anything: BN folded into the conv before it,
activations fused into their producer, and which nodes are frozen.

    record = {}
    g = fold_batchnorm(graph, only={"bn1"}, record=record)   # conv1 + bn1 -> conv1 (folded weight/bias)
    acts = {}
    g = fuse_activations(g, frozen_nodes(g, trainable), acts)   # bn1 + relu1 -> bn1 (acts["bn1"] = "relu")
"""
from __future__ import annotations

import copy

import numpy as np

from ...model.graph import Graph
from ...ops import get_op, normalize_attrs


def _folded(w, b0, gamma, beta, mean, var, eps) -> tuple[np.ndarray, np.ndarray]:
    """conv (w, b0) followed by BN with statistics (mean, var) -> one conv, in float64:
    w' = w·γ/σ, b' = (b0 − μ)·γ/σ + β, σ = sqrt(var + eps)."""
    gamma, beta, mean, var = (np.asarray(t, np.float64) for t in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    w = np.asarray(w, np.float64) * scale[:, None, None, None]
    b0 = 0.0 if b0 is None else np.asarray(b0, np.float64)
    return w.astype(np.float32), ((b0 - mean) * scale + beta).astype(np.float32)


def fold_batchnorm(graph: Graph, only: set[str] | None = None, record: dict | None = None) -> Graph:
    """Graph with every Conv2d -> BatchNorm pair (conv output read only by the BN) folded into the
    conv's weight and bias (`_folded`); `only`: the BN nodes that may fold (None: all).
    `record` gets {bn name: (conv weight, conv bias or None, folded bias, [γ, β, μ, var], eps)}."""
    g = copy.copy(graph)
    g.nodes = [copy.copy(n) for n in graph.nodes]
    g.params = dict(graph.params)
    g.weights = dict(graph.weights)
    consumers = g.consumers()
    producers = g.producers()
    drop: set[str] = set()
    for bn in g.nodes:
        if bn.op != "BatchNorm" or (only is not None and bn.name not in only):
            continue
        conv = producers.get(bn.inputs[0])
        if conv is None or conv.op != "Conv2d" or len(consumers[bn.inputs[0]]) != 1 \
                or bn.inputs[0] in g.outputs:
            continue
        eps = normalize_attrs(get_op("BatchNorm"), bn.attrs)["eps"]
        wname = conv.inputs[1]
        b0 = conv.inputs[2] if len(conv.inputs) > 2 else None
        bname = b0 or f"{conv.name}.folded_bias"
        w, b = _folded(g.weights[wname], None if b0 is None else g.weights[b0],
                       *(g.weights[t] for t in bn.inputs[1:5]), eps)
        g.weights[wname], g.weights[bname] = w, b
        g.params[bname] = copy.copy(g.params[wname])
        g.params[bname].shape = (w.shape[0],)
        if record is not None:
            record[bn.name] = (wname, b0, bname, list(bn.inputs[1:5]), eps)
        conv.inputs = list(conv.inputs[:2]) + [bname]
        conv.outputs = list(bn.outputs)    # the conv now produces the BN's tensor: names stay stable
        drop.add(bn.name)
        for t in bn.inputs[1:5]:
            g.params.pop(t, None)
            g.weights.pop(t, None)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g


def frozen_nodes(graph: Graph, trainable: set[str]) -> set[str]:
    """Nodes no gradient passes through (a frozen prefix): none of their inputs depends on a
    trainable parameter (so their own parameters are frozen too)."""
    req = set(trainable)
    out = set()
    for n in graph.nodes:
        if any(t in req for t in n.inputs):
            req.update(n.outputs)
        else:
            out.add(n.name)
    return out


def fuse_activations(graph: Graph, frozen: set[str], record: dict) -> Graph:
    """Graph with each producer -> Relu or Clip(0, 6) pair (the producer's output read only by the
    activation) merged into the producer, which then writes the activation's tensor; `record` gets
    {producer name: "relu" | "relu6"} (the launchers' `io.act`). Producers: BatchNorm always (its
    backward applies the activation's mask, read from the output), Conv2d/Gemm only when both nodes
    are `frozen` (their backward knows no activation)."""
    g = copy.copy(graph)
    g.nodes = [copy.copy(n) for n in graph.nodes]
    consumers = g.consumers()
    producers = g.producers()
    drop: set[str] = set()
    for a in g.nodes:
        if a.op not in ("Relu", "Clip"):
            continue
        kind = "relu"
        if a.op == "Clip":
            at = normalize_attrs(get_op("Clip"), a.attrs)
            kind = "relu6" if (at["min"], at["max"]) == (0.0, 6.0) else None
        p = producers.get(a.inputs[0])
        if kind is None or p is None or p.name in record or len(consumers[a.inputs[0]]) != 1 \
                or a.inputs[0] in g.outputs:
            continue
        if not (p.op == "BatchNorm" or p.op in ("Conv2d", "Gemm") and {p.name, a.name} <= frozen):
            continue
        p.outputs = list(a.outputs)
        record[p.name] = kind
        drop.add(a.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return g
