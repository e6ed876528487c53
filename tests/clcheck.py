"""OpenCL op checks: run one op's ClSpec launchers on the real OpenCL device (PoCL in CI) and
compare with the numpy reference, with every output and gradient buffer wiped to NaN first
(DeepCL's forwardWithWipe), so a kernel that writes nothing cannot pass.

    cl_check("Conv2d", attrs, [x, w, b])                       # forward + backward, eval mode
    cl_check("BatchNorm", attrs, ins, bn_batch_stats=True)      # training-mode BN
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops.dropout import draw_seed

try:
    import pyopencl as cl

    from device_agent.backends.opencl import available
    from device_agent.backends.opencl.arena import workspace_bytes
    from device_agent.backends.opencl.runtime import LaunchBuilder, NodeIO, Runtime, TensorRef, replay
    HAVE_CL = available()
except ImportError:  # pragma: no cover - pyopencl is a runtime dependency
    HAVE_CL = False

needs_cl = pytest.mark.skipif(not HAVE_CL, reason="no OpenCL device on this machine (pyopencl found none)")

_RT = None


def runtime() -> "Runtime":
    global _RT
    if _RT is None:
        _RT = Runtime()
    return _RT


def upload(rt, name, arr, wipe=False) -> "TensorRef":
    arr = np.ascontiguousarray(arr)
    buf = rt.alloc(arr.nbytes)
    t = TensorRef(name, tuple(arr.shape), buf, arr.dtype)
    host = np.full(arr.shape, np.nan, arr.dtype) if wipe and arr.dtype.kind == "f" else arr
    cl.enqueue_copy(rt.queue, buf, host if host.size else np.zeros(1, arr.dtype))
    return t


def empty(rt, name, shape, dtype=np.float32) -> "TensorRef":
    return upload(rt, name, np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype), wipe=False)


def download(rt, t: "TensorRef") -> np.ndarray:
    out = np.empty(t.shape, t.dtype)
    if out.size:
        cl.enqueue_copy(rt.queue, out, t.buf)
    rt.queue.finish()
    return out


def cl_run(op_name, attrs, inputs, *, training=False, bn_batch_stats=False, seed=0, gys=None, needs=None,
           act=None):
    """Run forward (and backward if gys is given) of one op on OpenCL.
    Returns (ys, gxs, state) as numpy arrays."""
    rt = runtime()
    op = get_op(op_name)
    assert op.cl is not None, f"{op_name} has no OpenCL implementation"
    a = normalize_attrs(op, attrs)
    in_shapes = [tuple(np.shape(x)) for x in inputs]
    out_shapes = [tuple(s) for s in op.infer(a, in_shapes)]
    xs = [upload(rt, f"x{i}", np.asarray(x)) for i, x in enumerate(inputs)]
    ys = [empty(rt, f"y{i}", s) for i, s in enumerate(out_shapes)]
    if op.cl.alias:
        ys = [TensorRef("y0", out_shapes[0], xs[0].buf, xs[0].dtype)]
    state = {}
    if op.cl.state is not None:
        for k, (shape, dtype) in op.cl.state(a, in_shapes, out_shapes, training or bn_batch_stats).items():
            state[k] = empty(rt, k, shape, dtype)
    ws = None
    if op.cl.workspace is not None or op.cl.gemms is not None:
        nbytes = workspace_bytes(op.cl, a, in_shapes, out_shapes, dev=rt)   # as the Plan sizes it
        if nbytes:
            ws = empty(rt, "workspace", (max(1, nbytes // 4),))
    io = NodeIO(op_name.lower(), op_name, a, xs, ys, state=state, workspace=ws, training=training,
                bn_batch_stats=bn_batch_stats, act=act)
    b = LaunchBuilder(rt)
    op.cl.forward(b, io)
    values = {"seed": np.uint32(draw_seed(np.random.default_rng(seed)))}  # as Ctx(rng=default_rng(seed))
    replay(rt.queue, b.launches, values)
    y_host = [download(rt, y) for y in ys]
    gx_host = None
    if gys is not None:
        if needs is None:
            needs = [np.issubdtype(np.asarray(x).dtype, np.floating) and
                     op.slot_names(len(inputs))[i] not in op.buffers for i, x in enumerate(inputs)]
        io.gy = [upload(rt, f"gy{i}", np.asarray(g, np.float32)) for i, g in enumerate(gys)]
        io.gx = [empty(rt, f"gx{i}", s) if need else None for i, (s, need) in enumerate(zip(in_shapes, needs))]
        if op.cl.alias:
            io.gx = [TensorRef("gx0", in_shapes[0], io.gy[0].buf)]
        b2 = LaunchBuilder(rt)
        op.cl.backward(b2, io)
        replay(rt.queue, b2.launches, values)
        gx_host = [download(rt, g) if g is not None else None for g in io.gx]
    st_host = {k: download(rt, v) for k, v in state.items()}
    # inputs may be updated in place (BN running statistics): report them too
    st_host.update({f"x{i}": download(rt, x) for i, x in enumerate(xs)})
    return y_host, gx_host, st_host


def cl_check(op_name, attrs, inputs, *, training=False, bn_batch_stats=False, rtol=1e-4, atol=1e-5,
             backward=True, seed=0, ctx=None):
    """Compare forward and backward of the OpenCL launchers with the numpy reference (float32)."""
    inputs = [np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f" else np.asarray(x) for x in inputs]
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    ctx = ctx or Ctx(training=training, bn_batch_stats=bn_batch_stats, rng=np.random.default_rng(seed))
    ref_ys, saved = op.forward(a, [x.copy() for x in inputs], ctx)
    rng = np.random.default_rng(seed + 1)
    gys = [rng.standard_normal(np.shape(y)).astype(np.float32) for y in ref_ys] if backward else None
    ys, gxs, state = cl_run(op_name, attrs, inputs, training=training, bn_batch_stats=bn_batch_stats,
                            seed=seed, gys=gys)
    for i, (r, y) in enumerate(zip(ref_ys, ys)):
        assert not np.isnan(y).any(), f"{op_name}: output {i} has NaN (unwritten?)"
        np.testing.assert_allclose(y, r, rtol=rtol, atol=atol, err_msg=f"{op_name} forward output {i}")
    if backward:
        needs = [g is not None for g in gxs]
        ref_gx = op.backward(a, saved, gys, needs, ctx)
        for i, (r, g) in enumerate(zip(ref_gx, gxs)):
            if g is None:
                continue
            assert not np.isnan(g).any(), f"{op_name}: gradient {i} has NaN (unwritten?)"
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"{op_name} gradient of input {i}")
    return ys, gxs, state


def nontrivial_bn_stats(g, seed: int = 1):
    """Give every BatchNorm running mean/var non-trivial values (a fresh graph's 0/1 would hide the
    frozen-statistics and BN-folding paths); returns g."""
    rng = np.random.default_rng(seed)
    for k, p in g.params.items():
        if k.endswith("running_var"):
            g.weights[k] = (rng.random(p.shape) + 0.5).astype(np.float32)
        elif k.endswith("running_mean"):
            g.weights[k] = (rng.standard_normal(p.shape) * 0.1).astype(np.float32)
    return g


def phone_profiles() -> list[str]:
    """The shipped phone profiles (configs/tuning/mobile.json), sorted."""
    from device_agent.backends.opencl.limits import load_profiles

    return sorted(load_profiles())


def profiled_runtime(profile, monkeypatch):
    """A Runtime under a phone profile's limits and tuning, made clcheck's runtime; a generator for a
    fixture (closed after the test). THOMAS_CL_CONV is cleared so the profile's own path runs."""
    from device_agent.backends.opencl.runtime import Runtime

    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    rt = Runtime(profile=profile)
    monkeypatch.setattr(sys.modules[__name__], "_RT", rt)
    yield rt
    rt.close()


def launched_kernels(monkeypatch) -> list[str]:
    """From now on (until the test's monkeypatch undoes it), the name of every kernel a LaunchBuilder
    records, in order: which path an op took."""
    from device_agent.backends.opencl.runtime import LaunchBuilder

    names = []
    orig = LaunchBuilder.launch

    def spy(self, file, kernel, *a, **kw):
        names.append(kernel)
        return orig(self, file, kernel, *a, **kw)

    monkeypatch.setattr(LaunchBuilder, "launch", spy)
    return names


def tune(monkeypatch, rt, op: str, **keys) -> None:
    """Tuning `op` of runtime `rt` with `keys` over what the device's tuning and earlier overrides say,
    until the test ends."""
    monkeypatch.setitem(rt.tuning.override, op, dict(rt.tuning.override.get(op, {}), **keys))
