"""Helpers for the ONNX tests: small hand-built models, torch exports of our zoo, the onnx
package's own backend-test models with random weights.

    m = model([node("Relu", ["x"], ["y"])], x=("x", [None, 3, 8, 8]), y="y", opset=13)
    path = save(m, tmp_path / "relu.onnx")
    path = torch_export(zoo.build("mobilenet_v2", 10, 64), tmp_path / "m.onnx", opset=13)
    check_round_trip(pkg_dir, scratch)     # save_package(load_package(p)) == p, bit for bit

`packages_round_trip` (autouse where a test module imports it) runs check_round_trip on every
package a test leaves under its tmp_path (imports, the device's models/, runs' final/).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.model.graph import MODEL_JSON, WEIGHTS_NPZ, load_package, read_weights, save_package

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def node(op, ins, outs, name=None, **attrs):
    return helper.make_node(op, ins, outs, name=name or f"{op.lower()}_{outs[0]}", **attrs)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(nodes, x=("x", [None, 3, 8, 8]), y="y", opset=13, inits=(), ir=None, y_shape=None):
    """One float input x = (name, dims; None -> symbolic 'N', -1 -> a dim with no value), outputs y (name or list)."""
    xname, dims = x
    xvi = helper.make_tensor_value_info(xname, TensorProto.FLOAT, None)
    for d in dims:
        dd = xvi.type.tensor_type.shape.dim.add()
        if d is None:
            dd.dim_param = "N"
        elif d > 0:
            dd.dim_value = d
    ys = [y] if isinstance(y, str) else list(y)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape) for o in ys]
    g = helper.make_graph(nodes, "test", [xvi], outs, list(inits))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(g, opset_imports=opsets,
                             ir_version=ir or helper.find_min_ir_version_for(opsets, ignore_unknown=True))


def save(m, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def check_round_trip(pkg: Path, scratch: Path) -> int:
    """save_package(load_package(pkg)) reproduces model.json byte for byte and every array bit for
    bit (dtype, shape and bytes), and every stored array has its declared shape. Returns the
    number of arrays compared."""
    g = load_package(pkg)
    save_package(g, scratch)
    assert (scratch / MODEL_JSON).read_bytes() == (pkg / MODEL_JSON).read_bytes(), pkg
    a, b = read_weights(pkg / WEIGHTS_NPZ), read_weights(scratch / WEIGHTS_NPZ)
    assert sorted(a) == sorted(b) == sorted(g.params), pkg
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape == tuple(g.params[k].shape), (pkg, k)
        assert a[k].tobytes() == b[k].tobytes(), (pkg, k)
    return len(a)


@pytest.fixture(autouse=True)
def packages_round_trip(tmp_path):
    """After the test: the round-trip property on every package left under tmp_path."""
    yield
    for k, mj in enumerate(sorted(tmp_path.rglob(MODEL_JSON))):
        if (mj.parent / WEIGHTS_NPZ).is_file():
            check_round_trip(mj.parent, tmp_path.parent / f"{tmp_path.name}-roundtrip" / str(k))


def randomized_light(name: str, dest: Path, seed: int = 0) -> Path:
    """light_<name>.onnx with every ConstantOfShape-filled weight replaced by a seeded random
    initializer (the shipped files fill weights with one constant, so every class scores the same):
    He-scaled normals for kernels, positive values for BN scale/variance, small normals otherwise.
    A final Softmax is cut off, so the comparison sees the logits, not saturated probabilities."""
    m = onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    role = {}
    for n in m.graph.node:
        for k, t in enumerate(n.input):
            role.setdefault(t, (n.op_type, k))
    keep, new = [], []
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(int(d) for d in inits[n.input[0]])
            op, k = role.get(n.output[0], ("", 0))
            if len(shape) >= 2:
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            elif op == "BatchNormalization" and k in (1, 4):
                arr = rng.uniform(0.5, 1.5, shape)
            else:
                arr = rng.standard_normal(shape) * 0.1
            new.append(numpy_helper.from_array(arr.astype(np.float32), n.output[0]))
        else:
            keep.append(n)
    last = keep[-1]
    if last.op_type == "Softmax" and last.output[0] == m.graph.output[0].name:
        keep.pop()
        m.graph.output[0].name = last.input[0]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(new)
    return save(m, dest)


# ------------------------------------------------------------------------------ torch exports
def torch_module(graph):
    """An nn.Module running a THOMAS graph through tests/torch_twin.py, with the graph's params as
    nn.Parameters (trainable) and buffers (BN running statistics), so torch.onnx sees real weights."""
    import torch
    from torch_twin import TorchTwin

    class Twin(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.tw = TorchTwin(g)
            self.names = {}
            for k, p in g.params.items():
                safe = k.replace(".", "_")
                t = torch.tensor(np.asarray(g.weights[k]))
                if p.trainable:
                    self.register_parameter(safe, torch.nn.Parameter(t))
                else:
                    self.register_buffer(safe, t)
                self.names[k] = safe
            self.inp = g.inputs[0].name
            self.out = g.outputs[0]

        def forward(self, x):
            for k, s in self.names.items():
                self.tw.params[k] = getattr(self, s)
            return self.tw.forward({self.inp: x})[self.out]

    return Twin(graph).eval()


def torch_export(graph, path, opset=13, keep_bn=True, dynamic=True, batch=1) -> Path:
    """torch.onnx.export (TorchScript exporter, dynamo=False) of a THOMAS graph in eval mode.
    keep_bn: TrainingMode.PRESERVE keeps BatchNormalization nodes; False = EVAL, where torch folds
    BN into the convolutions, as most published exports are."""
    import warnings

    import torch

    mod = torch_module(graph)
    size = graph.inputs[0].shape[1:]
    x = torch.randn((batch,) + tuple(size))
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(mod, x, str(path), dynamo=False, opset_version=opset, training=mode,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}} if dynamic else None)
    return path


def calibrate_bn(graph, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine parameters (a fresh zoo
    model has mean 0, var 1, weight 1, bias 0, which would hide slot mix-ups)."""
    rng = np.random.default_rng(seed)
    for n in graph.nodes:
        if n.op != "BatchNorm":
            continue
        w, b, rm, rv = n.inputs[1:]
        c = graph.weights[w].shape
        graph.weights[w] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        graph.weights[b] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        graph.weights[rm] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        graph.weights[rv] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    return graph


# ============================================================================ the CLI as a subprocess
def thomas(*args, ok=True, timeout: float = 180):
    """`python -m thomas_cli ARGS` on the local device under this test's THOMAS_HOME (never a phone, never
    adb); no traceback in any case, exit 0 when `ok`."""
    env = dict(os.environ, THOMAS_DEVICE="local")
    for k in ("THOMAS_SERIAL", "THOMAS_DEVICE_ROOT", "THOMAS_DEVICE_PYTHON"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "thomas_cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def fails(*args, match: str) -> str:
    """The command exits 1 with one `error:` line on stderr that contains `match`; returns the line."""
    p = thomas(*args, ok=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert match in lines[0], lines[0]
    return lines[0]
