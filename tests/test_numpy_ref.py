"""The numpy_ref backend: gradient flow, frozen prefixes, BN state, errors, thread pinning."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from device_agent.backends.numpy import NumpyRef
from device_agent.errors import BackendError
from device_agent.model.graph import Graph, Node, ParamSpec, TensorSpec
from test_package import tiny_graph


def branchy_graph() -> Graph:
    """x -> conv -> t0 ; t1 = relu(t0) ; t2 = t0 + t1 (t0 used twice) -> GAP -> flatten -> fc."""
    rng = np.random.default_rng(3)
    w = {"conv.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
         "conv.bias": rng.standard_normal(4).astype(np.float32),
         "fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
         "fc.bias": rng.standard_normal(3).astype(np.float32)}
    params = {k: ParamSpec(v.shape, group=k.split(".")[0]) for k, v in w.items()}
    nodes = [
        Node("Conv2d", "conv", ["x", "conv.weight", "conv.bias"], ["t0"],
             {"out_channels": 4, "kernel": [3, 3], "stride": [2, 2], "pads": [1, 0, 1, 1]}),
        Node("Relu", "relu", ["t0"], ["t1"]),
        Node("Add", "add", ["t0", "t1"], ["t2"]),
        Node("GlobalAveragePool", "gap", ["t2"], ["t3"]),
        Node("Flatten", "flat", ["t3"], ["t4"]),
        Node("Gemm", "fc", ["t4", "fc.weight", "fc.bias"], ["logits"], {"out_features": 3}),
    ]
    return Graph("branchy", [TensorSpec("x", (None, 2, 7, 6))], ["logits"], nodes, params, w).validate()


def test_whole_graph_gradients_match_finite_differences():
    g = branchy_graph()
    be = NumpyRef(g, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 7, 6))
    y = np.array([0, 2])

    def loss():
        be.forward(x, grad=True, input_grad=True)
        return be.loss(y)

    loss()
    grads = be.backward()
    assert set(grads) == set(g.params) | {"x"}
    for name in ["conv.weight", "conv.bias", "fc.weight", "x"]:
        arr = x if name == "x" else be.weights[name]
        for j in rng.choice(arr.size, min(12, arr.size), replace=False):
            flat = arr.reshape(-1)
            old = flat[j]
            flat[j] = old + 1e-6
            lp = loss()
            flat[j] = old - 1e-6
            lm = loss()
            flat[j] = old
            num = (lp - lm) / 2e-6
            assert abs(num - grads[name].reshape(-1)[j]) <= 1e-7 + 1e-5 * abs(num), (name, j)


def test_frozen_prefix_keeps_no_backward_state():
    g = tiny_graph()
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    full = NumpyRef(g)
    full.forward(x, grad=True)
    full.loss([0, 1, 2])
    g_full = full.backward()
    assert full.tape_nodes == ["conv", "bn", "relu", "gap", "flat", "fc"]

    last = NumpyRef(g, trainable={"fc.weight", "fc.bias"})
    last.forward(x, grad=True)
    last.loss([0, 1, 2])
    g_last = last.backward()
    assert last.tape_nodes == ["fc"]
    assert set(g_last) == {"fc.weight", "fc.bias"}
    for k in g_last:
        np.testing.assert_array_equal(g_last[k], g_full[k])


def test_bn_running_stats_update_only_with_batch_stats():
    g = tiny_graph()
    x = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32) + 3
    be = NumpyRef(g)
    be.forward(x)  # inference: frozen statistics
    assert be.state_updates == {}
    np.testing.assert_array_equal(be.weights["bn.running_mean"], 0)
    be.forward(x, training=True)
    assert set(be.state_updates) == {"bn.running_mean", "bn.running_var"}
    assert np.all(be.weights["bn.running_mean"] != 0)
    np.testing.assert_array_equal(g.weights["bn.running_mean"], 0)  # the package itself is untouched


def test_training_is_deterministic_per_seed():
    g = tiny_graph()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = NumpyRef(g).forward(x, training=True, seed=5)["logits"]
    b = NumpyRef(g).forward(x, training=True, seed=5)["logits"]
    np.testing.assert_array_equal(a, b)


def test_bad_calls_are_clear_errors():
    g = tiny_graph()
    be = NumpyRef(g)
    with pytest.raises(BackendError, match=r"input 'input' has shape \(2, 3, 9, 8\), the model expects \('N', 3, 8, 8\)"):
        be.forward(np.zeros((2, 3, 9, 8), np.float32))
    with pytest.raises(BackendError, match="needs a forward"):
        be.backward()
    with pytest.raises(BackendError, match="not a trainable parameter"):
        NumpyRef(g, trainable={"bn.running_mean"})
    be.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(BackendError, match=r"grad=True"):
        be.backward({"logits": np.ones((2, 4), np.float32)})


def test_thomas_threads_pins_blas_to_one_thread():
    pytest.importorskip("threadpoolctl")
    code = ("import device_agent, numpy, threadpoolctl, json; "
            "print(json.dumps([i['num_threads'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas']))")
    env = dict(os.environ, THOMAS_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    threads = json.loads(r.stdout)
    assert threads and all(t == 1 for t in threads)
