"""Shared helpers for op tests (modelled on tinygrad's helper_test_op).

    fd_check("Conv2d", attrs, [x, w, b])            # numpy backward vs float64 central differences
    torch_check("Conv2d", attrs, [x, w, b], fn)     # numpy forward/backward vs torch autograd

Inputs are float64 for fd_check and float32 for torch_check. Integer inputs (labels)
are passed through untouched and never differentiated.
"""
from __future__ import annotations

import numpy as np
import pytest

from device_agent.ops import Ctx, get_op, normalize_attrs


def infer(op_name, attrs, shapes):
    """The op's shape inference on validated attrs: output shapes."""
    op = get_op(op_name)
    return op.infer(normalize_attrs(op, attrs), [tuple(s) for s in shapes])


def raises(exc, field, fn, *args):
    """fn(*args) raises `exc` whose `field` names the culprit; returns the error."""
    with pytest.raises(exc) as e:
        fn(*args)
    assert e.value.field == field, f"field {e.value.field!r}, expected {field!r}: {e.value}"
    return e.value


def run_forward(op_name, attrs, inputs, ctx=None):
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    ctx = ctx or Ctx()
    ys, saved = op.forward(a, list(inputs), ctx)
    return op, a, ys, saved, ctx


def run_backward(op_name, attrs, inputs, gys, ctx_factory=Ctx):
    op, a, ys, saved, ctx = run_forward(op_name, attrs, inputs, ctx_factory())
    needs = [np.issubdtype(np.asarray(x).dtype, np.floating) for x in inputs]
    grads = op.backward(a, saved, list(gys), needs, ctx)
    assert len(grads) == len(inputs), f"{op_name}: backward returned {len(grads)} grads for {len(inputs)} inputs"
    return ys, grads


def fd_check(op_name, attrs, inputs, ctx_factory=Ctx, eps=1e-6, rtol=1e-5, atol=1e-8,
             max_points=40, seed=0):
    """Compare analytic gradients of L = Σ_k <y_k, r_k> with central differences (float64)."""
    inputs = [np.array(x, copy=True) for x in inputs]
    rng = np.random.default_rng(seed)
    op, a, ys, _, _ = run_forward(op_name, attrs, inputs, ctx_factory())
    rs = [rng.standard_normal(np.shape(y)) for y in ys]

    def loss(xs):
        _, _, out, _, _ = run_forward(op_name, attrs, xs, ctx_factory())
        return sum(float(np.sum(y * r)) for y, r in zip(out, rs))

    _, grads = run_backward(op_name, attrs, inputs, rs, ctx_factory)
    checked = 0
    for i, x in enumerate(inputs):
        if not np.issubdtype(x.dtype, np.floating):
            continue
        assert x.dtype == np.float64, "fd_check needs float64 inputs"
        g = grads[i]
        assert g is not None, f"{op_name}: no gradient for input {i}"
        assert g.shape == x.shape, f"{op_name}: grad {i} shape {g.shape} != input shape {x.shape}"
        idx = np.arange(x.size)
        if x.size > max_points:
            idx = rng.choice(x.size, max_points, replace=False)
        for j in idx:
            flat = x.reshape(-1)
            old = flat[j]
            flat[j] = old + eps
            lp = loss(inputs)
            flat[j] = old - eps
            lm = loss(inputs)
            flat[j] = old
            num = (lp - lm) / (2 * eps)
            ana = g.reshape(-1)[j]
            assert abs(num - ana) <= atol + rtol * max(abs(num), abs(ana), 1.0), (
                f"{op_name} input {i} element {j}: analytic {ana:.10g} vs numeric {num:.10g}")
            checked += 1
    assert checked > 0, f"{op_name}: nothing was checked"
    return grads


def torch_check(op_name, attrs, inputs, torch_fn, ctx_factory=Ctx, rtol=1e-4, atol=1e-5, seed=0):
    """Forward and backward of our numpy op vs `torch_fn(*tensors) -> tensor or tuple` (float32)."""
    import torch

    rng = np.random.default_rng(seed)
    ts = []
    for x in inputs:
        t = torch.from_numpy(np.array(x, copy=True))
        if t.is_floating_point():
            t.requires_grad_(True)
        ts.append(t)
    out = torch_fn(*ts)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    ys, _, = run_forward(op_name, attrs, inputs, ctx_factory())[2:4]
    assert len(ys) == len(outs)
    for y, t in zip(ys, outs):
        assert y.dtype == np.asarray(inputs[0]).dtype, f"{op_name}: output dtype {y.dtype}"
        np.testing.assert_allclose(y, t.detach().numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"{op_name} forward vs torch")
    rs = [rng.standard_normal(np.shape(y)).astype(y.dtype) for y in ys]
    torch.autograd.backward([t for t in outs], [torch.from_numpy(r) for r in rs])
    _, grads = run_backward(op_name, attrs, inputs, rs, ctx_factory)
    for i, t in enumerate(ts):
        if not t.is_floating_point():
            continue
        tg = t.grad.numpy() if t.grad is not None else np.zeros(t.shape, np.float32)
        np.testing.assert_allclose(grads[i], tg, rtol=rtol, atol=atol,
                                   err_msg=f"{op_name} grad of input {i} vs torch")
    return ys, grads
