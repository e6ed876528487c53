"""OpenCL GEMM (both kernel families) against numpy, and the Gemm / Conv2d launchers against the
numpy reference, on the CL device (PoCL in CI). Every output buffer is NaN before the launch."""
import numpy as np
import pytest

from clcheck import cl_check, cl_run, download, needs_cl, runtime, upload
from device_agent.ops import Ctx, get_op, normalize_attrs
from device_agent.ops import conv2d as conv_mod
from test_ops_conv_pool import CONV_CASES, _ids, conv_inputs

pytestmark = needs_cl

SIZES = (1, 3, 17, 64, 129)
FORMS = ("nn", "nt", "tn", "tt")
# Small GPU-shaped tiles (4x4 per work-item, 16x16 per group, K-slices of 4): every size above is a
# partial tile somewhere, and 64 is a whole number of tiles (the float4 fast path). The families'
# default tiles are built in test_gemm_tuned_tiles.
GPU_SMALL = {"MWG": 16, "NWG": 16, "KWG": 4, "MDIMC": 4, "NDIMC": 4}
VARIANTS = {"cpu": None, "gpu": GPU_SMALL}


ACT_REF = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "relu6": lambda v: np.clip(v, 0, 6)}


def _mat(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def run_gemm(form, M, N, K, variant, params=None, *, alpha=1.0, beta=0.0, batch=1, pad=(0, 0, 0),
             offs=(0, 0, 0), bias_mode=None, seed=0, reduce_batch=False, work_floats=None, expect_launches=None,
             act=None):
    """One gemm() over padded, offset, batched operands; returns (got, want) as (batch, M, N), or
    (1, M, N) with reduce_batch. pad adds to each leading dimension, offs shifts each matrix's first
    element; work_floats sizes a NaN-filled scratch buffer for split-K / batch reductions."""
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay

    rt = runtime()
    rng = np.random.default_rng(seed)
    ta, tb = form[0] == "t", form[1] == "t"
    ar, ac = (K, M) if ta else (M, K)
    br, bc = (N, K) if tb else (K, N)
    lda, ldb, ldc = ac + pad[0], bc + pad[1], N + pad[2]
    sa, sb, sc = ar * lda + 3, br * ldb + 5, M * ldc + 1        # odd strides: batches unaligned
    A = _mat(rng, (offs[0] + sa * batch,))
    B = _mat(rng, (offs[1] + sb * batch,))
    C0 = _mat(rng, (offs[2] + sc * batch,))
    bias = _mat(rng, (max(M, N) + 2,))
    Cin = C0.copy()
    if beta == 0:
        Cin[:] = np.nan                                        # beta == 0 must never read C
    tA, tB, tC, tbias = (upload(rt, n, v) for n, v in (("A", A), ("B", B), ("C", Cin), ("bias", bias)))
    work = upload(rt, "work", np.full(work_floats + 7, np.nan, np.float32)) if work_floats else None
    b = LaunchBuilder(rt)
    launches = gemm(b, ta, tb, M, N, K, tA, offs[0], lda, tB, offs[1], ldb, tC, offs[2], ldc, alpha, beta,
                    batch, sa, sb, sc, bias=tbias if bias_mode else None, bias_off=1 if bias_mode else 0,
                    bias_mode=bias_mode, reduce_batch=reduce_batch, work=work, work_off=7,
                    work_floats=work_floats or 0, act=act, variant=variant, params=params)
    if expect_launches is not None:
        assert len(launches) == expect_launches, [ln.kernel.function_name for ln in launches]
    replay(rt.queue, b.launches)
    out = download(rt, tC)
    if reduce_batch:
        a3 = [A[offs[0] + z * sa:][:ar * lda].reshape(ar, lda)[:, :ac] for z in range(batch)]
        b3 = [B[offs[1] + z * sb:][:br * ldb].reshape(br, ldb)[:, :bc] for z in range(batch)]
        prod = sum((a.T if ta else a).astype(np.float64) @ (bm.T if tb else bm) for a, bm in zip(a3, b3))
        w = alpha * prod + beta * C0[offs[2]:][:M * ldc].reshape(M, ldc)[:, :N]
        w = w + (bias[1:1 + N][None, :] if bias_mode == "col" else bias[1:1 + M][:, None] if bias_mode else 0)
        return out[offs[2]:][:M * ldc].reshape(M, ldc)[None, :, :N], ACT_REF[act](w)[None]
    got, want = [], []
    for z in range(batch):
        a = A[offs[0] + z * sa:][:ar * lda].reshape(ar, lda)[:, :ac]
        bm = B[offs[1] + z * sb:][:br * ldb].reshape(br, ldb)[:, :bc]
        c0 = C0[offs[2] + z * sc:][:M * ldc].reshape(M, ldc)[:, :N]
        w = alpha * ((a.T if ta else a).astype(np.float64) @ (bm.T if tb else bm)) + beta * c0
        if bias_mode == "col":
            w = w + bias[1:1 + N][None, :]
        elif bias_mode == "row":
            w = w + bias[1:1 + M][:, None]
        got.append(out[offs[2] + z * sc:][:M * ldc].reshape(M, ldc)[:, :N])
        want.append(ACT_REF[act](w))
    # the padding between rows and batches is untouched
    keep = np.ones(out.shape, bool)
    for z in range(batch):
        keep[offs[2] + z * sc:][:M * ldc].reshape(M, ldc)[:, :N] = False
    if beta == 0:
        assert np.isnan(out[keep]).all(), "gemm wrote outside C"
    else:
        np.testing.assert_array_equal(out[keep], C0[keep], err_msg="gemm wrote outside C")
    return np.stack(got), np.stack(want)


def check(got, want, K):
    assert not np.isnan(got).any(), "unwritten output (NaN)"
    # float32 sums of K products: relative to the size of the terms, not of the (cancelling) result
    scale = np.sqrt(max(K, 1)) + np.abs(want).max()
    err = np.abs(got - want).max() / scale
    assert err < 1e-5, f"max error {err:.2e} (relative to {scale:.1f})"
    return err


@pytest.mark.parametrize("M", SIZES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemm_grid(variant, form, M):
    """all N, K in SIZES for this (variant, form, M); beta = 0 with C full of NaN"""
    for N in SIZES:
        for K in SIZES:
            got, want = run_gemm(form, M, N, K, variant, VARIANTS[variant], seed=M * 7 + N * 3 + K)
            check(got, want, K)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemm_batched_offsets_alpha_beta(variant, form):
    """padded leading dimensions, element offsets, odd batch strides, alpha, beta, both bias modes"""
    p = VARIANTS[variant]
    for (M, N, K), pad, offs, alpha, beta, bias in [
        ((17, 64, 3), (1, 2, 3), (1, 2, 3), 0.5, 0.0, None),
        ((64, 17, 129), (0, 4, 0), (4, 0, 8), 1.0, 1.5, "col"),
        ((3, 129, 64), (3, 0, 1), (0, 5, 0), -2.0, 1.0, "row"),
        ((64, 64, 64), (4, 4, 4), (4, 8, 4), 1.0, 0.0, "row"),     # aligned: the float4 paths
    ]:
        got, want = run_gemm(form, M, N, K, variant, p, alpha=alpha, beta=beta, batch=3, pad=pad, offs=offs,
                             bias_mode=bias)
        check(got, want, K)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemm_k_zero_and_empty(variant):
    """K = 0: C = beta*C + bias; M = 0: no launch at all"""
    got, want = run_gemm("nn", 5, 19, 0, variant, VARIANTS[variant], beta=0.5, bias_mode="col")
    check(got, want, 0)
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    b = LaunchBuilder(runtime())
    assert gemm(b, False, False, 0, 4, 4, None, 0, 4, None, 0, 4, None, 0, 4) == [] and not b.launches


SPLIT = dict(GPU_SMALL, min_groups=64)   # ask for 64 work-groups: tiny GEMMs must split K


@pytest.mark.parametrize("form", FORMS)
def test_gemm_split_k(form):
    """GPU family: K split over work-groups into `work`, then the fixed-order reduction (+ epilogue)"""
    for (M, N, K), batch, beta, bias in [((3, 17, 129), 1, 0.0, "col"), ((17, 5, 64), 2, 1.5, "row"),
                                         ((1, 1, 129), 3, 0.0, None)]:
        got, want = run_gemm(form, M, N, K, "gpu", SPLIT, batch=batch, beta=beta, bias_mode=bias,
                             work_floats=64 * batch * M * N, expect_launches=2)
        check(got, want, K)
    # no work buffer: no split, one launch
    got, want = run_gemm(form, 3, 17, 129, "gpu", SPLIT, expect_launches=1)
    check(got, want, 129)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("form", FORMS)
def test_gemm_reduce_batch(variant, form):
    """C = beta*C + alpha * sum_z op(A_z) op(B_z) (+ bias): partials + reduction on GPUs, or one launch
    per batch entry accumulating (CPU family, or a work buffer too small for the partials)"""
    p = SPLIT if variant == "gpu" else None
    # (shape, batch, beta, bias, work floats, launches on the GPU family); the CPU family always
    # launches once per entry
    for (M, N, K), batch, beta, bias, work, gpu_launches in [
        ((17, 5, 64), 3, 0.0, "row", 10_000, 2),           # all partials fit: one GEMM + one reduction
        ((3, 17, 129), 2, 1.5, "col", 10_000, 2),
        ((17, 5, 64), 3, 0.5, "col", 2 * 17 * 5, 4),       # room for 2: entries 0-1 reduced, then entry 2 (split)
        ((17, 5, 64), 3, 0.5, "col", 17 * 5, 3),           # room for 1: launch by launch
    ]:
        got, want = run_gemm(form, M, N, K, variant, p, batch=batch, beta=beta, bias_mode=bias, reduce_batch=True,
                             work_floats=work, expect_launches=gpu_launches if variant == "gpu" else batch)
        check(got, want, K * batch)


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemm_epilogue_activation(variant, act):
    """act after alpha/beta/bias, on every path: one launch, split-K (applied after the reduction
    only) and a chunked batch reduction (applied to the last chunk only)"""
    p = VARIANTS[variant]
    for form in FORMS:
        for (M, N, K), beta, bias in [((17, 64, 129), 0.0, "row"), ((64, 17, 33), 1.5, "col"), ((5, 3, 64), 0.0, None)]:
            got, want = run_gemm(form, M, N, K, variant, p, beta=beta, batch=2, bias_mode=bias, act=act)
            assert (got == 0).any() and (act != "relu6" or (got == 6).any())   # both bounds exercised
            check(got, want, K)
        if variant == "gpu":
            got, want = run_gemm(form, 3, 17, 129, "gpu", SPLIT, batch=2, bias_mode="col", act=act,
                                 work_floats=64 * 2 * 3 * 17, expect_launches=2)
            check(got, want, 129)
        got, want = run_gemm(form, 17, 5, 64, variant, SPLIT if variant == "gpu" else None, batch=3, beta=0.5,
                             bias_mode="col", reduce_batch=True, work_floats=2 * 17 * 5, act=act)
        check(got, want, 64 * 3)


@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_im2col_float4(case):
    """the GPUs' im2col4 (four pq per work-item, float4 stores, zeros in the row padding) on the test device"""
    _, x_shape, attrs, bias = case
    rt = runtime()
    rt.tuning.override["conv2d"] = {"im2col_vec": 4}
    try:
        cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float32))
    finally:
        rt.tuning.override.pop("conv2d")


DEPTHWISE = [c for c in CONV_CASES if c[0].startswith("depthwise")]


@pytest.mark.parametrize("tun", [{"dw_seg": 1}, {"dw_seg": 3}, {"LWG": 64, "dw_run": 1, "dw_rows": False},
                                 {"LWG": 64, "dw_seg": 5, "dw_run": 3, "dw_rows": False},
                                 {"dw_run": 0, "dw_rows": False}, {"dw_run": 2, "dw_rows": False},
                                 {"dw_rows": True}],
                         ids=["seg1", "seg3", "lwg64_run1", "lwg64_seg5_run3", "whole_rows", "run2", "row_kernels"])
@pytest.mark.parametrize("case", DEPTHWISE, ids=_ids(DEPTHWISE))
def test_conv2d_depthwise_dw_segments(case, tun):
    """the depthwise dW reduction cut in many row segments (a remainder, the DW_MAX_SEGS cap at 1), the
    GPU's work-group of 64 (rows x q lanes, local tree sums) and one output per work-item, whole rows
    and runs with a remainder, and the CPU row kernels, on whatever device runs the tests"""
    _, x_shape, attrs, bias = case
    rt = runtime()
    rt.tuning.override["conv2d"] = tun
    try:
        cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float32))
        big = (3, x_shape[1], 23, 21)   # N*P = 69 rows at stride 1: more than DW_MAX_SEGS
        cl_check("Conv2d", attrs, conv_inputs(big, attrs, bias, np.float32))
    finally:
        rt.tuning.override.pop("conv2d")


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_fused_activation(case, act):
    """io.act (the Plan's frozen conv + ReLU/ReLU6 fusion) on every conv path == act(reference)"""
    _, x_shape, attrs, bias = case
    ins = [np.asarray(v, np.float32) * 3 for v in conv_inputs(x_shape, attrs, bias, np.float32)]
    op = get_op("Conv2d")
    (y,), _ = op.forward(normalize_attrs(op, attrs), ins, Ctx())
    (yc,), _, _ = cl_run("Conv2d", attrs, ins, act=act)
    np.testing.assert_allclose(yc, ACT_REF[act](y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_gemm_op_fused_activation(act):
    ins = [np.asarray(v, np.float32) * 3 for v in gemm_inputs(3, 17, 129, True)]
    op = get_op("Gemm")
    (y,), _ = op.forward(normalize_attrs(op, {"out_features": 129}), ins, Ctx())
    (yc,), _, _ = cl_run("Gemm", {"out_features": 129}, ins, act=act)
    assert (yc == 0).any() and (act != "relu6" or (yc == 6).any())
    np.testing.assert_allclose(yc, ACT_REF[act](y), rtol=1e-4, atol=1e-4)


def test_gemm_rejects_short_leading_dimension():
    from device_agent.backends.opencl.gemm import gemm
    from device_agent.backends.opencl.runtime import LaunchBuilder

    with pytest.raises(ValueError, match="leading dimensions"):
        gemm(LaunchBuilder(runtime()), False, True, 4, 5, 6, None, 0, 6, None, 0, 5, None, 0, 5)


def _shipped_tiles():
    import json

    from device_agent.resources import configs_dir

    db = json.loads((configs_dir() / "tuning" / "gemm.json").read_text())
    out = {"default-gpu": ("gpu", db["default"]["gpu"]["gemm"]), "default-cpu": ("cpu", db["default"]["cpu"]["gemm"]),
           "cpu-8x8": ("cpu", {"TM": 8, "TN": 8, "DM": 4, "DN": 2})}
    for vendor, devs in db.get("vendors", {}).items():
        for dev, ops in devs.items():
            if "gemm" in ops:
                p = dict(ops["gemm"])
                out[f"{vendor}-{dev}"] = (p.pop("variant", "gpu"), p)
    for key in list(out):
        fam, p = out[key]
        for alt in ("small", "skinny"):
            if alt in p:
                out[f"{key}-{alt}"] = (fam, dict(p, **p[alt]))
    uniq = {}
    for k, (fam, p) in sorted(out.items()):
        p = {n: v for n, v in p.items() if n not in ("variant", "small", "skinny", "skinny_m", "min_groups", "sizes")}
        uniq.setdefault((fam, tuple(sorted(p.items()))), (k, fam, p))   # one build per distinct tile set
    return {k: (fam, p) for k, fam, p in uniq.values()}


@pytest.mark.slow
@pytest.mark.parametrize("cfg", sorted(_shipped_tiles()))
def test_gemm_tuned_tiles(cfg):
    """the tile sizes shipped in configs/tuning/gemm.json build and compute correctly (incl. edges)"""
    variant, params = _shipped_tiles()[cfg]
    for form in FORMS:
        for M, N, K in [(130, 131, 33), (128, 128, 32)]:
            got, want = run_gemm(form, M, N, K, variant, params, beta=0.5)
            check(got, want, K)


def test_colsum():
    from device_agent.backends.opencl.gemm import colsum
    from device_agent.backends.opencl.runtime import LaunchBuilder, replay

    rt = runtime()
    g = _mat(np.random.default_rng(1), (7, 130))
    tg, ts = upload(rt, "g", g), upload(rt, "s", np.full(130, np.nan, np.float32))
    b = LaunchBuilder(rt)
    colsum(b, tg, ts, 7, 130)
    replay(rt.queue, b.launches)
    np.testing.assert_allclose(download(rt, ts), g.sum(axis=0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Gemm op
GEMM_CASES = [  # id, N, F, M, bias
    ("tiny", 2, 3, 4, True),
    ("one", 1, 1, 1, True),
    ("odd_nobias", 3, 17, 129, False),
    ("wide", 8, 64, 1000, True),
    ("batch1", 1, 129, 17, True),
]


def gemm_inputs(n, f, m, bias, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, f)), rng.standard_normal((m, f)) * 0.5] + ([rng.standard_normal(m)] if bias else [])


@pytest.mark.parametrize("case", GEMM_CASES, ids=_ids(GEMM_CASES))
def test_gemm_op(case):
    _, n, f, m, bias = case
    cl_check("Gemm", {"out_features": m}, gemm_inputs(n, f, m, bias))


# ----------------------------------------------------------------------------- Conv2d op
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_op(case):
    _, x_shape, attrs, bias = case
    cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float32))


def check_needs(op_name, attrs, inputs, needs):
    """Backward with some inputs frozen: their gradients are None and no work is recorded for them."""
    inputs = [np.asarray(x, np.float32) for x in inputs]
    op = get_op(op_name)
    a = normalize_attrs(op, attrs)
    ctx = Ctx()
    ref_ys, saved = op.forward(a, [x.copy() for x in inputs], ctx)
    gys = [np.random.default_rng(1).standard_normal(np.shape(y)).astype(np.float32) for y in ref_ys]
    ys, gxs, _ = cl_run(op_name, attrs, inputs, gys=gys, needs=needs)
    ref_gx = op.backward(a, saved, gys, needs, ctx)
    for i, (need, r, g) in enumerate(zip(needs, ref_gx, gxs)):
        if not need:
            assert g is None
            continue
        assert not np.isnan(g).any(), f"gradient {i} unwritten"
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=f"{op_name} gradient {i}")


FROZEN = [("general", "odd7x5"), ("pointwise", "k1x1"), ("depthwise", "depthwise"), ("groups", "mixed_groups2")]


@pytest.mark.parametrize("needs", [(True, False, True), (False, True, False), (False, False, True)],
                         ids=["frozen_w", "frozen_x_b", "bias_only"])
@pytest.mark.parametrize("path", FROZEN, ids=[p[0] for p in FROZEN])
def test_conv2d_frozen(path, needs):
    _, x_shape, attrs, _ = next(c for c in CONV_CASES if c[0] == path[1])
    check_needs("Conv2d", attrs, conv_inputs(x_shape, attrs, True, np.float32), list(needs))


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True)], ids=["frozen_w_b", "frozen_x"])
def test_gemm_frozen(needs):
    check_needs("Gemm", {"out_features": 17}, gemm_inputs(3, 5, 17, True), list(needs))


def test_conv2d_frozen_records_no_work():
    """a fully frozen conv (no gradient wanted anywhere) records no backward launch"""
    from device_agent.backends.opencl.runtime import LaunchBuilder, NodeIO, TensorRef

    rt = runtime()
    _, x_shape, attrs, _ = next(c for c in CONV_CASES if c[0] == "odd7x5")
    a = normalize_attrs(get_op("Conv2d"), attrs)
    dummy = TensorRef("t", (1,), rt.alloc(4))
    y = TensorRef("y", (2, 4, 5, 3), dummy.buf)
    io = NodeIO("c", "Conv2d", a, [TensorRef("x", x_shape, dummy.buf), TensorRef("w", (4, 3, 3, 3), dummy.buf)],
                [y], gx=[None, None], gy=[y], workspace=TensorRef("ws", (1 << 20,), dummy.buf))
    b = LaunchBuilder(rt)
    get_op("Conv2d").cl.backward(b, io)
    assert b.launches == []


@pytest.mark.parametrize("vec", [1, 4])
def test_conv2d_chunked_workspace(monkeypatch, vec):
    """a workspace for fewer images than the batch: the columns go chunk by chunk, same result (both
    im2col forms: the chunk offset x_off reaches each)"""
    monkeypatch.setitem(runtime().tuning.override, "conv2d", {"im2col_vec": vec})
    _, x_shape, attrs, bias = next(c for c in CONV_CASES if c[0] == "mixed_groups2")
    x_shape = (5,) + x_shape[1:]
    op = get_op("Conv2d")
    a = normalize_attrs(op, attrs)
    y_shape = op.infer(a, [x_shape, op.param_shapes(a, x_shape)["weight"]])[0]
    per_image = x_shape[1] * a["kernel"][0] * a["kernel"][1] * conv_mod._ldp(y_shape[2] * y_shape[3])  # C*R*S*ldp
    monkeypatch.setattr(conv_mod, "_CL_COLS_BUDGET", 2 * per_image)
    assert conv_mod._cols_images(a, x_shape, y_shape) == (2, per_image)              # 2 images of 5
    assert conv_mod.cl_conv_workspace(a, [x_shape], [y_shape]) >= 4 * 2 * per_image
    cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float32))


def test_conv2d_gpu_shaped_kernels(monkeypatch):
    """the GPU-shaped GEMM and the work-group reductions (LWG > 1) under the conv launchers, on this device"""
    rt = runtime()
    tun = rt.tuning.db.setdefault("default", {}).setdefault(rt.tuning.kind, {})
    monkeypatch.setitem(tun, "gemm", dict(GPU_SMALL, variant="gpu"))
    monkeypatch.setitem(tun, "conv2d", {"LWG": 16})
    for cid in ("mixed_groups2", "k1x1", "depthwise_mult2_k5s2", "stride2_pad1"):
        _, x_shape, attrs, bias = next(c for c in CONV_CASES if c[0] == cid)
        cl_check("Conv2d", attrs, conv_inputs(x_shape, attrs, bias, np.float32))
    cl_check("Gemm", {"out_features": 17}, gemm_inputs(3, 33, 17, True))


@pytest.mark.slow
@pytest.mark.parametrize("cid", ["alexnet_conv2_like", "mbv2_dw_like", "mbv2_pw_like"])
def test_conv2d_bigger(cid):
    """model-like shapes (small batch, reduced channels): many tiles, sums over ~1500 terms. Checked
    against the float64 reference (the float32 one carries rounding of the same size as ours), with the
    error relative to each output's largest entry: elementwise rtol cannot hold where long sums cancel."""
    x_shape, attrs = {
        "alexnet_conv2_like": ((2, 24, 27, 27), dict(out_channels=32, kernel=[5, 5], pads=[2, 2, 2, 2])),
        "mbv2_dw_like": ((2, 32, 28, 28), dict(out_channels=32, kernel=[3, 3], stride=[2, 2],
                                               pads=[1, 1, 1, 1], groups=32)),
        "mbv2_pw_like": ((2, 96, 14, 14), dict(out_channels=40, kernel=[1, 1])),
    }[cid]
    inputs = conv_inputs(x_shape, attrs, True, np.float64)
    op = get_op("Conv2d")
    a = normalize_attrs(op, attrs)
    ref_y, saved = op.forward(a, [x.copy() for x in inputs], Ctx())
    gy = np.random.default_rng(1).standard_normal(ref_y[0].shape)
    ref_g = op.backward(a, saved, [gy], [True] * 3, Ctx())
    ys, gxs, _ = cl_run("Conv2d", attrs, [x.astype(np.float32) for x in inputs], gys=[gy.astype(np.float32)],
                        needs=[True] * 3)
    for name, got, want in [("y", ys[0], ref_y[0])] + [(f"gx{i}", g, r) for i, (g, r) in enumerate(zip(gxs, ref_g))]:
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-5, f"{cid} {name}: max error {err:.2e} of the largest entry"
