"""Softmax, LogSoftmax and the fused softmax + cross-entropy loss.

    Softmax              x (*) -> y (*), normalised along axis
    LogSoftmax           x (*) -> y (*) = x - max - log Σ exp(x - max) along axis
    SoftmaxCrossEntropy  logits (N,K), labels (N,) int -> loss () = mean_n -Σ_k q[n,k] log softmax(logits)[n,k]
                         q = (1-ε) onehot(labels) + ε/K    (torch F.cross_entropy(label_smoothing=ε))
"""
from __future__ import annotations

import numpy as np

from .registry import register
from ._cl import elt, local_floats, reduce_wg
from .base import Attr, ClSpec, OpDef, OpError, ShapeError, expect_rank, expect_shape


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


# ----------------------------------------------------------------------------- LogSoftmax
def logsoftmax_forward(attrs, xs, ctx):
    """x (*) -> y (*) = z - log Σ exp(z), z = x - max along axis"""
    (x,) = xs
    a = _axis(attrs, x.ndim)
    z = x - x.max(axis=a, keepdims=True)           # stable: every exponent <= 0, the sum >= 1
    y = z - np.log(np.exp(z).sum(axis=a, keepdims=True))
    return [y.astype(x.dtype, copy=False)], (y, a)


def logsoftmax_backward(attrs, saved, gys, needs, ctx):
    y, a = saved
    (g,) = gys
    # undoes: y = log softmax(x)   (dx = g - exp(y) Σ_axis g)
    return [g - np.exp(y) * g.sum(axis=a, keepdims=True) if needs[0] else None]


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


# ----------------------------------------------------------------------------- OpenCL launchers
# kernels/softmax.cl: one work-group per row, tree reductions (deterministic).
def _rows(attrs, shape):
    """x shape -> (rows, K, inner): x viewed as (outer, K, inner) around the softmax axis"""
    a = _axis(attrs, len(shape))
    inner = int(np.prod(shape[a + 1:], dtype=np.int64))
    return int(np.prod(shape[:a], dtype=np.int64)) * inner, shape[a], inner


def _row_forward(kernel: str):
    """forward launcher of softmax.cl's `kernel`: one work-group per row, x -> y"""
    def forward(b, io):
        (x,), (y,) = io.x, io.y
        rows, k, inner = _rows(io.attrs, x.shape)
        wg = reduce_wg(b, "softmax.cl", kernel, k)
        b.launch("softmax.cl", kernel, (rows * wg,), (wg,), x, y, rows, k, inner, local_floats(wg))
    return forward


def _row_backward(kernel: str):
    """backward launcher of softmax.cl's `kernel`: reads the saved y and gy, writes gx"""
    def backward(b, io):
        gx = io.gx[0]
        if gx is None:
            return
        rows, k, inner = _rows(io.attrs, gx.shape)
        wg = reduce_wg(b, "softmax.cl", kernel, k)
        b.launch("softmax.cl", kernel, (rows * wg,), (wg,), io.y[0], io.gy[0], gx, rows, k, inner,
                 local_floats(wg))
    return backward


cl_softmax_forward = _row_forward("softmax_fwd")             # y = softmax(x)
cl_softmax_backward = _row_backward("softmax_bwd")           # undoes: y = softmax(x)
cl_logsoftmax_forward = _row_forward("logsoftmax_fwd")       # y = log softmax(x)
cl_logsoftmax_backward = _row_backward("logsoftmax_bwd")     # undoes: y = log softmax(x)


_LABEL_T = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
            "i8": "long", "u8": "ulong"}


def _label_defines(labels) -> dict | None:
    """kernels/softmax.cl reads labels as LABEL_T: int32 needs no define (one program build)."""
    key = f"{labels.dtype.kind}{labels.dtype.itemsize}"
    if key not in _LABEL_T:
        raise ShapeError("labels", f"input 'labels' must hold integers, got dtype {labels.dtype}")
    return None if key == "i4" else {"LABEL_T": _LABEL_T[key]}


def _sce_consts(eps, k):
    """q = (1-ε) onehot + ε/K in float32 as the reference builds it: (ε/K, 1-ε)"""
    return np.float32(eps / k), np.float32(1 - eps)


def _sce_launch(b, logits, labels, rows, dx, loss, correct, eps):
    """rows (N,4) scratch; dx None: loss only; correct None: no accuracy count"""
    n, k = logits.shape
    defs = _label_defines(labels)
    wg = reduce_wg(b, "softmax.cl", "sce_rows", k, defs, arrays=2)
    b.launch("softmax.cl", "sce_rows", (n * wg,), (wg,), logits, labels, rows, dx or rows, n, k,
             *_sce_consts(eps, k), np.float32(1) / np.float32(n), dx is not None, local_floats(wg),
             local_floats(wg), defines=defs)
    wg = reduce_wg(b, "softmax.cl", "sce_finish", n, defs)
    b.launch("softmax.cl", "sce_finish", (wg,), (wg,), rows, loss, correct or loss, n, correct is not None,
             local_floats(wg), defines=defs)


def sce_cl_state(attrs, in_shapes, out_shapes, training):
    return {"rows": ((in_shapes[0][0], 4), np.float32)}


def cl_sce_forward(b, io):
    (logits, labels), (loss,) = io.x, io.y
    _sce_launch(b, logits, labels, io.state["rows"], None, loss, None, io.attrs["label_smoothing"])


def cl_sce_backward(b, io):
    gx = io.gx[0]
    if gx is None:
        return
    logits, labels = io.x
    n, k = logits.shape
    defs = _label_defines(labels)
    # undoes: loss = mean_n -Σ_k q log softmax(logits)
    b.launch("softmax.cl", "sce_bwd", (n * k,), elt(b), logits, labels, io.state["rows"], io.gy[0], gx, n, k,
             *_sce_consts(io.attrs["label_smoothing"], k), defines=defs)


def ce_scratch_bytes(n: int) -> int:
    """Scratch cl_ce_fwd_bwd needs for a batch of n rows."""
    return 16 * n


def cl_ce_fwd_bwd(b, logits, labels, loss, correct, dlogits, scratch, label_smoothing: float = 0.0):
    """The training step's loss head in one go (no SoftmaxCrossEntropy node, no gy):
    logits (N,K) float32, labels (N,) int32 -> loss (1,) = mean cross-entropy, correct (1,) float32 =
    #(argmax == label) (numpy argmax: first max wins ties), dlogits (N,K) = (softmax - q) / N, i.e.
    d loss / d logits. scratch: >= ce_scratch_bytes(N) bytes. `correct` may be None."""
    _sce_launch(b, logits, labels, scratch, dlogits, loss, correct, label_smoothing)


register(
    OpDef("Softmax", ("x",), {"axis": Attr("int", -1)}, softmax_infer, softmax_forward,
          softmax_backward, doc="stable softmax along axis",
          cl=ClSpec(cl_softmax_forward, cl_softmax_backward, saves=("y0",))),
    OpDef("LogSoftmax", ("x",), {"axis": Attr("int", -1)}, softmax_infer, logsoftmax_forward,
          logsoftmax_backward, doc="stable log softmax along axis (torch log_softmax)",
          cl=ClSpec(cl_logsoftmax_forward, cl_logsoftmax_backward, saves=("y0",))),
    OpDef("SoftmaxCrossEntropy", ("logits", "labels"), {"label_smoothing": Attr("float", 0.0, min=0.0)},
          sce_infer, sce_forward, sce_backward, nondiff=("labels",),
          doc="mean over batch of -Σ q log softmax, q = (1-ε) onehot + ε/K",
          cl=ClSpec(cl_sce_forward, cl_sce_backward, saves=("x0", "x1"), state=sce_cl_state)),
)
