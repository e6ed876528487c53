"""The CPU-shaped conv kernels. Pointwise dW (conv2d.cl pw_dw_cpu: dW tiles summed along the contiguous
pixels, no im2row) on channel counts that do not fill a tile, pixel counts with and without an 8-wide tail,
every tile shape the tuning may pick. Depthwise (conv_depthwise.cl): dw_bwd_filter_rows (a work-item per
segment and channel, vector sums in registers) against the numpy reference, outputs wiped to NaN, on rows long enough for its
vector chunks, the half-width tail and the scalar edges, at strides 1-3, dilation, asymmetric pads, a
channel multiplier and 5x5 taps (the generic tap loop); one segment (straight into dW) and many (the
finish launch); the row kernels dw_fwd_rows / dw_bwd_data_rows bit for bit against the gather kernels;
all bit-identical on a repeat. Runs on whatever OpenCL device runs the tests (tuning
"conv2d" -> "dw_filter_rows" forces the depthwise kernel there; the pointwise one runs where the GEMMs are
CPU-shaped, as on PoCL, else the test skips)."""
from __future__ import annotations

import numpy as np
import pytest

from clcheck import cl_check, cl_run, needs_cl, runtime
from test_ops_conv_pool import conv_inputs

pytestmark = needs_cl


def _dw(c, kernel=3, stride=1, pads=(1, 1, 1, 1), dilation=1, mult=1):
    return dict(out_channels=c * mult, kernel=[kernel, kernel], stride=[stride, stride], pads=list(pads),
                dilation=[dilation, dilation], groups=c)


CASES = [   # id, x shape, attrs
    ("s1_w21", (3, 3, 9, 21), _dw(3)),                                  # 8-chunks, float4 tail, edges
    ("s1_w30_odd_h", (2, 2, 7, 30), _dw(2)),
    ("s1_w7", (2, 5, 7, 7), _dw(5)),                                    # no 8-chunk: the tail only
    ("s2_w23", (2, 3, 9, 23), _dw(3, stride=2)),
    ("s2_w40", (1, 4, 6, 40), _dw(4, stride=2)),
    ("s3_w37", (1, 2, 7, 37), _dw(2, stride=3)),
    ("dil2_w29", (1, 3, 8, 29), _dw(3, pads=(2, 2, 2, 2), dilation=2)),
    ("asym_w26", (2, 3, 6, 26), _dw(3, pads=(0, 2, 1, 0))),
    ("mult2_w19", (2, 3, 5, 19), _dw(3, mult=2)),
    ("k5s2_w33", (1, 2, 9, 33), _dw(2, kernel=5, stride=2, pads=(2, 2, 2, 2))),
    ("nopad_w17", (2, 2, 5, 17), _dw(2, pads=(0, 0, 0, 0))),
    ("mult3_s2_w26", (1, 2, 6, 26), _dw(2, stride=2, mult=3)),        # more weights than DW_WMAX's default
]

TUNINGS = [{"dw_filter_rows": True}, {"dw_filter_rows": True, "dw_vec": 4},
           {"dw_filter_rows": True, "dw_seg": 2}, {"dw_filter_rows": True, "dw_seg": 1, "dw_vec": 4}]


@pytest.fixture
def tuning():
    rt = runtime()
    yield rt.tuning.override
    rt.tuning.override.pop("conv2d", None)


@pytest.mark.parametrize("tun", TUNINGS, ids=["vec8", "vec4", "seg2", "seg1_vec4"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dw_filter_rows_matches_reference(case, tun, tuning):
    _, x_shape, attrs = case
    tuning["conv2d"] = tun
    cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, True, np.float32), atol=3e-5)


def test_dw_filter_rows_is_deterministic(tuning):
    _, x_shape, attrs = CASES[0]
    tuning["conv2d"] = {"dw_filter_rows": True, "dw_seg": 3}
    ins = conv_inputs((4,) + x_shape[1:], attrs, True, np.float32)
    gy = np.random.default_rng(5).standard_normal((4, 3, 9, 21)).astype(np.float32)
    (_, gw1, _), (_, gw2, _) = (cl_run("Conv2d", attrs, ins, gys=[gy])[1] for _ in range(2))
    assert gw1.tobytes() == gw2.tobytes()


PW_CASES = [   # id, x shape, out_channels
    ("c5_k7_l35", (3, 5, 5, 7), 7),          # neither channel count fills a tile; 4 eight-wide chunks + 3
    ("c8_k4_l64", (2, 8, 8, 8), 4),          # whole tiles, no tail
    ("c3_k9_l5", (2, 3, 1, 5), 9),           # tail only
    ("c17_k2_l49", (1, 17, 7, 7), 2),
]


def _cpu_gemms():
    from device_agent.backends.opencl.runtime import LaunchBuilder
    if LaunchBuilder(runtime()).gemm_family() != "cpu":
        pytest.skip("the pointwise dW tiles run only where the GEMMs are CPU-shaped")


@pytest.mark.parametrize("tile", [None, [4, 8], [6, 4], [1, 1]], ids=["default", "4x8", "6x4", "1x1"])
@pytest.mark.parametrize("case", PW_CASES, ids=[c[0] for c in PW_CASES])
def test_pw_dw_tiles_match_reference(case, tile, tuning):
    _cpu_gemms()
    _, x_shape, k = case
    tuning["conv2d"] = {"pw_dw": "tiles"} if tile is None else {"pw_dw": "tiles", "pw_tile": tile}
    attrs = dict(out_channels=k, kernel=[1, 1])
    cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, True, np.float32), atol=3e-5)


def test_pw_dw_tiles_are_deterministic(tuning):
    _cpu_gemms()
    tuning["conv2d"] = {"pw_dw": "tiles"}
    attrs = dict(out_channels=7, kernel=[1, 1])
    ins = conv_inputs((4, 5, 9, 11), attrs, False, np.float32)
    gy = np.random.default_rng(6).standard_normal((4, 7, 9, 11)).astype(np.float32)
    (_, gw1), (_, gw2) = (cl_run("Conv2d", attrs, ins, gys=[gy])[1] for _ in range(2))
    assert gw1.tobytes() == gw2.tobytes()


@pytest.mark.parametrize("act", [None, "relu6"])
@pytest.mark.parametrize("prows", [0, 2])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dw_row_kernels_equal_the_gather_kernels(case, prows, act, tuning):
    """dw_fwd_rows / dw_bwd_data_rows (vectors along the row, the last one moved back, a plane or `prows`
    rows per work-item) give dw_fwd / dw_bwd_data's values bit for bit: the same sums in the same order"""
    _, x_shape, attrs = case
    ins = [v * 3 for v in conv_inputs(x_shape, attrs, True, np.float32)]
    out = {}
    for name, tun in (("rows", {"dw_rows": True, "dw_prows": prows}), ("gather", {"dw_rows": False, "dw_run": 1})):
        tuning["conv2d"] = tun
        (y0,), _, _ = cl_run("Conv2d", attrs, ins, act=act)
        gy = np.random.default_rng(7).standard_normal(y0.shape).astype(np.float32)
        _, (gx, _, _), _ = cl_run("Conv2d", attrs, ins, gys=[gy])
        out[name] = (y0, gx)
    assert not np.isnan(out["rows"][0]).any() and not np.isnan(out["rows"][1]).any()
    if act == "relu6":
        assert (out["rows"][0] == 6).any() and (out["rows"][0] == 0).any()
    for a, b in zip(out["rows"], out["gather"]):
        np.testing.assert_array_equal(a, b)
