"""dtype "mixed", op by op: every op whose backward reads a saved forward tensor, run with that tensor
kept as halves exactly as a mixed Plan keeps it (mixed.cl pack_half after the forward, unpack_half
before the backward), against the numpy reference.

Error budget (docs/BACKENDS.md "Half-precision storage"). A saved value s is stored as the half
nearest to it (vstore_half rounds to nearest even): s~ = s(1 + d), |d| <= u = 2^-11, for
2^-14 <= |s| <= 65504 (below, an absolute 2^-25; the inputs here stay in the normal range). Only
the backward reads s~; its arithmetic is float32. So the mixed gradient is the float32 gradient
evaluated at s~, and to first order its distance from the exact one is bounded by
u * sum_k |dG/ds_k| |s_k|, which per op is:

  Conv2d, Gemm    dW = sum gy * x            ->  u * sum |gy| |x|  (dW of |gy| and |x|); dx, db: 0
  Mul             da = gy * b, db = gy * a   ->  u * |gy| |b|, u * |gy| |a|  (summed where broadcast)
  BatchNorm       xhat = (x - m) * invstd with the forward's statistics; eta = u |x| invstd bounds
                  the error of xhat. dw = sum gy xhat -> sum |gy| eta; frozen dx = gy w invstd: 0;
                  batch dx = w invstd (gy - mean gy - xhat c), c = mean(gy xhat)
                  -> |w| invstd (eta |c| + |xhat| mean(|gy| eta) + eta mean(|gy| eta))
  Relu, Clip      the mask from y~: rounding keeps the sign and 0 and 6 are halves, so it moves
                  only for values within half a spacing of 6 (none in the inputs): 0
  Softmax         dx = y (gy - S), S = sum gy y  ->  u (|y| |gy - S| + |y| sum |gy| |y|)
  Sigmoid         dx = gy y (1 - y)  ->  u |gy| |y| (|1 - y| + |y|)
  LogSoftmax      dx = gy - exp(y) sum gy  ->  exp(y) (exp(u |y|) - 1) |sum gy|  (exact: exp is monotone)
  LeakyRelu, HardSigmoid   masks and constants only (inputs kept off the kinks): 0
  PRelu           dx: mask 0; dslope = sum gy x [x <= 0]  ->  u sum |gy| |x| [x <= 0]
  HardSwish       dx = gy (x/3 + 1/2) inside (-3, 3)  ->  u |gy| |x| / 3 there, else 0
  Div             da = gy / b  ->  u/(1-u) |gy / b|;  db = -gy a / b^2  ->  ((1+u)/(1-u)^2 - 1) |gy a / b^2|
  LRN, SoftmaxCrossEntropy: only the bit-for-bit check below (no bound derived here)

On top comes the float32 kernels' own tolerance (rtol 1e-4, atol 1e-5, as tests/clcheck.py).
Every op with saved tensors is also checked for the mechanism itself: the device path (halves
packed and expanded on the device) must equal, bit for bit, the float32 backward fed the saved
tensors rounded to float16 on the host.
"""
from __future__ import annotations

import numpy as np
import pytest

from clcheck import download, empty, needs_cl, runtime, upload
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.registry import REGISTRY

pytestmark = needs_cl

U = 2.0 ** -11


def _rng(seed):
    return np.random.default_rng(seed)


def _away(x, points, gap):
    """x with every value within `gap` of a kink moved `2 gap` off it (masks must not straddle)."""
    x = np.array(x, np.float32)
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, 2 * gap, -2 * gap)
    return x


def _normal(shape, seed, scale=1.0):
    """Normal values kept at |v| >= 2^-10 (the half normal range, with room)."""
    v = _rng(seed).standard_normal(shape).astype(np.float32) * scale
    return np.where(np.abs(v) < 2 ** -10, np.float32(0.5), v).astype(np.float32)


def _bn_inputs(seed=0, shape=(3, 4, 5, 5)):
    r = _rng(seed)
    c = shape[1]
    return [_normal(shape, seed, 2.0) + 0.5, (r.random(c) + 0.5).astype(np.float32), r.standard_normal(c).astype(np.float32),
            (r.standard_normal(c) * 0.1).astype(np.float32), (r.random(c) + 0.5).astype(np.float32)]


# name -> (op, attrs, inputs, run options); every op whose ClSpec saves tensors has at least one
CASES = {
    "conv": ("Conv2d", {"out_channels": 4, "kernel": [3, 3], "pads": [1, 1, 1, 1]},
             [_normal((2, 3, 6, 6), 1), _normal((4, 3, 3, 3), 2), _normal((4,), 3)], {}),
    "conv_stride_depthwise": ("Conv2d", {"out_channels": 3, "kernel": [3, 3], "stride": [2, 2], "pads": [1, 1, 1, 1],
                                         "groups": 3}, [_normal((2, 3, 7, 7), 4), _normal((3, 1, 3, 3), 5)], {}),
    "conv_1x1": ("Conv2d", {"out_channels": 5, "kernel": [1, 1]}, [_normal((2, 4, 3, 3), 6), _normal((5, 4, 1, 1), 7)], {}),
    "gemm": ("Gemm", {"out_features": 4}, [_normal((3, 6), 8), _normal((4, 6), 9), _normal((4,), 10)], {}),
    "bn_frozen": ("BatchNorm", {}, _bn_inputs(11), {}),
    "bn_batch": ("BatchNorm", {}, _bn_inputs(12), {"bn_batch_stats": True}),
    "bn_batch_relu6": ("BatchNorm", {}, _bn_inputs(13), {"bn_batch_stats": True, "act": "relu6"}),
    "bn_frozen_relu": ("BatchNorm", {}, _bn_inputs(14), {"act": "relu"}),
    "bn_batch_relu6_l64": ("BatchNorm", {}, _bn_inputs(33, (2, 3, 8, 8)), {"bn_batch_stats": True, "act": "relu6"}),
    "bn_batch_l64": ("BatchNorm", {}, _bn_inputs(34, (2, 3, 8, 8)), {"bn_batch_stats": True}),
    "mul": ("Mul", {}, [_normal((2, 3, 4), 15), _normal((2, 3, 4), 16)], {}),
    "mul_broadcast": ("Mul", {}, [_normal((2, 3, 4, 5), 17), _normal((1, 3, 1, 1), 18)], {}),
    "div": ("Div", {}, [_normal((2, 3, 4), 19), _away(_normal((2, 3, 4), 20), [0], 0.5)], {}),
    "relu": ("Relu", {}, [_normal((2, 3, 5, 5), 21, 3.0)], {}),
    "relu6": ("Clip", {"min": 0.0, "max": 6.0}, [_away(_normal((2, 3, 5, 5), 22, 4.0), [0, 6], 0.05)], {}),
    "leaky": ("LeakyRelu", {"alpha": 0.1}, [_normal((2, 3, 5), 23)], {}),
    "leaky_negative": ("LeakyRelu", {"alpha": -0.5}, [_normal((2, 3, 5), 24)], {}),
    "prelu": ("PRelu", {}, [_normal((2, 3, 4, 4), 25), np.array([0.25, -0.3, 0.6], np.float32)], {}),
    "hardsigmoid": ("HardSigmoid", {}, [_away(_normal((2, 3, 5), 26, 4.0), [-3, 3], 0.05)], {}),
    "hardswish": ("HardSwish", {}, [_away(_normal((2, 3, 5), 27, 4.0), [-3, 3], 0.05)], {}),
    "sigmoid": ("Sigmoid", {}, [_normal((2, 3, 5), 28, 2.0)], {}),
    "softmax": ("Softmax", {"axis": -1}, [_normal((3, 7), 29, 2.0)], {}),
    "logsoftmax": ("LogSoftmax", {"axis": -1}, [_normal((3, 7), 30, 2.0)], {}),
    "lrn": ("LRN", {"size": 3}, [_normal((2, 5, 4, 4), 31)], {}),
    "sce": ("SoftmaxCrossEntropy", {"label_smoothing": 0.1}, [_normal((4, 6), 32, 2.0), np.array([1, 0, 5, 2], np.int32)], {}),
}


def _saved_slots(op, a, n_inputs):
    """The saved tensors a mixed Plan keeps as halves: activations, never parameters, buffers or
    the exact ones (class indices)."""
    from device_agent.backends.opencl.mixed import keeps_half

    names = op.slot_names(n_inputs)
    out = []
    for s in op.cl.saved(a):
        kind, idx = s[0], int(s[1:])
        if kind == "x" and (names[idx] in op.params or names[idx] in op.buffers):
            continue
        if keeps_half(op.name, s):
            out.append((kind, idx))
    return out


def _run(name, mode, gys):
    """Forward, then the saved tensors as `mode` keeps them ("float32": as produced; "device": packed
    to halves and expanded on the device, the mixed Plan's launches; "direct": packed, and the halves
    handed to the backward itself, as the Plan does for mixed.HALF_READERS; "host": rounded to float16
    on the host), then the backward into NaN-wiped gradients. Returns the input gradients."""
    from device_agent.backends.opencl.runtime import LaunchBuilder, NodeIO, TensorRef, replay
    from device_agent.backends.opencl.arena import workspace_bytes
    from device_agent.backends.opencl.mixed import quarter

    op_name, attrs, inputs, kw = CASES[name]
    rt = runtime()
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    in_shapes = [x.shape for x in inputs]
    out_shapes = [tuple(s) for s in op.infer(a, in_shapes)]
    xs = [upload(rt, f"x{i}", x) for i, x in enumerate(inputs)]
    ys = [empty(rt, f"y{i}", s) for i, s in enumerate(out_shapes)]
    state = {k: empty(rt, k, s, d) for k, (s, d) in
             (op.cl.state(a, in_shapes, out_shapes, kw.get("bn_batch_stats", False)) if op.cl.state else {}).items()}
    nbytes = workspace_bytes(op.cl, a, in_shapes, out_shapes, dev=rt)
    ws = empty(rt, "ws", (max(1, nbytes // 4),)) if nbytes else None
    io = NodeIO(name, op_name, a, xs, ys, state=state, workspace=ws, bn_batch_stats=kw.get("bn_batch_stats", False),
                act=kw.get("act"))
    b = LaunchBuilder(rt)
    op.cl.forward(b, io)
    for kind, idx in _saved_slots(op, a, len(inputs)):
        lst = io.x if kind == "x" else io.y
        t = lst[idx]
        if mode in ("device", "direct"):
            half = TensorRef("half", t.shape, rt.alloc(max(2 * t.size, 4)), np.dtype(np.float16))
            f32 = empty(rt, "f32", t.shape)
            b.launch("mixed.cl", "pack_half", (quarter(t.size),), None, t, half, t.size)
            b.launch("mixed.cl", "unpack_half", (quarter(t.size),), None, half, f32, t.size)
            lst[idx] = half if mode == "direct" else f32     # direct: the kernels read the halves (-DACT_HALF)
        elif mode == "host":
            replay(rt.queue, b.launches, {})
            b.launches = []
            lst[idx] = upload(rt, "rounded", download(rt, t).astype(np.float16).astype(np.float32))
    io.gy = [upload(rt, f"gy{i}", g) for i, g in enumerate(gys)]
    needs = [np.asarray(x).dtype.kind == "f" and s not in op.buffers for x, s in zip(inputs, op.slot_names(len(inputs)))]
    io.gx = [empty(rt, f"gx{i}", s) if nd else None for i, (s, nd) in enumerate(zip(in_shapes, needs))]
    op.cl.backward(b, io)
    replay(rt.queue, b.launches, {})
    return [download(rt, g) if g is not None else None for g in io.gx]


def _gys(name):
    op_name, attrs, inputs, kw = CASES[name]
    op = get_op(op_name)
    shapes = op.infer(normalize_attrs(op, attrs), [x.shape for x in inputs])
    return [_normal(tuple(s), 99) for s in shapes]


def test_every_op_with_saved_tensors_has_a_case():
    with_saves = {k for k, op in REGISTRY.items() if op.cl is not None and (callable(op.cl.saves) or op.cl.saves)}
    assert with_saves <= {c[0] for c in CASES.values()}, sorted(with_saves - {c[0] for c in CASES.values()})


@pytest.mark.parametrize("name", list(CASES))
def test_device_halves_equal_host_rounding_bit_for_bit(name):
    """pack_half/unpack_half round to nearest even exactly as numpy's float16 cast, and the backward
    reads nothing else of the saved tensors; kernels that read the halves themselves (LOAD_ACT under
    -DACT_HALF) compute exactly what they compute from the expanded floats."""
    from device_agent.backends.opencl.mixed import HALF_READERS

    gys = _gys(name)
    host = _run(name, "host", gys)
    modes = ["device"] + (["direct"] if CASES[name][0] in HALF_READERS else [])
    for mode in modes:
        for i, (d, h) in enumerate(zip(_run(name, mode, gys), host)):
            if d is not None:
                assert not np.isnan(d).any(), f"{name} {mode}: gradient {i} unwritten"
                np.testing.assert_array_equal(d, h, err_msg=f"{name} {mode} gradient {i}")


def _bound(name, inputs, gys, ref_saved):
    """u * sum_k |dG/ds_k| |s_k| per gradient (the module docstring), float64."""
    op_name, attrs, _, kw = CASES[name]
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    x = [np.asarray(v, np.float64) for v in inputs]
    g = np.asarray(gys[0], np.float64)
    ctx = Ctx(training=False, bn_batch_stats=kw.get("bn_batch_stats", False), rng=np.random.default_rng(0))

    def grads(ins, gy):
        _, saved = op.forward(a, ins, ctx)
        return op.backward(a, saved, [gy], [True] * len(ins), ctx)

    if op_name in ("Conv2d", "Gemm"):
        dw = grads([U * np.abs(x[0]), *[np.abs(v) for v in x[1:]]], np.abs(g))[1]
        return [np.zeros_like(x[0]), dw] + [np.zeros_like(v) for v in x[2:]]
    if op_name == "Mul":
        return [grads([np.abs(x[0]), U * np.abs(x[1])], np.abs(g))[0], grads([U * np.abs(x[0]), np.abs(x[1])], np.abs(g))[1]]
    if op_name in ("Relu", "Clip", "LeakyRelu", "HardSigmoid"):
        return [np.zeros_like(x[0])]
    if op_name == "Sigmoid":
        y = 1 / (1 + np.exp(-x[0]))
        return [U * np.abs(g) * np.abs(y) * (np.abs(1 - y) + np.abs(y))]
    if op_name == "LogSoftmax":
        y = x[0] - x[0].max(-1, keepdims=True)
        y = y - np.log(np.exp(y).sum(-1, keepdims=True))
        return [np.exp(y) * np.expm1(U * np.abs(y)) * np.abs(g.sum(-1, keepdims=True))]
    if op_name == "PRelu":
        t = np.where(x[0] > 0, 0, U * np.abs(g) * np.abs(x[0]))
        return [np.zeros_like(x[0]), t.sum(axis=tuple(i for i in range(t.ndim) if i != 1))]
    if op_name == "HardSwish":
        return [np.where(np.abs(x[0]) < 3, U * np.abs(g) * np.abs(x[0]) / 3, 0)]
    if op_name == "Div":
        a_, b_ = x
        return [U / (1 - U) * np.abs(g / b_), ((1 + U) / (1 - U) ** 2 - 1) * np.abs(g * a_ / b_ ** 2)]
    if op_name == "Softmax":
        y = np.exp(x[0] - x[0].max(-1, keepdims=True))
        y /= y.sum(-1, keepdims=True)
        s = (g * y).sum(-1, keepdims=True)
        return [U * (np.abs(y) * np.abs(g - s) + np.abs(y) * (np.abs(g) * np.abs(y)).sum(-1, keepdims=True))]
    if op_name == "BatchNorm":
        xx, w = x[0], x[1]
        axes = (0, 2, 3)
        if kw.get("bn_batch_stats"):
            m, var = xx.mean(axes), xx.var(axes)
        else:
            m, var = x[3], x[4]
        inv = 1 / np.sqrt(var + a["eps"])
        c4 = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
        xhat = (xx - c4(m)) * c4(inv)
        eta = U * np.abs(xx) * c4(inv)
        dw = (np.abs(g) * eta).sum(axes)
        if kw.get("bn_batch_stats"):
            c = (g * xhat).mean(axes)
            me = (np.abs(g) * eta).mean(axes)
            dx = c4(np.abs(w) * inv) * (eta * c4(np.abs(c)) + np.abs(xhat) * c4(me) + eta * c4(me))
        else:
            dx = np.zeros_like(xx)
        return [dx, dw, np.zeros_like(w)]
    return None


BOUNDED = ["conv", "conv_stride_depthwise", "conv_1x1", "gemm", "mul", "mul_broadcast", "relu", "relu6", "softmax",
           "bn_frozen", "bn_batch", "bn_batch_l64", "sigmoid", "logsoftmax", "leaky", "leaky_negative", "prelu",
           "hardsigmoid", "hardswish", "div"]


@pytest.mark.parametrize("name", BOUNDED)
def test_mixed_gradients_within_the_fp16_budget_of_the_reference(name):
    op_name, attrs, inputs, kw = CASES[name]
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    gys = _gys(name)
    ctx = Ctx(training=False, bn_batch_stats=kw.get("bn_batch_stats", False), rng=np.random.default_rng(0))
    ins64 = [np.asarray(v, np.float64) for v in inputs]
    _, saved = op.forward(a, ins64, ctx)
    ref = op.backward(a, saved, [np.asarray(g, np.float64) for g in gys], [True] * len(inputs), ctx)
    bound = _bound(name, inputs, gys, saved)
    from device_agent.backends.opencl.mixed import HALF_READERS

    mixed = _run(name, "direct" if op_name in HALF_READERS else "device", gys)
    fp32 = _run(name, "float32", gys)
    moved = False
    for i, (m, f, r, bd) in enumerate(zip(mixed, fp32, ref, bound)):
        if m is None or r is None:
            continue
        np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-5, err_msg=f"{name} float32 gradient {i}")
        allowed = 1e-5 + 1e-4 * np.abs(r) + bd
        worst = float(np.max(np.abs(m - r) - allowed))
        assert worst <= 0, f"{name} gradient {i}: exceeds the fp16 budget by {worst:.3g}"
        moved |= not np.array_equal(m, f)
    if name not in ("relu", "relu6", "leaky", "leaky_negative", "hardsigmoid"):   # masks: nothing moves
        assert moved, f"{name}: the mixed gradients equal float32 bit for bit (were the halves used?)"


@pytest.mark.parametrize("channel", [False, True], ids=["lcn", "plane"])
@pytest.mark.parametrize("shape", [(65536, 1), (1, 1, 256, 256)], ids=["scalar_loads", "four_wide_loads"])
def test_batchnorm_reads_every_half_exactly(shape, channel, monkeypatch):
    """Every one of the 65536 half bit patterns through BN's apply with mean 0, invstd 1, w 1, b 0
    (y = x): LOAD_ACT / LOAD_ACT4 under -DACT_HALF widen each exactly (bn_apply_lcn4; with tuning
    "batchnorm" -> "channel", the CPU default: bn_apply_plane's vload_half8), subnormals, infinities and
    NaN included."""
    from device_agent.backends.opencl.runtime import LaunchBuilder, TensorRef, replay
    from device_agent.ops.batchnorm import _apply

    rt = runtime()
    monkeypatch.setitem(rt.tuning.override, "batchnorm", {"channel": channel})
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16).reshape(shape)
    x = upload(rt, "x", halves)
    x = TensorRef("x", shape, x.buf, np.dtype(np.float16))
    c = shape[1]
    one, zero = upload(rt, "one", np.ones(c, np.float32)), upload(rt, "zero", np.zeros(c, np.float32))
    y = empty(rt, "y", shape)
    b = LaunchBuilder(rt)
    length = int(np.prod(shape[2:], dtype=np.int64))
    _apply(b, x, one, zero, zero, one, y, c, length, 0, np.float32(0), 0)
    replay(rt.queue, b.launches, {})
    got, want = download(rt, y).ravel(), halves.astype(np.float32).ravel()
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    # bitwise, but for -0 (the apply's "+ b" with b = +0 makes it +0)
    keep = ~nan & (want != 0)
    np.testing.assert_array_equal(got[keep].view(np.uint32), want[keep].view(np.uint32))
    assert (got[want == 0] == 0).all()
