"""Parity with onnxruntime: the ONNX file and a package Graph on one seeded batch.

    report = onnx_parity("mobilenet_v2.onnx", g)     # max abs/rel error vs onnxruntime
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device_agent.errors import OnnxError
from device_agent.model.graph import Graph

from .common import first_line, fmt_shape, input_dims, load_model, model_input, resolve_shape


def ort_errors() -> tuple:
    """onnxruntime's exception classes (they derive from Exception directly) and the usual ones."""
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
             "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    return tuple(getattr(st, n) for n in names if hasattr(st, n)) + (RuntimeError, ValueError)


def ort_session(model_bytes: bytes, path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3          # no VerifyOutputSizes chatter on stderr
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise OnnxError(f"{path}: onnxruntime cannot load the model ({first_line(e)})") from None


def onnx_parity(path, graph: Graph, input_shape=None, seed: int = 0, batch: int | None = None) -> dict:
    """Run the ONNX file in onnxruntime and `graph` in the numpy engine on one seeded batch.

    Returns {"batch", "seed", "max_abs", "max_rel", "outputs": {name: {"max_abs", "max_rel"}}},
    rel = max|ours - ort| / max|ort| per output (the worst output is reported at the top);
    every output the ONNX file has is compared, by name."""
    from device_agent.backends.numpy import NumpyRef

    path = Path(path)
    m = load_model(path)
    vi = model_input(m, path)
    dims = input_dims(vi)
    shape, dynamic = resolve_shape(dims, input_shape, vi.name, path)
    spec = graph.inputs[0]
    if batch is None:
        batch = shape[0]
    if spec.shape[0] is not None:
        batch = spec.shape[0]
    x_shape = (batch,) + tuple(d for d in shape[1:])
    # onnxruntime gets the model as we read it, with the input dims we check at and no stale shapes
    tt = vi.type.tensor_type
    tt.ClearField("shape")
    for d in x_shape:
        tt.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    sess = ort_session(m.SerializeToString(), path)
    del m
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)
    try:
        ref = sess.run(None, {vi.name: x})
    except ort_errors() as e:
        raise OnnxError(f"{path}: onnxruntime failed to run the model at input shape "
                        f"{fmt_shape(x_shape)} ({first_line(e)})") from None
    ref = dict(zip([o.name for o in sess.get_outputs()], ref))
    ours = NumpyRef(graph).forward({spec.name: x})
    outs = {}
    for name in graph.outputs:
        if name not in ref:          # the logits THOMAS exposes before a final Softmax
            continue
        o, r = ours[name], ref[name]
        r = np.asarray(r, np.float32)
        if o.shape != r.shape:
            raise OnnxError(f"output '{name}': THOMAS gives shape {o.shape}, onnxruntime {r.shape}")
        diff = float(np.max(np.abs(o.astype(np.float64) - r))) if o.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        outs[name] = {"max_abs": diff, "max_rel": diff / max(scale, 1e-30) if diff else 0.0,
                      "shape": list(r.shape)}
    if not outs:
        raise OnnxError(f"{path}: none of the model's outputs {list(ref)} is an output of the package")
    worst = max(outs.values(), key=lambda v: v["max_rel"])
    return {"batch": batch, "seed": seed, "input_shape": list(x_shape), "max_abs": worst["max_abs"],
            "max_rel": worst["max_rel"], "outputs": outs}
