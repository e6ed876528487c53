"""CPU-family skinny GEMM (kernels/gemm.cl gemm_cpu_sm_nn / _tn): the shipped CPU tuning sends nn/tn
products with M <= skinny_m (FC dX at batch 8) to it. Against the numpy reference with C NaN-filled:
small strips and chunks (SW = 16 columns, SKC = 3 rows) so every size is a partial strip, a shifted
last strip, a partial chunk and a partial row pass somewhere; the shipped strip (512 columns) on
widths below, at and above it; offsets, padded leading dimensions, odd batch strides, alpha, beta,
both bias modes, activations and batch reductions. The chooser: which kernel each form and M gets.
Also the outer form's other paths: beta without bias as vectors, and op(B)'s strip staged in local
memory (gemm_cpu_*_lb) on every form, partial strips and groups, under the local-memory limit."""
import numpy as np
import pytest

from clcheck import needs_cl, runtime
from test_cl_gemm_conv import check, run_gemm

pytestmark = needs_cl

SMALL = {"SKINNY": 1, "SMR": 3, "SWV": 2, "SKC": 3}        # SW = 16 columns, 3-row passes, 3-row chunks
MS = (1, 2, 3, 5, 8, 16)
NS = (1, 7, 16, 17, 40, 129)
KS = (0, 1, 3, 4, 29)


def _kernels(form, M, N, K, params=None, **kw):
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder, TensorRef

    rt = runtime()
    buf = TensorRef("x", (1,), rt.alloc(4 * 17 * 1024 * 256))
    b = LaunchBuilder(rt)
    ta, tb = form[0] == "t", form[1] == "t"
    gemm(b, ta, tb, M, N, K, buf, 0, M if ta else K, buf, 0, K if tb else N, buf, 0, N, variant="cpu",
         params=params, **kw)
    return [ln.kernel.function_name for ln in b.launches]


def _cpu_device():
    if runtime().kind != "cpu":
        pytest.skip("the shipped skinny CPU tiles are the CPU device's defaults")


@pytest.mark.parametrize("form", ["nn", "tn"])
@pytest.mark.parametrize("M", MS)
def test_skinny_grid_small_strips(form, M):
    for N in NS:
        for K in KS:
            got, want = run_gemm(form, M, N, K, "cpu", SMALL, seed=M * 7 + N * 3 + K)
            check(got, want, K)


@pytest.mark.parametrize("form", ["nn", "tn"])
def test_skinny_shipped_strip_widths(form):
    """the shipped tiles (SW = 512 columns, 8-row chunks): narrower, equal, one strip and a shifted one"""
    _cpu_device()
    anysize = {"skinny_min_n": 0, "skinny_min_k": 0}
    for M, N, K in [(8, 100, 70), (8, 512, 9), (3, 513, 17), (16, 1100, 33), (13, 1024, 8)]:
        assert _kernels(form, M, N, K, anysize) == [f"gemm_cpu_sm_{form}"]
        got, want = run_gemm(form, M, N, K, "cpu", anysize, seed=N + K)
        check(got, want, K)


@pytest.mark.parametrize("form", ["nn", "tn"])
def test_skinny_batched_offsets_alpha_beta_bias(form):
    for (M, N, K), pad, offs, alpha, beta, bias in [
        ((5, 40, 7), (1, 2, 3), (1, 2, 3), 0.5, 0.0, None),
        ((8, 33, 29), (0, 4, 0), (4, 0, 8), 1.0, 1.5, "col"),
        ((3, 129, 4), (3, 0, 1), (0, 5, 0), -2.0, 1.0, "row"),
        ((16, 64, 9), (4, 4, 4), (4, 8, 4), 1.0, 0.0, "row"),    # aligned strips: the vector store path
    ]:
        got, want = run_gemm(form, M, N, K, "cpu", SMALL, alpha=alpha, beta=beta, batch=3, pad=pad, offs=offs,
                             bias_mode=bias, expect_launches=1)
        check(got, want, K)


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("form", ["nn", "tn"])
def test_skinny_activation_and_reduce_batch(form, act):
    got, want = run_gemm(form, 5, 40, 7, "cpu", SMALL, beta=0.5, bias_mode="col", act=act, batch=2)
    check(got, want, 7)
    got, want = run_gemm(form, 8, 17, 29, "cpu", SMALL, beta=0.5, bias_mode="row", reduce_batch=True, batch=3,
                         act=act, expect_launches=3)
    check(got, want, 29 * 3)


def test_the_chooser_sends_small_m_nn_tn_to_the_skinny_kernel():
    _cpu_device()
    assert _kernels("nn", 8, 1024, 256) == ["gemm_cpu_sm_nn"]
    assert _kernels("tn", 16, 1024, 256) == ["gemm_cpu_sm_tn"]
    assert _kernels("nn", 17, 1024, 256) == ["gemm_cpu_nn"]          # M over skinny_m
    assert _kernels("nn", 8, 1023, 256) == ["gemm_cpu_nn"]           # N under skinny_min_n: few strips
    assert _kernels("tn", 8, 1024, 255) == ["gemm_cpu_tn"]           # K under skinny_min_k: B is small
    assert _kernels("nt", 8, 1024, 256) == ["gemm_cpu_nt"]           # nt keeps the dot form
    assert _kernels("tt", 8, 1024, 256) == ["gemm_cpu_tt"]
    assert _kernels("nn", 8, 1024, 256, params={"skinny": None}) == ["gemm_cpu_nn"]


def test_skinny_matches_the_outer_form_bitwise_per_k_order():
    """Both forms sum each output's K products in k order with one FMA each: identical results."""
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay
    from clcheck import download, upload

    rt = runtime()
    rng = np.random.default_rng(3)
    M, N, K = 8, 300, 77
    A, B = rng.standard_normal(M * K).astype(np.float32), rng.standard_normal(K * N).astype(np.float32)
    outs = []
    for p in (SMALL, {"skinny": None}):
        tA, tB, tC = upload(rt, "A", A), upload(rt, "B", B), upload(rt, "C", np.full(M * N, np.nan, np.float32))
        b = LaunchBuilder(rt)
        gemm(b, False, False, M, N, K, tA, 0, K, tB, 0, N, tC, 0, N, variant="cpu", params=p)
        replay(rt.queue, b.launches)
        outs.append(download(rt, tC))
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("form", ["nn", "tn", "tt"])
def test_outer_form_beta_vector_path(form):
    """beta != 0 without bias (conv dW accumulating image by image): whole row blocks and strips take
    the vector fma(beta, C, alpha*acc) path, the shifted last strip and clamped rows the scalar one"""
    for (M, N, K), batch, alpha, beta, reduce in [((12, 40, 9), 2, -1.5, 0.5, False), ((13, 64, 5), 1, 1.0, 1.0, False),
                                                  ((6, 16, 3), 3, 0.5, 2.0, True), ((18, 33, 17), 2, 1.0, 1.0, True)]:
        got, want = run_gemm(form, M, N, K, "cpu", {"skinny": None}, alpha=alpha, beta=beta, batch=batch,
                             reduce_batch=reduce, pad=(1, 2, 3), offs=(1, 2, 3))
        check(got, want, K * batch)


LB = {"skinny": None, "LX": 1, "LY": 4, "LB": 1, "lb_rows": 1}


@pytest.mark.parametrize("form", ["nn", "tn", "tt"])
def test_local_b_strip_grid(form):
    """gemm_cpu_*_lb: groups of 1 x 4 row blocks (M = 3..50: partial groups and blocks), N below, at
    and past the 16-column strip (narrow, whole, shifted), K from 16 up, beta with and without bias"""
    for M, N, K in [(3, 5, 16), (24, 16, 17), (25, 40, 33), (50, 129, 64), (7, 1, 29)]:
        assert _kernels(form, M, N, K, LB) == [f"gemm_cpu_{form}_lb"], (M, N, K)
        got, want = run_gemm(form, M, N, K, "cpu", LB, seed=M + N + K)
        check(got, want, K)
        got, want = run_gemm(form, M, N, K, "cpu", LB, beta=0.5, batch=2, pad=(1, 2, 3), offs=(1, 2, 3),
                             bias_mode="row", act="relu")
        check(got, want, K)
        got, want = run_gemm(form, M, N, K, "cpu", LB, alpha=-1.0, beta=1.0, batch=3, reduce_batch=True)
        check(got, want, K * 3)


def test_local_b_strip_is_skipped_where_it_does_not_pay_or_fit():
    _cpu_device()
    assert _kernels("nn", 64, 100, 64) == ["gemm_cpu_nn_lb"]               # shipped: 11 row blocks
    assert _kernels("nn", 42, 100, 64) == ["gemm_cpu_nn"]                  # 7 row blocks share the copy
    assert _kernels("nn", 64, 100, 15) == ["gemm_cpu_nn"]                  # K too short
    assert _kernels("nn", 64, 100, 64, {"lb_bytes": 4 * 16 * 63}) == ["gemm_cpu_nn"]   # strip over the cap
    assert _kernels("nn", 64, 100, 64, {"LB": 0}) == ["gemm_cpu_nn"]
    assert _kernels("nt", 64, 100, 64) == ["gemm_cpu_nt"]
