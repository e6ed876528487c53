"""Softmax and the fused softmax + cross-entropy loss.

    Softmax              x (*) -> y (*), normalised along axis
    SoftmaxCrossEntropy  logits (N,K), labels (N,) int -> loss () = mean_n -Σ_k q[n,k] log softmax(logits)[n,k]
                         q = (1-ε) onehot(labels) + ε/K    (torch F.cross_entropy(label_smoothing=ε))
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import Attr, OpDef, OpError, ShapeError, expect_rank, expect_shape


# ----------------------------------------------------------------------------- Softmax
def _axis(attrs, rank):
    a = attrs["axis"]
    if not -rank <= a < rank:
        raise ShapeError("axis", f"attribute 'axis' = {a} is out of range for an input of rank {rank}")
    return a + rank if a < 0 else a


def softmax_infer(attrs, shapes):
    x = tuple(shapes[0])
    _axis(attrs, len(x))
    return [x]


def softmax_forward(attrs, xs, ctx):
    """x (*) -> y (*) = exp(x - max) / Σ exp(x - max) along axis"""
    (x,) = xs
    a = _axis(attrs, x.ndim)
    e = np.exp(x - x.max(axis=a, keepdims=True))   # stable: every exponent <= 0
    y = e / e.sum(axis=a, keepdims=True)
    return [y.astype(x.dtype, copy=False)], (y, a)


def softmax_backward(attrs, saved, gys, needs, ctx):
    y, a = saved
    (g,) = gys
    # undoes: y = softmax(x)   (dx = y * (g - Σ_axis g y))
    return [y * (g - (g * y).sum(axis=a, keepdims=True)) if needs[0] else None]


# ----------------------------------------------------------------------------- SoftmaxCrossEntropy
def _check_eps(attrs):
    e = attrs["label_smoothing"]
    if not 0 <= e < 1:
        raise OpError("label_smoothing", f"attribute 'label_smoothing' must be in [0, 1), got {e!r}")


def sce_infer(attrs, shapes):
    """logits (N,K), labels (N,) -> [()]"""
    _check_eps(attrs)
    logits, labels = tuple(shapes[0]), tuple(shapes[1])
    expect_rank("logits", logits, 2)
    if logits[0] < 1 or logits[1] < 1:
        raise ShapeError("logits", f"input 'logits' must be non-empty (N,K), got shape {logits}")
    expect_shape("labels", labels, (logits[0],))
    return [()]


def sce_forward(attrs, xs, ctx):
    """logits (N,K), labels (N,) int -> loss () of the logits dtype"""
    logits, labels = xs
    sce_infer(attrs, [np.shape(logits), np.shape(labels)])
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError("labels", f"input 'labels' must hold integers, got dtype {labels.dtype}")
    n, k = logits.shape
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        i = int(np.argmax(bad))
        raise ShapeError("labels", f"input 'labels' has label {int(labels[i])} at position {i}, "
                                   f"outside [0, {k})")
    dt = logits.dtype
    eps = attrs["label_smoothing"]
    z = logits - logits.max(axis=1, keepdims=True)            # (N,K), stable
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)                          # (N,1)
    logp = z - np.log(s)                                      # (N,K) log softmax
    q = np.full((n, k), eps / k, dtype=dt)                    # (N,K) smoothed targets
    q[np.arange(n), labels] += dt.type(1 - eps)
    loss = -(q * logp).sum() / n                              # ()
    return [np.asarray(loss, dtype=dt)], ((e / s).astype(dt, copy=False), q)


def sce_backward(attrs, saved, gys, needs, ctx):
    """g () -> dlogits (N,K), None"""
    p, q = saved
    (g,) = gys
    # undoes: loss = mean_n -Σ_k q log softmax(logits)   (dlogits = (softmax - q) / N * g)
    dx = (p - q) * (np.asarray(g, dtype=p.dtype) / p.dtype.type(p.shape[0])) if needs[0] else None
    return [dx, None]


register(
    OpDef("Softmax", ("x",), {"axis": Attr("int", -1)}, softmax_infer, softmax_forward,
          softmax_backward, doc="stable softmax along axis"),
    OpDef("SoftmaxCrossEntropy", ("logits", "labels"), {"label_smoothing": Attr("float", 0.0, min=0.0)},
          sce_infer, sce_forward, sce_backward, nondiff=("labels",),
          doc="mean over batch of -Σ q log softmax, q = (1-ε) onehot + ε/K"),
)
