"""A small model using Slice (a Split), a channel shuffle (Reshape-Transpose-Reshape, rank 5),
squeeze-excitation (ReduceMean), ResizeNearest and ReduceMax: the numpy engine vs PyTorch (float64
gradients), the OpenCL engine vs the numpy engine (3 SGD steps, eval, inference Plan), and
backend `auto` falling back to numpy when an op has no OpenCL kernels."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from clcheck import needs_cl
from device_agent.backends.numpy import NumpyEngine, NumpyRef
from device_agent.engine import missing_kernels, resolve_backend
from device_agent.errors import BackendError
from device_agent.model.graph import Graph, Node, ParamSpec, TensorSpec
from device_agent.training.optim import make_optimizer
from device_agent.ops import REGISTRY


def layout_graph(resize=("half_pixel", "round_prefer_ceil"), c=4, h=6, w=5) -> Graph:
    """x (N,c,h,w) -> conv 8 -> relu -> { Slice 0:4 -> Transpose 0,2,3,1 -> ReduceMean (1,2) ;
    Slice 4: -> ReduceMax (2,3) ; shuffle(g=2) -> SE (ReduceMean, conv 1x1, sigmoid, Mul) ->
    ResizeNearest (h+3)x(w+2) -> conv 6 s2 -> ReduceMax (2,3) } -> Concat -> fc 3"""
    rng = np.random.default_rng(7)
    wt = {"c1.weight": rng.standard_normal((8, c, 3, 3)) * 0.3, "c1.bias": rng.standard_normal(8) * 0.1,
         "se.weight": rng.standard_normal((8, 8, 1, 1)) * 0.3, "se.bias": rng.standard_normal(8) * 0.1,
         "c2.weight": rng.standard_normal((6, 8, 3, 3)) * 0.2, "c2.bias": rng.standard_normal(6) * 0.1,
         "fc.weight": rng.standard_normal((3, 14)) * 0.3, "fc.bias": rng.standard_normal(3) * 0.1}
    wt = {k: v.astype(np.float32) for k, v in wt.items()}
    params = {k: ParamSpec(v.shape, group=k.split(".")[0]) for k, v in wt.items()}
    coord, nearest = resize
    nodes = [
        Node("Conv2d", "c1", ["x", "c1.weight", "c1.bias"], ["t0"], {"out_channels": 8, "kernel": [3, 3],
                                                                   "pads": [1, 1, 1, 1]}),
        Node("Relu", "r1", ["t0"], ["t1"]),
        Node("Slice", "lo", ["t1"], ["a"], {"axis": 1, "start": 0, "end": 4}),
        Node("Transpose", "nhwc", ["a"], ["a1"], {"perm": [0, 2, 3, 1]}),
        Node("ReduceMean", "amean", ["a1"], ["a2"], {"axes": [1, 2], "keepdims": False}),
        Node("Slice", "hi", ["t1"], ["b"], {"axis": -3, "start": 4, "end": 2 ** 31 - 1}),
        Node("ReduceMax", "bmax", ["b"], ["b1"], {"axes": [2, 3], "keepdims": False}),
        Node("Reshape", "sh1", ["t1"], ["s0"], {"shape": [0, 2, 4, h, w]}),
        Node("Transpose", "shuf", ["s0"], ["s1"], {"perm": [0, 2, 1, 3, 4]}),
        Node("Reshape", "sh2", ["s1"], ["s"], {"shape": [0, 8, h, w]}),
        Node("ReduceMean", "squeeze", ["s"], ["q0"], {"axes": [2, 3]}),
        Node("Conv2d", "se", ["q0", "se.weight", "se.bias"], ["q1"], {"out_channels": 8, "kernel": [1, 1]}),
        Node("Sigmoid", "gate", ["q1"], ["q2"]),
        Node("Mul", "excite", ["s", "q2"], ["m"]),
        Node("ResizeNearest", "up", ["m"], ["u"], {"size": [h + 3, w + 2], "coord": coord, "nearest": nearest}),
        Node("Conv2d", "c2", ["u", "c2.weight", "c2.bias"], ["v"], {"out_channels": 6, "kernel": [3, 3],
                                                                  "stride": [2, 2]}),
        Node("ReduceMax", "vmax", ["v"], ["v1"], {"axes": [-1, -2], "keepdims": False}),
        Node("Concat", "cat", ["v1", "a2", "b1"], ["f"], {"axis": 1}),
        Node("Gemm", "fc", ["f", "fc.weight", "fc.bias"], ["logits"], {"out_features": 3}),
    ]
    return Graph("layout", [TensorSpec("x", (None, c, h, w))], ["logits"], nodes, params, wt,
                 labels=["0", "1", "2"]).validate()


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4, 6, 5)).astype(np.float32), np.arange(n) % 3


def test_layout_graph_shapes():
    s = layout_graph().infer_shapes(batch=2)
    assert s["s0"] == (2, 2, 4, 6, 5) and s["s1"] == (2, 4, 2, 6, 5) and s["a1"] == (2, 6, 5, 4)
    assert s["q0"] == (2, 8, 1, 1) and s["u"] == (2, 8, 9, 7) and s["f"] == (2, 14)


@pytest.mark.torch
@pytest.mark.parametrize("resize", [("half_pixel", "round_prefer_ceil"), ("asymmetric", "floor"),
                                    ("align_corners", "round_prefer_floor")])
def test_numpy_gradients_match_torch(resize):
    """float64: the numpy engine's loss and every gradient equal the TorchTwin's (an independent
    torch interpreter of the graph) to 1e-9."""
    torch = pytest.importorskip("torch")
    from torch_twin import TorchTwin

    g = layout_graph(resize)
    x, y = _batch()
    ref = NumpyRef(g, dtype=np.float64)
    ref.forward(x.astype(np.float64), grad=True)
    loss = ref.loss(y)
    grads = ref.backward()
    tw = TorchTwin(g, dtype=torch.float64)
    tl = tw.loss(tw.forward({"x": x.astype(np.float64)})["logits"], y)
    assert abs(loss - tl.item()) <= 1e-9 * abs(tl.item())
    for k, v in tw.grads(tl).items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def _engines(g, trainable):
    from device_agent.backends.opencl.engine import OpenCLEngine

    out = []
    for cls in (NumpyEngine, OpenCLEngine):
        opt = make_optimizer("sgd", {k: g.params[k].shape for k in sorted(trainable)}, momentum=0.9)
        out.append(cls(g, trainable, opt, bn_batch_stats=False))
    return out


@needs_cl
def test_opencl_engine_trains_like_numpy():
    """3 SGD steps: the same losses and weights on both engines; then eval and an inference Plan."""
    from device_agent.backends.opencl.plan import Plan

    g = layout_graph()
    x, y = _batch()
    trainable = set(g.params)
    eng_np, eng_cl = _engines(g, trainable)
    losses = [[e.train_step(x, y, 0.1)[0] for _ in range(3)] for e in (eng_np, eng_cl)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][2] < losses[0][0]                       # it learns
    pn, pc = eng_np.params(), eng_cl.params()
    for k in trainable:
        np.testing.assert_allclose(pc[k], pn[k], rtol=1e-4, atol=1e-5, err_msg=k)
    ln, cn, logits_np = eng_np.eval_batch(x, y)
    lc, cc, logits_cl = eng_cl.eval_batch(x, y)
    np.testing.assert_allclose(logits_cl, logits_np, rtol=1e-4, atol=1e-5)
    g2 = dataclasses.replace(g, weights={k: v.astype(np.float32) for k, v in pn.items()})
    plan = Plan(g2, batch=5, trainable=set())
    x5 = _batch(5, 1)[0]
    np.testing.assert_allclose(plan.infer(x5), NumpyRef(g2).forward(x5)["logits"], rtol=1e-4, atol=1e-5)


# ============================================================================= auto fallback
@pytest.fixture
def no_kernels(monkeypatch):
    """ReduceMax registered without OpenCL kernels, as a new op would be."""
    monkeypatch.setitem(REGISTRY, "ReduceMax", dataclasses.replace(REGISTRY["ReduceMax"], cl=None))


@needs_cl
def test_auto_falls_back_to_numpy_with_one_note(no_kernels, capsys):
    g = layout_graph()
    assert missing_kernels(g) == ["ReduceMax"]
    assert resolve_backend("auto", graph=g) == "numpy"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ReduceMax" in err[0] and "numpy" in err[0] and "layout" in err[0]
    assert resolve_backend("auto") == "opencl"                 # no graph: nothing to check
    assert resolve_backend("numpy", graph=g) == "numpy"
    assert resolve_backend("opencl", graph=g) == "opencl"       # explicit: the Plan says why it cannot
    with pytest.raises(BackendError, match="node 'bmax': op ReduceMax has no OpenCL kernels yet"):
        _engines(g, set(g.params))[1].train_step(*_batch(), 0.1)
    from device_agent.infer import infer_package

    x = _batch()[0]
    np.testing.assert_array_equal(infer_package(g, x, backend="auto"), NumpyRef(g).forward(x)["logits"])


@needs_cl
def test_auto_training_run_falls_back(no_kernels, tmp_path, capsys):
    """train.run with backend auto on a model whose op has no kernels: the run trains on numpy,
    its plan event says so, and stderr carries the one note."""
    from device_agent.protocol import TrainJob
    from device_agent.training.train import run
    from train_helpers import make_root

    paths = make_root(tmp_path, classes=range(3), model=layout_graph(c=3, h=8, w=8), limit=60)
    evs = []
    run(TrainJob.from_dict(dict(paths, epochs=1, batch=16, lr=0.05, backend="auto", layers="all")), evs.append)
    plan = json.loads(evs[0].to_json())
    assert plan["ev"] == "plan" and plan["backend"] == "numpy"
    assert json.loads(evs[-1].to_json())["ev"] == "done"
    assert "ReduceMax" in capsys.readouterr().err
