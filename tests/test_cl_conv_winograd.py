"""Winograd F(2x2,3x3) convolution (kernels/conv_winograd.cl, ops/conv_winograd.py) on the test device
(PoCL): forward (bias, fused ReLU/ReLU6), dX and dW against the numpy reference with every output and
gradient NaN-filled first (clcheck), over a grid of 3x3 stride-1 shapes (odd and even, non-square, every
pad from 0 to 3 and asymmetric, 1x1 images, channel counts off any tile), chunked batches, the phone
profiles' limits, a whole model's step against the im2col path, and which nodes take the path."""
import numpy as np
import pytest

import clcheck
from clcheck import cl_check, needs_cl, runtime
from device_agent.ops import conv2d as conv_mod
from device_agent.ops import conv_winograd as wino
from device_agent.ops import get_op, normalize_attrs
from test_ops_conv_pool import conv_inputs

pytestmark = needs_cl


def _case(name, x_shape, k, pads=(1, 1, 1, 1), bias=True):
    return (name, x_shape, dict(out_channels=k, kernel=[3, 3], pads=list(pads)), bias)


GRID = [
    _case("even8x8_pad1", (2, 16, 8, 8), 16),
    _case("odd7x5_pad0", (2, 17, 7, 5), 19, (0, 0, 0, 0)),
    _case("odd13_pad1", (3, 20, 13, 13), 24),
    _case("nonsquare_asym", (2, 16, 6, 11), 18, (0, 2, 1, 1), False),
    _case("pad2", (1, 16, 5, 6), 16, (2, 2, 2, 2)),
    _case("pad3_wider_than_reach", (1, 16, 4, 5), 17, (3, 1, 0, 3)),
    _case("img1x1", (2, 16, 1, 1), 16),
    _case("img2x3_pad0", (2, 16, 3, 4), 16, (0, 0, 0, 0), False),
    _case("wide_channels", (1, 70, 9, 7), 33),
]
# small channel counts (below MIN_CHANNELS, where the size rule keeps im2col; THOMAS_CL_WINOGRAD=1 forces
# them) exercise the kernels' edges
SMALL = [_case("c3k4_odd", (2, 3, 7, 5), 4), _case("c1k1", (2, 1, 4, 4), 1), _case("c5k2_pad0", (1, 5, 6, 3), 2,
                                                                                     (0, 0, 0, 0))]


def _ids(cases):
    return [c[0] for c in cases]


def _inputs(case, scale=1.0):
    _, x_shape, attrs, bias = case
    return [np.asarray(v, np.float32) * scale for v in conv_inputs(x_shape, attrs, bias, np.float32)]


@pytest.fixture
def seen(monkeypatch):
    """THOMAS_CL_WINOGRAD=1; returns the names of the kernels launched since"""
    monkeypatch.setenv(wino.ENV, "1")
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    return clcheck.launched_kernels(monkeypatch)


@pytest.mark.parametrize("case", GRID, ids=_ids(GRID))
def test_winograd_matches_numpy(case, seen):
    """forward, dX and dW by Winograd (db by bias_grad), on NaN-wiped buffers; no columns"""
    cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    assert {"wino_filter", "wino_input", "wino_output", "wino_grad_tile", "wino_filter_grad"} <= set(seen)
    assert seen.count("wino_filter") == 2                           # forward and dX, each once
    assert not {"col2im", "im2col", "im2col4", "im2row"} & set(seen)


@pytest.mark.parametrize("case", SMALL, ids=_ids(SMALL))
def test_small_channels_forced(case, seen):
    cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    assert "wino_output" in seen


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_fused_activation(act, seen):
    """io.act (a frozen conv + ReLU/ReLU6) in the output transform"""
    from clcheck import cl_run
    from test_cl_gemm_conv import ACT_REF

    op = get_op("Conv2d")
    for case in (GRID[0], GRID[3]):
        ins = _inputs(case, 3.0)
        a = normalize_attrs(op, case[2])
        (ref,), _ = op.forward(a, [v.copy() for v in ins], None)
        (y,), _, _ = cl_run("Conv2d", case[2], ins, act=act)
        np.testing.assert_allclose(y, ACT_REF[act](ref), rtol=1e-4, atol=1e-4)
    assert "wino_output" in seen


def test_batch_in_chunks(seen, monkeypatch):
    """a budget of two images per chunk over five images: three chunks (one short) in each pass, each
    its own input transform, GEMMs and output transform; dW's GEMMs accumulate over the chunks"""
    case = _case("chunks", (5, 16, 7, 6), 20)
    a = normalize_attrs(get_op("Conv2d"), case[2])
    tiles = 4 * 3
    monkeypatch.setattr(wino, "WINO_BUDGET", 16 * (16 + 20) * tiles * 2)
    assert wino._chunk(5, 20, 16, tiles) == 2 and tuple(a["kernel"]) == (3, 3)
    cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    assert seen.count("wino_input") == 9 and seen.count("wino_grad_tile") == 3 and seen.count("wino_filter") == 2


def test_which_nodes_take_it(monkeypatch):
    """3x3, stride 1, undilated, ungrouped (geometric); by default only where C, K >= MIN_CHANNELS and the
    batch has >= MIN_TILES output tiles; the switch: THOMAS_CL_WINOGRAD (forces every geometric node on or
    all off), then tuning "conv2d" -> "winograd", then the device kind (CPUs on)"""
    op = get_op("Conv2d")

    def attrs(**kw):
        return normalize_attrs(op, dict(dict(out_channels=16, kernel=[3, 3], pads=[1, 1, 1, 1]), **kw))

    def on(tun=None, kind="cpu", x=(4, 16, 8, 8), **kw):
        return wino.decide(tun or {}, kind, attrs(**kw), x)

    monkeypatch.delenv(wino.ENV, raising=False)
    assert on() and on(pads=[0, 3, 1, 2], x=(4, 16, 9, 8)) and on(x=(1, 300, 16, 16), out_channels=17)
    assert not on(stride=[2, 2]) and not on(dilation=[2, 2]) and not on(groups=2) and not on(kernel=[3, 2])
    assert not on(kernel=[5, 5], pads=[2, 2, 2, 2])
    assert not on(x=(4, 15, 8, 8)) and not on(out_channels=8)                  # channels
    assert on(x=(4, 16, 8, 8)) and not on(x=(3, 16, 8, 8)) and not on(x=(1, 16, 15, 15), pads=[0, 0, 0, 0])
    assert on(x=(1, 16, 18, 18), pads=[0, 0, 0, 0])                          # 8 x 8 tiles = 64
    assert not on(kind="gpu") and on({"winograd": True}, "gpu") and not on({"winograd": False})
    monkeypatch.setenv(wino.ENV, "0")
    assert not on({"winograd": True})
    monkeypatch.setenv(wino.ENV, "1")
    assert on({"winograd": False}, "gpu", x=(1, 3, 4, 4), out_channels=1) and not on(stride=[2, 2])


@pytest.mark.parametrize("path", ["im2col", "igemm"])
def test_off_keeps_the_gemm_path(monkeypatch, path):
    """THOMAS_CL_WINOGRAD=0: the same node runs the device's GEMM path, as before: im2col + GEMM + col2im,
    or implicit GEMM where the device's tuning opts in (the H100's)"""
    monkeypatch.setenv(wino.ENV, "0")
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    clcheck.tune(monkeypatch, clcheck.runtime(), "conv2d", conv=path)
    names = clcheck.launched_kernels(monkeypatch)
    cl_check("Conv2d", GRID[0][2], _inputs(GRID[0]), rtol=1e-4, atol=1e-4)
    want = "col2im" if path == "im2col" else "conv_igemm_bwd_data"
    assert want in names and not any(n.startswith("wino") for n in names), names


def test_workspace_holds_no_columns(monkeypatch):
    """the workspace is Winograd's largest pass (transformed filters + one chunk's tiles; 4x4 tiles per 2x2
    outputs of both x and y, so not always smaller than the 9x columns), and its 16-GEMMs are declared for
    their partial products"""
    rt = runtime()
    op = get_op("Conv2d")
    a = normalize_attrs(op, dict(out_channels=48, kernel=[3, 3], pads=[1, 1, 1, 1]))
    x = (4, 32, 13, 13)
    shapes = ([x], op.infer(a, [x, op.param_shapes(a, x)["weight"]]))
    monkeypatch.setenv(wino.ENV, "0")
    cols = conv_mod.cl_conv_workspace(a, *shapes, dev=rt)
    monkeypatch.setenv(wino.ENV, "1")
    both = conv_mod.cl_conv_workspace(a, *shapes, dev=rt)
    need = 4 * wino.workspace_floats(4, 32, 48, 13, 13, 13, 13)
    assert both == need == 4 * (16 * 48 * 32 + 16 * 80 * 49 * 4) != cols
    gemms = conv_mod.cl_conv_gemms(a, *shapes, dev=rt)
    assert gemms == [(48, 49 * 4, 32, 16, False), (32, 49 * 4, 48, 16, False), (48, 32, 49 * 4, 16, False)]


@pytest.fixture
def profiled(request, monkeypatch):
    yield from clcheck.profiled_runtime(request.param, monkeypatch)


@pytest.mark.parametrize("profiled", clcheck.phone_profiles(), indirect=True)
def test_under_phone_limits(profiled, seen):
    """the transforms and their 16-GEMMs launch within each phone profile's limits (GPU-shaped GEMMs)"""
    for case in (GRID[2], GRID[3]):
        cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    assert "wino_output" in seen


@pytest.mark.parametrize("arch", ["alexnet"])
def test_model_step_winograd_equals_im2col(arch, monkeypatch):
    """one training step's loss and every gradient: Winograd == im2col (float32 rounding apart)"""
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    g = zoo.build(arch, num_classes=5, size=64)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = np.array([1, 4])
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    out = {}
    for on in ("0", "1"):
        monkeypatch.setenv(wino.ENV, on)
        plan = Plan(g, batch=2, optimizer=OptimConfig("sgd"), runtime=runtime())
        out[on] = plan.loss_and_grads(x, y, seed=1)
        out[on + "labels"] = plan.launch_labels()
    (l0, g0), (l1, g1) = out["0"], out["1"]
    assert abs(l0 - l1) <= 1e-4 * abs(l0)
    for k in g0:
        scale = float(np.abs(g0[k]).max()) + 1e-6
        assert float(np.abs(g0[k] - g1[k]).max()) <= 1e-3 * scale, k
    assert len(out["1labels"]) != len(out["0labels"])


def test_mixed_dtype_step_with_winograd(monkeypatch):
    """dtype "mixed" keeps the tensors a backward reads as halves; the Winograd nodes' forward is unchanged
    (the loss bit-identical to float32) and their gradients stay within fp16 storage error"""
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    monkeypatch.setenv(wino.ENV, "1")
    g = zoo.build("alexnet", num_classes=5, size=64)
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = np.array([0, 3])
    out = {}
    for dtype in ("float32", "mixed"):
        plan = Plan(g, batch=2, optimizer=OptimConfig("sgd"), runtime=runtime(), dtype=dtype)
        assert any("wino_grad_tile" == ln.kernel.function_name for ln in plan.bw_launches)
        out[dtype] = plan.loss_and_grads(x, y, seed=1)
    (l0, g0), (l1, g1) = out["float32"], out["mixed"]
    assert l0 == l1
    for k in g0:
        scale = float(np.abs(g0[k]).max()) + 1e-6
        assert float(np.abs(g0[k] - g1[k]).max()) <= 2e-2 * scale, k
