"""The implicit-GEMM convolution (kernels/conv_igemm.cl, ops/conv_igemm.py) on the test device (PoCL):
forward, dX and dW against the numpy reference with every output and gradient buffer NaN-filled first
(clcheck), over a shape grid (strided, padded, dilated, non-square, grouped, tile edges), every shipped
tile, the dW reduction in segments, each phone profile's limits, and a whole model's step; the path
selection (THOMAS_CL_CONV, tuning) and the workspace it saves."""
import numpy as np
import pytest

import clcheck
from clcheck import cl_check, needs_cl, runtime
from device_agent.ops import conv_igemm as ig
from device_agent.ops import conv2d as conv_mod
from device_agent.ops import get_op, normalize_attrs
from test_cl_gemm_conv import check_needs
from test_ops_conv_pool import CONV_CASES, _ids, conv_inputs

pytestmark = needs_cl

REGULAR = [c for c in CONV_CASES if not c[0].startswith("depthwise")]
# beyond the op grid: tiles' edges (M, N*P*Q and C*R*S not multiples of 16/64), non-square strides,
# dilations and kernels, a strided 1x1 (not pointwise), padding wider than the kernel reach
GRID = [
    ("edges_k70", (3, 5, 11, 9), dict(out_channels=70, kernel=[3, 3], pads=[1, 1, 1, 1]), True),
    ("stride21_k5x1", (2, 4, 13, 8), dict(out_channels=9, kernel=[5, 1], stride=[2, 1], pads=[2, 0, 2, 0]), True),
    ("stride13_dil32", (2, 3, 12, 17), dict(out_channels=5, kernel=[2, 3], stride=[1, 3], dilation=[3, 2],
                                           pads=[1, 2, 0, 1]), False),
    ("k1x1_stride2", (2, 6, 9, 7), dict(out_channels=7, kernel=[1, 1], stride=[2, 2]), True),
    ("k1x1_pad1", (2, 6, 5, 4), dict(out_channels=3, kernel=[1, 1], pads=[1, 0, 0, 1]), True),
    ("k7s2_wide", (1, 3, 19, 23), dict(out_channels=16, kernel=[7, 7], stride=[2, 2], pads=[3, 3, 3, 3]), True),
    ("groups3_s2", (2, 6, 9, 9), dict(out_channels=9, kernel=[3, 3], stride=[2, 2], pads=[1, 1, 1, 1],
                                      groups=3), True),
    ("big_channels", (2, 40, 6, 6), dict(out_channels=33, kernel=[3, 3], pads=[1, 1, 1, 1]), True),
]


@pytest.fixture
def igemm(monkeypatch):
    """THOMAS_CL_CONV=igemm: the implicit-GEMM kernels on the CPU test device; returns the names of the
    kernels launched since"""
    monkeypatch.setenv("THOMAS_CL_CONV", "igemm")
    monkeypatch.setenv("THOMAS_CL_WINOGRAD", "0")   # 3x3 stride-1 nodes would take Winograd on CPUs
    return clcheck.launched_kernels(monkeypatch)


def _inputs(case, scale=1.0):
    _, x_shape, attrs, bias = case
    return [np.asarray(v, np.float32) * scale for v in conv_inputs(x_shape, attrs, bias, np.float32)]


def _pointwise(attrs) -> bool:
    return conv_mod._is_pointwise(normalize_attrs(get_op("Conv2d"), attrs))


@pytest.mark.parametrize("case", REGULAR + GRID, ids=_ids(REGULAR + GRID))
def test_igemm_matches_numpy(case, igemm):
    """forward, dX, dW (+ db) on NaN-wiped buffers; the implicit kernels did the work (no im2col)"""
    cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    assert not {"im2col", "im2col4", "im2row", "col2im"} & set(igemm)
    # a pointwise conv's dW is a plain GEMM over the batch on GPU-shaped GEMMs (no columns to avoid there:
    # the H100 runs gemm_gpu_*), and the implicit kernel on CPU-shaped ones (which would gather im2row)
    if not (_pointwise(case[2]) and any(k.startswith("gemm_gpu") for k in igemm)):
        assert "conv_igemm_bwd_filt" in igemm
    if not _pointwise(case[2]):
        assert {"conv_igemm_fwd", "conv_igemm_bwd_data"} <= set(igemm)


SHIPPED = list(ig.TILES) + [ig.NARROW, dict(ig.TILES[0], MDIMC=16, NDIMC=16), dict(ig.TILES[0], LPAD=0)]


@pytest.mark.parametrize("tile", range(len(SHIPPED)),
                         ids=[f"{t['MWG']}x{t['NWG']}x{t['KWG']}_{t['NDIMC']}x{t['MDIMC']}_p{t.get('LPAD', 0)}"
                              for t in SHIPPED])
def test_every_tile(tile, igemm):
    """each shipped tile (TILES, NARROW, the H100 GEMM's 64x64 on 16x16, an unpadded one) builds and
    computes every kernel correctly (tuning "conv2d" -> "igemm_tile")"""
    rt = runtime()
    rt.tuning.override["conv2d"] = {"igemm_tile": SHIPPED[tile]}
    try:
        for case in (GRID[0], GRID[2], REGULAR[-1]):
            cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)
    finally:
        rt.tuning.override.pop("conv2d")


@pytest.mark.parametrize("case", [GRID[0], GRID[6], GRID[3]], ids=_ids([GRID[0], GRID[6], GRID[3]]))
def test_dw_in_segments(case, igemm, monkeypatch):
    """dW's N*P*Q reduction cut in several segments (a remainder included), the parts in the workspace
    summed by conv_igemm_sum; a workspace too small for them falls back to one segment"""
    monkeypatch.setattr(ig, "MIN_SEG", 8)
    monkeypatch.setattr(ig, "WANT_GROUPS", 1 << 20)
    _, x_shape, attrs, _ = case
    a = normalize_attrs(get_op("Conv2d"), attrs)
    (n, k, p, q), = get_op("Conv2d").infer(a, [x_shape, get_op("Conv2d").param_shapes(a, x_shape)["weight"]])
    crsg = x_shape[1] // a["groups"] * a["kernel"][0] * a["kernel"][1]
    assert ig.dw_segments(k // a["groups"], crsg, a["groups"], n * p * q) > 2
    cl_check("Conv2d", attrs, _inputs(case), rtol=1e-4, atol=1e-4)
    assert "conv_igemm_sum" in igemm
    igemm.clear()
    monkeypatch.setattr(conv_mod, "workspace_floats", lambda *args, **kw: 0)   # no room for the parts
    cl_check("Conv2d", attrs, _inputs(case), rtol=1e-4, atol=1e-4)
    assert "conv_igemm_bwd_filt" in igemm and "conv_igemm_sum" not in igemm


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_fused_activation(act, igemm):
    """io.act (a frozen conv + ReLU/ReLU6) in the forward kernel's epilogue"""
    from test_cl_gemm_conv import ACT_REF

    op = get_op("Conv2d")
    for case in (GRID[0], GRID[1]):
        ins = _inputs(case, 3.0)
        (y,), _ = op.forward(normalize_attrs(op, case[2]), ins, clcheck.Ctx())
        (yc,), _, _ = clcheck.cl_run("Conv2d", case[2], ins, act=act)
        assert (yc == 0).any() and (act != "relu6" or (yc == 6).any())
        np.testing.assert_allclose(yc, ACT_REF[act](y), rtol=1e-4, atol=1e-4)


FROZEN = [GRID[0], GRID[6], next(c for c in CONV_CASES if c[0] == "k1x1")]


@pytest.mark.parametrize("needs", [(True, False, True), (False, True, False), (False, False, True)],
                         ids=["frozen_w", "frozen_x_b", "bias_only"])
@pytest.mark.parametrize("case", FROZEN, ids=_ids(FROZEN))
def test_frozen_inputs(case, needs, igemm):
    """gradients only where wanted: the others stay None and nothing is launched for them"""
    check_needs("Conv2d", case[2], _inputs(case[:3] + (True,)), list(needs))
    if not needs[1]:
        assert "conv_igemm_bwd_filt" not in igemm
    if not needs[0]:
        assert "conv_igemm_bwd_data" not in igemm


# ---- selection ----
def test_selection_env_and_tuning(monkeypatch):
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    assert ig.conv_mode({}) == "im2col"                    # on every device until measured faster on a GPU
    assert ig.conv_mode({"conv": "im2col"}) == "im2col" and ig.conv_mode({"conv": "igemm"}) == "igemm"
    monkeypatch.setenv("THOMAS_CL_CONV", "IM2COL")
    assert ig.conv_mode({"conv": "igemm"}) == "im2col"
    monkeypatch.setenv("THOMAS_CL_CONV", "auto")
    assert ig.conv_mode({"conv": "igemm"}) == "im2col"       # the env's auto overrides tuning too
    monkeypatch.setenv("THOMAS_CL_CONV", "winograd")
    with pytest.raises(ig.ConvModeError, match=r"^THOMAS_CL_CONV='winograd' is not a convolution path "
                                               r"\(igemm, im2col or auto\)$"):
        ig.conv_mode({})


def test_default_path_is_im2col(monkeypatch):
    """without the switch or a tuning entry that opts in (as the H100's does: configs/tuning/gemm.json)
    a device keeps im2col and its columns in the workspace (implicit GEMM becomes a GPU's default only
    once measured faster there: docs/BACKENDS.md)"""
    rt, seen = _first_case_with_tuning(monkeypatch, conv="auto")
    a, shapes = _shapes(GRID[0])
    ws = conv_mod.cl_conv_workspace(a, *shapes, dev=rt)
    assert any(k.startswith("im2col") for k in seen) and "conv_igemm_fwd" not in seen, seen
    assert ws == conv_mod.cl_conv_workspace(a, *shapes) > 0


def test_a_tuning_entry_opts_a_device_in(monkeypatch):
    """tuning "conv2d" -> "conv": "igemm" (the H100's entry) takes the implicit-GEMM kernels, no columns"""
    _, seen = _first_case_with_tuning(monkeypatch, conv="igemm")
    assert "conv_igemm_fwd" in seen and not any(k.startswith("im2col") for k in seen), seen


def _first_case_with_tuning(monkeypatch, **conv2d):
    """GRID[0] checked against the reference without THOMAS_CL_CONV and with these tuning "conv2d" keys
    over the device's own: (runtime, the kernels it launched)"""
    monkeypatch.delenv("THOMAS_CL_CONV", raising=False)
    rt = runtime()
    clcheck.tune(monkeypatch, rt, "conv2d", **conv2d)
    seen = clcheck.launched_kernels(monkeypatch)
    cl_check("Conv2d", GRID[0][2], _inputs(GRID[0]), rtol=1e-4, atol=1e-4)
    return rt, seen


def _shapes(case):
    op = get_op("Conv2d")
    a = normalize_attrs(op, case[2])
    x = case[1]
    return a, ([x], op.infer(a, [x, op.param_shapes(a, x)["weight"]]))


def test_bad_switch_is_one_line_before_any_launch(monkeypatch):
    from device_agent.backends.opencl.plan import Plan
    from device_agent.errors import ThomasError
    from thomas_cli import zoo

    monkeypatch.setenv("THOMAS_CL_CONV", "fast")
    g = zoo.build("mobilenet_v2", num_classes=3, size=32, width=0.25)
    with pytest.raises(ThomasError, match="THOMAS_CL_CONV='fast' is not a convolution path"):
        Plan(g, batch=2, runtime=runtime())


def test_workspace_holds_no_columns(monkeypatch):
    """igemm: a regular conv's workspace is dW's partial sums at most (none here), never the columns;
    the same node on im2col needs C*R*S*P*Q floats per image"""
    rt = runtime()
    a, shapes = _shapes(GRID[5])
    monkeypatch.setenv("THOMAS_CL_WINOGRAD", "0")
    monkeypatch.setenv("THOMAS_CL_CONV", "im2col")
    cols = conv_mod.cl_conv_workspace(a, *shapes, dev=rt)
    assert cols >= 4 * 3 * 7 * 7 * 10 * 12
    monkeypatch.setenv("THOMAS_CL_CONV", "igemm")
    assert conv_mod.cl_conv_workspace(a, *shapes, dev=rt) == 0 and conv_mod.cl_conv_gemms(a, *shapes, dev=rt) == []
    big = ([(32, 64, 56, 56)], [(32, 64, 56, 56)])
    a3 = normalize_attrs(get_op("Conv2d"), dict(out_channels=64, kernel=[3, 3], pads=[1, 1, 1, 1]))
    parts = conv_mod.cl_conv_workspace(a3, *big, dev=rt)
    assert 0 < parts == 4 * ig.dw_segments(64, 576, 1, 32 * 56 * 56) * 64 * 576 <= 4 * ig.PART_CAP


# ---- under the phones' limits (the path GPUs take by default) ----
@pytest.fixture
def profiled(request, monkeypatch):
    yield from clcheck.profiled_runtime(request.param, monkeypatch)


@pytest.mark.parametrize("profiled", clcheck.phone_profiles(), indirect=True)
def test_profiles_take_igemm_and_launch(profiled):
    """a phone profile is a GPU: implicit GEMM by default, with a tile inside its limits"""
    lim = profiled.limits
    for kern, rows in (("conv_igemm_fwd", 70), ("conv_igemm_bwd_data", 5), ("conv_igemm_bwd_filt", 70)):
        t = ig.pick_tile(_builder(profiled), kern, normalize_attrs(get_op("Conv2d"), GRID[0][2]), rows)
        assert t["MDIMC"] * t["NDIMC"] <= lim.wg_cap() and 4 * t["KWG"] * (t["MWG"] + t["NWG"]) <= lim.local_mem
    for case in (GRID[0], GRID[1]):
        cl_check("Conv2d", case[2], _inputs(case), rtol=1e-4, atol=1e-4)


def _builder(rt):
    from device_agent.backends.opencl.runtime import LaunchBuilder

    return LaunchBuilder(rt)


# ---- a whole model ----
@pytest.mark.parametrize("arch", ["alexnet", "mobilenet_v2"])
def test_model_step_igemm_equals_im2col(arch, monkeypatch):
    """one training step's loss and every gradient: implicit GEMM == im2col (float32 rounding apart),
    with a smaller workspace"""
    from device_agent.backends.opencl.plan import OptimConfig, Plan
    from thomas_cli import zoo

    size = 64 if arch == "alexnet" else 32
    g = zoo.build(arch, num_classes=5, size=size, **({} if arch == "alexnet" else {"width": 0.25}))
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    y = np.array([1, 4])
    out = {}
    monkeypatch.setenv("THOMAS_CL_WINOGRAD", "0")
    for mode in ("im2col", "igemm"):
        monkeypatch.setenv("THOMAS_CL_CONV", mode)
        plan = Plan(g, batch=2, optimizer=OptimConfig("sgd"), runtime=runtime())
        out[mode] = plan.loss_and_grads(x, y, seed=1) + (plan.memory()["workspace"],)
    (l0, g0, ws0), (l1, g1, ws1) = out["im2col"], out["igemm"]
    assert abs(l0 - l1) <= 1e-4 * abs(l0) and ws1 < ws0
    for k in g0:
        scale = float(np.abs(g0[k]).max()) + 1e-6
        assert float(np.abs(g0[k] - g1[k]).max()) <= 1e-3 * scale, k
