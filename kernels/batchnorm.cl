// BatchNorm over channel axis 1 of x (N,C,L), L = H*W (1 for 2-D (N,C) inputs).
// Per-channel reductions: one work-group (power-of-two size) per segment of a channel; its work-items
// stride over the segment, a tree sum in local memory, then one work-item per channel adds the
// segments in a fixed order (deterministic).
// `frozen` kernels read (running_mean, running_var) and form invstd = 1/sqrt(var + eps) inline;
// batch-statistics kernels read (mean, invstd) from the node's state.
// x is read through LOAD_ACT (common.cl): built with -DACT_HALF (ops/batchnorm.py, when the Plan hands a
// saved input kept as halves to the backward or the recompute of dtype "mixed") it is read as halves.

// Walks this work-item's elements k = k0 + lid, + step, ... < k1 of channel c; BN_I is the address of
// element k = (n, l) = divmod(k, L). (n, l) advance by (dn_, dl_) = divmod(step, L) with a carry: no
// division per element.
#define BN_FOR(k0, k1) \
    for (int k = (k0) + (int)get_local_id(0), n_ = k / L, l_ = k % L; k < (k1); \
         k += step, n_ += dn_ + (l_ + dl_ >= L), l_ = l_ + dl_ >= L ? l_ + dl_ - L : l_ + dl_)
#define BN_I ((n_ * C + c) * L + l_)

REAL bn_invstd(__global const REAL* s, const int c, const int frozen, const REAL eps) {
    return frozen ? (REAL)1 / sqrt(s[c] + eps) : s[c];
}

// A ReLU / ReLU6 after the BN fused into it (act 1 / 2; the Plan does this when the BN output feeds only
// the activation): the forward writes act(v), v = xhat * w + b; the backward masks the incoming gradient
// as the activation's own backward does (relu_bwd: act(v) > 0 <=> v > 0; clip_bwd: 0 < act(v) < 6
// <=> 0 < v < 6), with v recomputed from x.
REAL bn_act(REAL v, const int act) {
    if (act == 1) return fmax(v, (REAL)0);
    if (act == 2) {
        if (v < (REAL)0) v = (REAL)0;
        if (v > (REAL)6) v = (REAL)6;
    }
    return v;
}

// the incoming gradient masked where the fused activation cut, v = xhat * w + b its input (recomputed
// from x: the backward never reads y, so y need not be kept for it)
REAL bn_gy(const REAL g, const REAL v, const int act) {
    if (act == 1) return v > (REAL)0 ? g : (REAL)0;
    if (act == 2) return v > (REAL)0 && v < (REAL)6 ? g : (REAL)0;
    return g;
}

// Batch statistics in two launches, so that a few wide channels still fill a GPU: the cnt = N*L
// values of channel c are cut in S segments of `seg` values; one work-group per (segment, channel).
// bn_stats_part: each segment's count, mean and M2 = sum (x - mean_s)^2 (two passes over the
//   segment, the second from cache: no cancellation); part[part_off + (c*S + s)*2 + {0,1}] = mean_s, M2_s.
// bn_stats_finish: one work-item per channel merges its S segments in order (Chan et al.):
//   mean[c], invstd[c] = 1/sqrt(var + eps), var biased over cnt values; running stats updated IN
//   PLACE (torch momentum): r <- om*r + mm*stat, running_var with the unbiased var*unb
//   (om = 1 - momentum, mm = momentum, unb = cnt/(cnt-1), from the host). Deterministic.
// Global sizes: part (S*wg, C) with local (wg, 1); finish (C).
__kernel void bn_stats_part(__global const ACT_T* x, __global REAL* part, const int part_off, const int N,
                            const int C, const int L, const int seg, __local REAL* s) {
    part += part_off;
    const int c = get_global_id(1), sg = get_group_id(0), S = get_num_groups(0);
    const int cnt = N * L, step = get_local_size(0);
    const int k0 = sg * seg, k1 = min(cnt, k0 + seg);
    REAL acc = (REAL)0;
    const int dn_ = step / L, dl_ = step % L;
    BN_FOR(k0, k1) acc += LOAD_ACT(x, BN_I);
    const REAL mu = wg_sum(acc, s) / (REAL)(k1 - k0);
    acc = (REAL)0;
    BN_FOR(k0, k1) {
        const REAL d = LOAD_ACT(x, BN_I) - mu;
        acc += d * d;
    }
    const REAL m2 = wg_sum(acc, s);
    if (get_local_id(0) == 0) {
        part[(c * S + sg) * 2] = mu;
        part[(c * S + sg) * 2 + 1] = m2;
    }
}

// bn_stats_part for CPU devices: segment = one image's plane of channel c (L contiguous values), one
// work-item each with plain loops (no work-group tree, nothing to carry). Global size (N, C); S = N.
__kernel void bn_stats_plane(__global const ACT_T* x, __global REAL* part, const int part_off, const int N,
                             const int C, const int L) {
    const int n = get_global_id(0), c = get_global_id(1);
    if (n >= N || c >= C) return;
    const int i0 = (n * C + c) * L;
    REAL acc = (REAL)0;
    for (int l = 0; l < L; l++) acc += LOAD_ACT(x, i0 + l);
    const REAL mu = acc / (REAL)L;
    acc = (REAL)0;
    for (int l = 0; l < L; l++) {
        const REAL d = LOAD_ACT(x, i0 + l) - mu;
        acc += d * d;
    }
    part[part_off + (c * N + n) * 2] = mu;
    part[part_off + (c * N + n) * 2 + 1] = acc;
}

__kernel void bn_stats_finish(__global const REAL* part, const int part_off, const int S, const int seg,
                              __global REAL* rmean, __global REAL* rvar, __global REAL* mean,
                              __global REAL* invstd, const int N, const int C, const int L,
                              const REAL eps, const REAL om, const REAL mm, const REAL unb) {
    const int c = get_global_id(0);
    if (c >= C) return;
    part += part_off;
    const int cnt = N * L;
    REAL na = (REAL)0, mu = (REAL)0, m2 = (REAL)0;
    for (int sg = 0; sg < S; sg++) {
        const REAL nb = (REAL)(min(cnt, (sg + 1) * seg) - sg * seg);
        const REAL d = part[(c * S + sg) * 2] - mu, n = na + nb;
        mu += d * (nb / n);
        m2 += part[(c * S + sg) * 2 + 1] + d * d * (na * nb / n);
        na = n;
    }
    const REAL var = m2 / (REAL)cnt;
    mean[c] = mu;
    invstd[c] = (REAL)1 / sqrt(var + eps);
    rmean[c] = om * rmean[c] + mm * mu;
    rvar[c] = om * rvar[c] + mm * (var * unb);
}

// y = (x - mean) * invstd * w + b   (xhat = (x - mean) * invstd; y = xhat * w + b), then act(y)
__kernel void bn_apply(__global const ACT_T* x, __global const REAL* w, __global const REAL* b,
                       __global const REAL* mean, __global const REAL* var_or_invstd, __global REAL* y,
                       const int n, const int C, const int L, const int frozen, const REAL eps, const int act) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = (i / L) % C;
    const REAL xhat = (LOAD_ACT(x, i) - mean[c]) * bn_invstd(var_or_invstd, c, frozen, eps);
    y[i] = bn_act(xhat * w[c] + b[c], act);
}

#define BN_VEC4_(t) t##4
#define BN_VEC4(t) BN_VEC4_(t)
#define REAL4 BN_VEC4(REAL)

REAL4 bn_act4(REAL4 v, const int act) {
    if (act == 1) return fmax(v, (REAL4)0);
    if (act == 2) {
        v = select(v, (REAL4)0, v < (REAL4)0);
        v = select(v, (REAL4)6, v > (REAL4)6);
    }
    return v;
}

REAL4 bn_gy4(const REAL4 g, const REAL4 v, const int act) {
    if (act == 1) return select((REAL4)0, g, v > (REAL4)0);
    if (act == 2) return select((REAL4)0, g, v > (REAL4)0 && v < (REAL4)6);
    return g;
}

// bn_apply / bn_dx four values per work-item (L % 4 == 0; global size (L/4, C, N)): the elementwise
// passes are bound by memory, and one float per work-item reached only ~0.7 TB/s on an H100.
__kernel void bn_apply_lcn4(__global const ACT_T* x, __global const REAL* w, __global const REAL* b,
                            __global const REAL* mean, __global const REAL* var_or_invstd, __global REAL* y,
                            const int C, const int L4, const int frozen, const REAL eps, const int act) {
    const int l = get_global_id(0), c = get_global_id(1), i = (get_global_id(2) * C + c) * L4 + l;
    if (l >= L4) return;
    const REAL4 xhat = (LOAD_ACT4(x, i) - mean[c]) * bn_invstd(var_or_invstd, c, frozen, eps);
    vstore4(bn_act4(xhat * w[c] + b[c], act), i, y);
}

__kernel void bn_dx_lcn4(__global const ACT_T* x, __global const REAL* g, __global const REAL* b, const int act,
                         __global const REAL* w, __global const REAL* mean, __global const REAL* var_or_invstd,
                         __global const REAL* sums, __global REAL* dx, const int C, const int L4,
                         const int frozen, const REAL eps, const int cnt) {
    const int l = get_global_id(0), c = get_global_id(1), i = (get_global_id(2) * C + c) * L4 + l;
    if (l >= L4) return;
    const REAL is = bn_invstd(var_or_invstd, c, frozen, eps);
    const REAL4 xhat = (LOAD_ACT4(x, i) - mean[c]) * is;
    const REAL4 dxhat = bn_gy4(vload4(i, g), xhat * w[c] + b[c], act) * w[c];
    if (frozen) {
        vstore4(dxhat * is, i, dx);
        return;
    }
    const REAL fc = (REAL)cnt;
    vstore4((is / fc) * (fc * dxhat - w[c] * sums[c] - xhat * (w[c] * sums[C + c])), i, dx);
}

// bn_apply over a (L, C, N) grid (global size (L, C, N), local (wg, 1, 1)): no division per element;
// the launcher uses it when L is long enough to fill the work-groups' first dimension.
__kernel void bn_apply_lcn(__global const ACT_T* x, __global const REAL* w, __global const REAL* b,
                           __global const REAL* mean, __global const REAL* var_or_invstd, __global REAL* y,
                           const int C, const int L, const int frozen, const REAL eps, const int act) {
    const int l = get_global_id(0), c = get_global_id(1), i = (get_global_id(2) * C + c) * L + l;
    if (l >= L) return;
    const REAL xhat = (LOAD_ACT(x, i) - mean[c]) * bn_invstd(var_or_invstd, c, frozen, eps);
    y[i] = bn_act(xhat * w[c] + b[c], act);
}

// Backward sums per channel, segmented like the statistics: bn_bwd_part writes each segment's
// part[(c*S + s)*2 + {0,1}] = (sum g, sum g * xhat); bn_bwd_finish adds a channel's S segments in
// order: sums[c] = sum g, sums[C + c] = sum g * xhat, copied to db / dw when want_db / want_dw
// (then those pointers are the bias / weight gradients).
// undoes: y = xhat * w + b   (db = sum g, dw = sum g xhat)
// Global sizes: part (S*wg, C) with local (wg, 1); finish (C).
__kernel void bn_bwd_part(__global const ACT_T* x, __global const REAL* g, __global const REAL* w,
                          __global const REAL* b, const int act, __global const REAL* mean,
                          __global const REAL* var_or_invstd, __global REAL* part, const int part_off,
                          const int N, const int C, const int L, const int seg, const int frozen, const REAL eps,
                          __local REAL* s) {
    part += part_off;
    const int c = get_global_id(1), sg = get_group_id(0), S = get_num_groups(0);
    const int cnt = N * L, step = get_local_size(0);
    const int k0 = sg * seg, k1 = min(cnt, k0 + seg);
    const REAL mu = mean[c], is = bn_invstd(var_or_invstd, c, frozen, eps);
    REAL sg_ = (REAL)0, sgx = (REAL)0;
    const int dn_ = step / L, dl_ = step % L;
    BN_FOR(k0, k1) {
        const int i = BN_I;
        const REAL xhat = (LOAD_ACT(x, i) - mu) * is;
        const REAL gi = bn_gy(g[i], xhat * w[c] + b[c], act);
        sg_ += gi;
        sgx += gi * xhat;
    }
    sg_ = wg_sum(sg_, s);
    sgx = wg_sum(sgx, s);
    if (get_local_id(0) == 0) {
        part[(c * S + sg) * 2] = sg_;
        part[(c * S + sg) * 2 + 1] = sgx;
    }
}

// bn_bwd_part for CPU devices, one work-item per (image, channel) plane as bn_stats_plane.
__kernel void bn_bwd_plane(__global const ACT_T* x, __global const REAL* g, __global const REAL* w,
                           __global const REAL* b, const int act, __global const REAL* mean,
                           __global const REAL* var_or_invstd, __global REAL* part, const int part_off,
                           const int N, const int C, const int L, const int frozen, const REAL eps) {
    const int n = get_global_id(0), c = get_global_id(1);
    if (n >= N || c >= C) return;
    const int i0 = (n * C + c) * L;
    const REAL mu = mean[c], is = bn_invstd(var_or_invstd, c, frozen, eps);
    REAL sg_ = (REAL)0, sgx = (REAL)0;
    int i = i0;
#define BN_BWD_AT(xv, gv) { const REAL xhat = ((xv) - mu) * is; const REAL gi = bn_gy((gv), xhat * w[c] + b[c], act); \
                            sg_ += gi; sgx += gi * xhat; }
#ifdef ACT_HALF
    // halves four at a time (PoCL converts one vload_half ~15x slower per value than vload_half4); the
    // same arithmetic per value and the same order of sums as the loop below
    if (L % 4 == 0) {
        for (; i < i0 + L; i += 4) {
            const REAL4 x4 = LOAD_ACT4(x, i >> 2);
            BN_BWD_AT(x4.s0, g[i]) BN_BWD_AT(x4.s1, g[i + 1]) BN_BWD_AT(x4.s2, g[i + 2]) BN_BWD_AT(x4.s3, g[i + 3])
        }
    }
#endif
    for (; i < i0 + L; i++) BN_BWD_AT(LOAD_ACT(x, i), g[i])
#undef BN_BWD_AT
    part[part_off + (c * N + n) * 2] = sg_;
    part[part_off + (c * N + n) * 2 + 1] = sgx;
}

__kernel void bn_bwd_finish(__global const REAL* part, const int part_off, const int S, __global REAL* sums,
                            __global REAL* dw, __global REAL* db, const int C, const int want_dw,
                            const int want_db) {
    const int c = get_global_id(0);
    if (c >= C) return;
    part += part_off;
    REAL a = (REAL)0, b = (REAL)0;
    for (int sg = 0; sg < S; sg++) {
        a += part[(c * S + sg) * 2];
        b += part[(c * S + sg) * 2 + 1];
    }
    sums[c] = a;
    sums[C + c] = b;
    if (want_db) db[c] = a;
    if (want_dw) dw[c] = b;
}

// dx. frozen: undoes xhat = (x - running_mean) * invstd with constant statistics:
//   dx = g * w * invstd
// batch: undoes xhat = (x - mean(x)) * invstd(x), mean and biased var over cnt values:
//   dx = invstd/cnt * (cnt*dxhat - Σ dxhat - xhat Σ dxhat xhat),  dxhat = g * w
// (frozen statistics: dx = dxhat * invstd). dx[i] of channel c, for bn_dx and bn_dx_lcn.
REAL bn_dx_at(const int i, const int c, __global const ACT_T* x, __global const REAL* g, __global const REAL* b,
              const int act, __global const REAL* w, __global const REAL* mean,
              __global const REAL* var_or_invstd, __global const REAL* sums, const int C, const int frozen,
              const REAL eps, const int cnt) {
    const REAL is = bn_invstd(var_or_invstd, c, frozen, eps);
    const REAL xhat = (LOAD_ACT(x, i) - mean[c]) * is;
    const REAL dxhat = bn_gy(g[i], xhat * w[c] + b[c], act) * w[c];
    if (frozen) return dxhat * is;
    const REAL fc = (REAL)cnt;
    return (is / fc) * (fc * dxhat - w[c] * sums[c] - xhat * (w[c] * sums[C + c]));
}

__kernel void bn_dx(__global const ACT_T* x, __global const REAL* g, __global const REAL* b, const int act,
                    __global const REAL* w, __global const REAL* mean, __global const REAL* var_or_invstd,
                    __global const REAL* sums, __global REAL* dx, const int n, const int C, const int L,
                    const int frozen, const REAL eps, const int cnt) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = (i / L) % C;
    dx[i] = bn_dx_at(i, c, x, g, b, act, w, mean, var_or_invstd, sums, C, frozen, eps, cnt);
}

// bn_dx over a (L, C, N) grid, as bn_apply_lcn.
__kernel void bn_dx_lcn(__global const ACT_T* x, __global const REAL* g, __global const REAL* b, const int act,
                        __global const REAL* w, __global const REAL* mean, __global const REAL* var_or_invstd,
                        __global const REAL* sums, __global REAL* dx, const int C, const int L,
                        const int frozen, const REAL eps, const int cnt) {
    const int l = get_global_id(0), c = get_global_id(1), i = (get_global_id(2) * C + c) * L + l;
    if (l >= L) return;
    dx[i] = bn_dx_at(i, c, x, g, b, act, w, mean, var_or_invstd, sums, C, frozen, eps, cnt);
}

// ---- CPU devices: one work-item per channel for a whole training-mode pass family ----
// The channel's N planes of L values are walked plane by plane: x comes from memory once, the later
// passes over it from cache. Sums in BN_LANES vector lanes plus a scalar tail, the lanes added in a
// fixed tree at the end (deterministic). NOTE: no builtins (vloadN, fmax, select) in the loops: this
// PoCL (3.0-rc2, LLVM 14) links them after optimisation, so each is a call per element; LLVM merges
// the spelled-out loads and stores into vector ones. Global size (C), one work-item per group.
#ifdef ACT_HALF
#define BN_LD8(p, i) vload_half8(0, (p) + (i))      // one call per eight values
#else
#define BN_LD8(p, i) ((float8)((p)[(i)], (p)[(i) + 1], (p)[(i) + 2], (p)[(i) + 3], (p)[(i) + 4], (p)[(i) + 5], \
                               (p)[(i) + 6], (p)[(i) + 7]))
#endif
#define BN_G8(p, i) ((float8)((p)[(i)], (p)[(i) + 1], (p)[(i) + 2], (p)[(i) + 3], (p)[(i) + 4], (p)[(i) + 5], \
                              (p)[(i) + 6], (p)[(i) + 7]))

REAL bn_hsum8(const float8 v) { return ((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7)); }

// act(v) and the masked gradient, elementwise on eight lanes, as bn_act / bn_gy
// bn_act on eight lanes with the same NaN rule (ReLU as fmax(v, 0): NaN -> 0; ReLU6's clamps keep NaN)
float8 bn_act8(float8 v, const int act) {
    if (act == 1) return v > (float8)0.0f ? v : (float8)0.0f;
    if (act == 2) {
        v = v < (float8)0.0f ? (float8)0.0f : v;
        v = v > (float8)6.0f ? (float8)6.0f : v;
    }
    return v;
}
float8 bn_gy8(const float8 g, const float8 v, const int act) {
    if (act == 1) return v > (float8)0.0f ? g : (float8)0.0f;
    if (act == 2) return v > (float8)0.0f && v < (float8)6.0f ? g : (float8)0.0f;
    return g;
}

// Batch statistics, running-statistics update and y = act(xhat * w + b) of channel c in one launch:
// mean, then M2 = sum (x - mean)^2 (two passes: no cancellation), var biased over cnt = N*L values;
// mean[c], invstd[c] and the running statistics as bn_stats_finish; then y as bn_apply.
__kernel void bn_fwd_channel(__global const ACT_T* x, __global const REAL* w, __global const REAL* b,
                             __global REAL* rmean, __global REAL* rvar, __global REAL* mean,
                             __global REAL* invstd, __global REAL* y, const int N, const int C, const int L,
                             const REAL eps, const REAL om, const REAL mm, const REAL unb, const int act) {
    const int c = get_global_id(0);
    if (c >= C) return;
    const int cnt = N * L, l8 = L / 8 * 8;
    float8 v8 = (float8)0.0f;
    REAL v1 = (REAL)0;
    for (int n = 0; n < N; n++) {
        __global const ACT_T* xp = x + (n * C + c) * L;
        for (int l = 0; l < l8; l += 8) v8 += BN_LD8(xp, l);
        for (int l = l8; l < L; l++) v1 += LOAD_ACT(xp, l);
    }
    const REAL mu = (bn_hsum8(v8) + v1) / (REAL)cnt;
    v8 = (float8)0.0f;
    v1 = (REAL)0;
    for (int n = 0; n < N; n++) {
        __global const ACT_T* xp = x + (n * C + c) * L;
        for (int l = 0; l < l8; l += 8) {
            const float8 d = BN_LD8(xp, l) - mu;
            v8 += d * d;
        }
        for (int l = l8; l < L; l++) {
            const REAL d = LOAD_ACT(xp, l) - mu;
            v1 += d * d;
        }
    }
    const REAL var = (bn_hsum8(v8) + v1) / (REAL)cnt, is = (REAL)1 / sqrt(var + eps);
    mean[c] = mu;
    invstd[c] = is;
    rmean[c] = om * rmean[c] + mm * mu;
    rvar[c] = om * rvar[c] + mm * (var * unb);
    const REAL wc = w[c], bc = b[c];
    for (int n = 0; n < N; n++) {
        __global const ACT_T* xp = x + (n * C + c) * L;
        __global REAL* yp = y + (n * C + c) * L;
        for (int l = 0; l < l8; l += 8) {
            const float8 v = bn_act8((BN_LD8(xp, l) - mu) * is * wc + bc, act);
            yp[l] = v.s0; yp[l + 1] = v.s1; yp[l + 2] = v.s2; yp[l + 3] = v.s3;
            yp[l + 4] = v.s4; yp[l + 5] = v.s5; yp[l + 6] = v.s6; yp[l + 7] = v.s7;
        }
        for (int l = l8; l < L; l++) yp[l] = bn_act((LOAD_ACT(xp, l) - mu) * is * wc + bc, act);
    }
}

// Backward of batch-statistics BN for channel c in one launch: sums[c] = sum g, sums[C + c] = sum g*xhat
// (g masked by the fused act), copied to db / dw when want_db / want_dw, then (want_dx) dx as bn_dx.
// undoes: y = xhat * w + b; xhat = (x - mean(x)) * invstd(x)
__kernel void bn_bwd_channel(__global const ACT_T* x, __global const REAL* g, __global const REAL* w,
                             __global const REAL* b, const int act, __global const REAL* mean,
                             __global const REAL* invstd, __global REAL* sums, __global REAL* dw,
                             __global REAL* db, __global REAL* dx, const int N, const int C, const int L,
                             const int want_dw, const int want_db, const int want_dx) {
    const int c = get_global_id(0);
    if (c >= C) return;
    const int cnt = N * L, l8 = L / 8 * 8;
    const REAL mu = mean[c], is = invstd[c], wc = w[c], bc = b[c];
    float8 g8 = (float8)0.0f, gx8 = (float8)0.0f;
    REAL g1 = (REAL)0, gx1 = (REAL)0;
    for (int n = 0; n < N; n++) {
        __global const ACT_T* xp = x + (n * C + c) * L;
        __global const REAL* gp = g + (n * C + c) * L;
        for (int l = 0; l < l8; l += 8) {
            const float8 xh = (BN_LD8(xp, l) - mu) * is, gi = bn_gy8(BN_G8(gp, l), xh * wc + bc, act);
            g8 += gi;
            gx8 += gi * xh;
        }
        for (int l = l8; l < L; l++) {
            const REAL xh = (LOAD_ACT(xp, l) - mu) * is, gi = bn_gy(gp[l], xh * wc + bc, act);
            g1 += gi;
            gx1 += gi * xh;
        }
    }
    const REAL sg = bn_hsum8(g8) + g1, sgx = bn_hsum8(gx8) + gx1;
    sums[c] = sg;
    sums[C + c] = sgx;
    if (want_db) db[c] = sg;
    if (want_dw) dw[c] = sgx;
    if (!want_dx) return;
    const REAL fc = (REAL)cnt, k0 = is / fc, k1 = wc * sg, k2 = wc * sgx;
    for (int n = 0; n < N; n++) {
        __global const ACT_T* xp = x + (n * C + c) * L;
        __global const REAL* gp = g + (n * C + c) * L;
        __global REAL* dp = dx + (n * C + c) * L;
        for (int l = 0; l < l8; l += 8) {
            const float8 xh = (BN_LD8(xp, l) - mu) * is;
            const float8 dxh = bn_gy8(BN_G8(gp, l), xh * wc + bc, act) * wc;
            const float8 v = k0 * (fc * dxh - k1 - xh * k2);
            dp[l] = v.s0; dp[l + 1] = v.s1; dp[l + 2] = v.s2; dp[l + 3] = v.s3;
            dp[l + 4] = v.s4; dp[l + 5] = v.s5; dp[l + 6] = v.s6; dp[l + 7] = v.s7;
        }
        for (int l = l8; l < L; l++) {
            const REAL xh = (LOAD_ACT(xp, l) - mu) * is;
            dp[l] = k0 * (fc * (bn_gy(gp[l], xh * wc + bc, act) * wc) - k1 - xh * k2);
        }
    }
}

// bn_apply for CPU devices: one work-item per (image, channel) plane of L values, eight at a time with
// no builtins in the loop (as bn_fwd_channel's apply). Global size (N, C).
__kernel void bn_apply_plane(__global const ACT_T* x, __global const REAL* w, __global const REAL* b,
                             __global const REAL* mean, __global const REAL* var_or_invstd, __global REAL* y,
                             const int N, const int C, const int L, const int frozen, const REAL eps,
                             const int act) {
    const int n = get_global_id(0), c = get_global_id(1);
    if (n >= N || c >= C) return;
    const REAL mu = mean[c], is = bn_invstd(var_or_invstd, c, frozen, eps), wc = w[c], bc = b[c];
    __global const ACT_T* xp = x + (n * C + c) * L;
    __global REAL* yp = y + (n * C + c) * L;
    const int l8 = L / 8 * 8;
    for (int l = 0; l < l8; l += 8) {
        const float8 v = bn_act8((BN_LD8(xp, l) - mu) * is * wc + bc, act);
        yp[l] = v.s0; yp[l + 1] = v.s1; yp[l + 2] = v.s2; yp[l + 3] = v.s3;
        yp[l + 4] = v.s4; yp[l + 5] = v.s5; yp[l + 6] = v.s6; yp[l + 7] = v.s7;
    }
    for (int l = l8; l < L; l++) yp[l] = bn_act((LOAD_ACT(xp, l) - mu) * is * wc + bc, act);
}
