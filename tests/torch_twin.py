"""TorchTwin: an independent PyTorch interpreter of THOMAS graphs (the oracle for whole models).

    tw = TorchTwin(graph, dtype=torch.float64)
    outs = tw.forward({"input": x}, training=False, bn_batch_stats=True)   # name -> torch tensor
    loss = tw.loss(outs["logits"], labels)                                # mean cross-entropy
    grads = tw.grads(loss)                                                # param name -> numpy array
    tw.buffers()                                                          # BN running stats (numpy)

Every param is a torch tensor of `dtype`; trainable ones (or those in `trainable`) have
requires_grad. Nodes run through torch.nn.functional equivalents written from docs/OPS.md,
never through our numpy ops. BatchNorm with bn_batch_stats updates the running statistics
in place exactly as torch's BatchNorm2d does (momentum, unbiased variance).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from device_agent.model.graph import Graph


def _sym(pads):
    """[top, left, bottom, right] -> (ph, pw) if symmetric, else None."""
    t, l, b, r = pads
    return (t, l) if (t == b and l == r) else None


def _torch_pad4(pads):
    """[top, left, bottom, right] -> F.pad order (left, right, top, bottom)."""
    t, l, b, r = pads
    return (l, r, t, b)


def _slice_span(start, end, d):
    """(offset, length) of x[start:end] along an axis of length d, Python clamping"""
    start = max(0, start + d) if start < 0 else min(start, d)
    end = max(0, end + d) if end < 0 else min(end, d)
    return start, max(0, end - start)


def _nearest_index(out_len, in_len, scale, coord, nearest):
    """ONNX Resize nearest's source indices (docs/OPS.md), float32 maths in torch."""
    f32 = torch.float32
    s = torch.tensor(out_len, dtype=f32) / torch.tensor(in_len, dtype=f32) if scale is None else \
        torch.tensor(scale, dtype=f32)
    o = torch.arange(out_len, dtype=f32)
    half = torch.tensor(0.5, dtype=f32)
    if coord == "asymmetric":
        xo = o / s
    elif coord == "half_pixel" or (coord == "pytorch_half_pixel" and out_len > 1):
        xo = (o + half) / s - half
    elif coord == "tf_half_pixel_for_nn":
        xo = (o + half) / s
    elif coord == "align_corners" and out_len > 1:
        xo = o * torch.tensor(in_len - 1, dtype=f32) / torch.tensor(out_len - 1, dtype=f32)
    else:
        xo = torch.zeros(out_len, dtype=f32)
    fl = torch.floor(xo)
    idx = {"floor": fl, "ceil": torch.ceil(xo), "round_prefer_floor": fl + (xo - fl > half).to(f32),
           "round_prefer_ceil": fl + (xo - fl >= half).to(f32)}[nearest]
    return idx.long().clamp(0, in_len - 1)


def _dilated_avg_pool(x, k, s, d, pads, ceil, cip):
    """AveragePool with dilation (OPS.md; ONNX AveragePool-19): window sums and tap counts of the
    zero-padded input through F.unfold, the input padded past its end to hold ceil mode's last window."""
    pt, pl, pb, pr = pads
    size = []
    for n, kk, ss, dd, p0, p1 in ((x.shape[2], k[0], s[0], d[0], pt, pb), (x.shape[3], k[1], s[1], d[1], pl, pr)):
        span = n + p0 + p1 - dd * (kk - 1) - 1
        o = (-(-span // ss) if ceil else span // ss) + 1
        size.append(o - 1 if ceil and (o - 1) * ss >= n + p0 else o)
    (oh, ow), (h, w) = size, x.shape[2:]
    eb = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1 - pt - h     # rows after x the windows reach
    er = (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1 - pl - w

    def cover(t):
        return F.pad(t, (pl, max(er, 0), pt, max(eb, 0)))[:, :, :pt + h + eb, :pl + w + er]

    mask = cover(torch.ones((1, 1, h, w), dtype=x.dtype))
    if cip:
        mask[:, :, :pt + h + pb, :pl + w + pr] = 1.0
    count = F.unfold(mask, k, dilation=d, stride=s).sum(1).reshape(1, 1, oh, ow)
    cols = F.unfold(cover(x), k, dilation=d, stride=s)
    n, c = x.shape[:2]
    return cols.reshape(n, c, k[0] * k[1], oh * ow).sum(2).reshape(n, c, oh, ow) / count


class TorchTwin:
    def __init__(self, graph: Graph, dtype=torch.float32, trainable: set[str] | None = None):
        self.graph = graph
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}
        train = {k for k, p in graph.params.items() if p.trainable} if trainable is None else set(trainable)
        self.trainable = train
        for k in graph.params:
            t = torch.tensor(np.asarray(graph.weights[k]), dtype=dtype)
            if k in train:
                t.requires_grad_(True)
            self.params[k] = t
        self.env: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ running
    def forward(self, feeds: dict, training: bool = False, bn_batch_stats: bool | None = None,
                keep_all: bool = False) -> dict[str, torch.Tensor]:
        bn_batch = training if bn_batch_stats is None else bn_batch_stats
        env: dict[str, torch.Tensor] = dict(self.params)
        for spec in self.graph.inputs:
            x = feeds[spec.name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
            env[spec.name] = x.to(self.dtype) if x.is_floating_point() else x
        for n in self.graph.nodes:
            a = self.graph.attrs_of(n)
            xs = [env[t] for t in n.inputs]
            fn = getattr(self, f"_op_{n.op}", None)
            if fn is None:
                raise NotImplementedError(f"TorchTwin: op {n.op} (node '{n.name}')")
            y = fn(a, xs, training=training, bn_batch=bn_batch)
            (out,) = n.outputs
            env[out] = y
        if keep_all:
            self.env = env
        return {o: env[o] for o in self.graph.outputs}

    @staticmethod
    def loss(logits: torch.Tensor, labels, label_smoothing: float = 0.0) -> torch.Tensor:
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        return F.cross_entropy(logits, lab, reduction="mean", label_smoothing=label_smoothing)

    def grads(self, loss: torch.Tensor) -> dict[str, np.ndarray]:
        names = [k for k in self.params if k in self.trainable]
        gs = torch.autograd.grad(loss, [self.params[k] for k in names], allow_unused=True)
        return {k: (np.zeros(tuple(self.params[k].shape)) if g is None else g.detach().numpy())
                for k, g in zip(names, gs)}

    def buffers(self) -> dict[str, np.ndarray]:
        return {k: self.params[k].detach().numpy().copy()
                for k, p in self.graph.params.items() if not p.trainable}

    # ------------------------------------------------------------------ ops
    def _op_Conv2d(self, a, xs, **_):
        x, w = xs[0], xs[1]
        b = xs[2] if len(xs) > 2 else None
        pads = a["pads"]
        sym = _sym(pads)
        if sym is None:
            x, sym = F.pad(x, _torch_pad4(pads)), (0, 0)
        return F.conv2d(x, w, b, stride=a["stride"], padding=sym, dilation=a["dilation"], groups=a["groups"])

    def _op_Gemm(self, a, xs, **_):
        return F.linear(xs[0], xs[1], xs[2] if len(xs) > 2 else None)

    def _op_BatchNorm(self, a, xs, bn_batch, **_):
        x, w, b, rm, rv = xs
        # running stats are plain tensors (no grad): torch updates them in place in batch mode
        return F.batch_norm(x, rm, rv, w, b, training=bn_batch, momentum=a["momentum"], eps=a["eps"])

    def _op_Relu(self, a, xs, **_):
        return F.relu(xs[0])

    def _op_Clip(self, a, xs, **_):
        x = xs[0]
        lo, hi = a["min"], a["max"]
        if lo is not None and hi is not None:
            return F.hardtanh(x, lo, hi)          # gradient strictly inside (lo, hi), like relu6
        y = x
        if lo is not None:
            y = torch.where(y > lo, y, torch.full_like(y, lo))
        if hi is not None:
            y = torch.where(y < hi, y, torch.full_like(y, hi))
        return y

    def _op_HardSigmoid(self, a, xs, **_):
        x = xs[0]
        if abs(a["alpha"] - 1 / 6) < 1e-12 and a["beta"] == 0.5 and x.dtype == torch.float32:
            return F.hardsigmoid(x)
        # NOTE torch's hardsigmoid backward multiplies by the float32 constant 1.0f/6.0f even
        # for float64 tensors (off by 3e-8 relative), so the float64 twin spells it out.
        return F.hardtanh(a["alpha"] * x + a["beta"], 0.0, 1.0)

    def _op_HardSwish(self, a, xs, **_):
        return F.hardswish(xs[0])

    def _op_Sigmoid(self, a, xs, **_):
        return torch.sigmoid(xs[0])

    def _op_Identity(self, a, xs, **_):
        return xs[0]

    def _op_MaxPool(self, a, xs, **_):
        x = xs[0]
        k = a["kernel"]
        s = a["stride"] if a["stride"] is not None else k
        pads = a["pads"]
        sym = _sym(pads)
        if sym is None or sym[0] > k[0] // 2 or sym[1] > k[1] // 2:
            x, sym = F.pad(x, _torch_pad4(pads), value=float("-inf")), (0, 0)
        return F.max_pool2d(x, k, s, sym, dilation=a["dilation"], ceil_mode=a["ceil_mode"])

    def _op_AveragePool(self, a, xs, **_):
        x = xs[0]
        k = a["kernel"]
        s = a["stride"] if a["stride"] is not None else k
        pads = a["pads"]
        if tuple(a["dilation"]) != (1, 1):     # torch avg_pool2d has no dilation
            return _dilated_avg_pool(x, k, s, a["dilation"], pads, a["ceil_mode"], a["count_include_pad"])
        sym = _sym(pads)
        if sym is not None and sym[0] <= k[0] // 2 and sym[1] <= k[1] // 2:
            return F.avg_pool2d(x, k, s, sym, ceil_mode=a["ceil_mode"],
                                count_include_pad=a["count_include_pad"])
        if a["ceil_mode"]:
            raise NotImplementedError("TorchTwin: AveragePool with asymmetric pads and ceil_mode")
        xp = F.pad(x, _torch_pad4(pads))
        total = F.avg_pool2d(xp, k, s, 0, divisor_override=1)
        if a["count_include_pad"]:
            return total / (k[0] * k[1])
        ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad4(pads))
        return total / F.avg_pool2d(ones, k, s, 0, divisor_override=1)

    def _op_GlobalAveragePool(self, a, xs, **_):
        return F.adaptive_avg_pool2d(xs[0], 1)

    def _op_LRN(self, a, xs, **_):
        x, size = xs[0], a["size"]
        if size % 2 == 1:
            return F.local_response_norm(x, size, alpha=a["alpha"], beta=a["beta"], k=a["bias"])
        # even sizes: OPS.md's (ONNX) window c-floor((size-1)/2) .. c+ceil((size-1)/2);
        # torch's local_response_norm centres even windows one channel lower
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, lo, hi)).squeeze(1)
        s = sum(sq[:, i:i + x.shape[1]] for i in range(size))
        return x / (a["bias"] + a["alpha"] / size * s) ** a["beta"]

    def _op_Dropout(self, a, xs, training, **_):
        return F.dropout(xs[0], a["ratio"], training=training)

    def _op_Add(self, a, xs, **_):
        return xs[0] + xs[1]

    def _op_Sub(self, a, xs, **_):
        return xs[0] - xs[1]

    def _op_Mul(self, a, xs, **_):
        return xs[0] * xs[1]

    def _op_Div(self, a, xs, **_):
        return xs[0] / xs[1]

    def _op_Flatten(self, a, xs, **_):
        x, axis = xs[0], a["axis"]
        axis = axis + x.dim() if axis < 0 else axis
        return x.reshape(tuple(x.shape[:axis]) + (-1,))

    def _op_Reshape(self, a, xs, **_):
        x = xs[0]
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(a["shape"])]
        return x.reshape(shape)

    def _op_Concat(self, a, xs, **_):
        return torch.cat(xs, dim=a["axis"])

    def _op_Pad(self, a, xs, **_):
        x, pads = xs[0], a["pads"]
        r = x.dim()
        tp = []
        for d in reversed(range(r)):
            tp += [pads[d], pads[d + r]]
        while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0:   # torch wants only the padded trailing dims
            tp = tp[:-2]
        mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a["mode"]]
        if mode == "constant":
            return F.pad(x, tp, value=a["value"])
        return F.pad(x, tp, mode=mode)

    def _op_Slice(self, a, xs, **_):
        x = xs[0]
        return x.narrow(a["axis"], *_slice_span(a["start"], a["end"], x.shape[a["axis"]]))

    def _op_Transpose(self, a, xs, **_):
        return xs[0].permute(*a["perm"])

    def _op_ReduceMean(self, a, xs, **_):
        return xs[0].mean(dim=tuple(a["axes"]), keepdim=a["keepdims"])

    def _op_ReduceMax(self, a, xs, **_):
        # torch.max(dim) returns (and differentiates through) the FIRST maximum; amax splits ties
        x = xs[0]
        axes = sorted(d % x.dim() for d in a["axes"])
        rest = [d for d in range(x.dim()) if d not in axes]
        t = x.permute(*rest, *axes).reshape(*[x.shape[d] for d in rest], -1)
        y = t.max(dim=-1).values
        if a["keepdims"]:
            y = y.reshape([1 if d in axes else x.shape[d] for d in range(x.dim())])
        return y

    def _op_ResizeNearest(self, a, xs, **_):
        x = xs[0]
        (oh, ow), (h, w) = a["size"], x.shape[2:]
        if (oh, ow) == (h, w) and a["scale_h"] in (None, 1.0) and a["scale_w"] in (None, 1.0):
            return x.clone()
        ih = _nearest_index(oh, h, a["scale_h"], a["coord"], a["nearest"])
        iw = _nearest_index(ow, w, a["scale_w"], a["coord"], a["nearest"])
        return x.index_select(2, ih).index_select(3, iw)

    def _op_Softmax(self, a, xs, **_):
        return F.softmax(xs[0], dim=a["axis"])

    def _op_LogSoftmax(self, a, xs, **_):
        return F.log_softmax(xs[0], dim=a["axis"])

    def _op_LeakyRelu(self, a, xs, **_):
        return F.leaky_relu(xs[0], negative_slope=a["alpha"])

    def _op_PRelu(self, a, xs, **_):
        return F.prelu(xs[0], xs[1])

    def _op_SoftmaxCrossEntropy(self, a, xs, **_):
        return F.cross_entropy(xs[0], xs[1].long(), label_smoothing=a["label_smoothing"])
