// BatchNorm over channel axis 1 of x (N,C,L), L = H*W (1 for 2-D (N,C) inputs).
// Per-channel reductions: one work-group (power-of-two size) per channel; its work-items stride
// over the N*L values of the channel, then a tree sum in local memory (deterministic).
// `frozen` kernels read (running_mean, running_var) and form invstd = 1/sqrt(var + eps) inline;
// batch-statistics kernels read (mean, invstd) from the node's state.

REAL bn_wg_sum(REAL v, __local REAL* s) {
    const int l = get_local_id(0);
    s[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = (int)get_local_size(0) >> 1; h > 0; h >>= 1) {
        if (l < h) s[l] += s[l + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const REAL r = s[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

#define BN_AT(n_l) (((n_l) / L * C + c) * L + (n_l) % L)   // element k of channel c: (n, l) = divmod(k, L)

REAL bn_invstd(__global const REAL* s, const int c, const int frozen, const REAL eps) {
    return frozen ? (REAL)1 / sqrt(s[c] + eps) : s[c];
}

// Batch statistics, two passes over the channel (mean, then Σ (x - mean)²: no cancellation):
//   mean[c], invstd[c] = 1/sqrt(var + eps), var biased over cnt = N*L values;
//   running stats updated IN PLACE (torch momentum): r <- om*r + mm*stat, running_var with
//   the unbiased var*unb (om = 1 - momentum, mm = momentum, unb = cnt/(cnt-1), from the host).
__kernel void bn_stats(__global const REAL* x, __global REAL* rmean, __global REAL* rvar,
                       __global REAL* mean, __global REAL* invstd, const int N, const int C, const int L,
                       const REAL eps, const REAL om, const REAL mm, const REAL unb, __local REAL* s) {
    const int c = get_group_id(0);
    const int cnt = N * L, step = get_local_size(0);
    REAL acc = (REAL)0;
    for (int k = get_local_id(0); k < cnt; k += step) acc += x[BN_AT(k)];
    const REAL mu = bn_wg_sum(acc, s) / (REAL)cnt;
    acc = (REAL)0;
    for (int k = get_local_id(0); k < cnt; k += step) {
        const REAL d = x[BN_AT(k)] - mu;
        acc += d * d;
    }
    const REAL var = bn_wg_sum(acc, s) / (REAL)cnt;
    if (get_local_id(0) == 0 && c < C) {
        const REAL is = (REAL)1 / sqrt(var + eps);
        mean[c] = mu;
        invstd[c] = is;
        rmean[c] = om * rmean[c] + mm * mu;
        rvar[c] = om * rvar[c] + mm * (var * unb);
    }
}

// y = (x - mean) * invstd * w + b   (xhat = (x - mean) * invstd; y = xhat * w + b)
__kernel void bn_apply(__global const REAL* x, __global const REAL* w, __global const REAL* b,
                       __global const REAL* mean, __global const REAL* var_or_invstd, __global REAL* y,
                       const int n, const int C, const int L, const int frozen, const REAL eps) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = (i / L) % C;
    const REAL xhat = (x[i] - mean[c]) * bn_invstd(var_or_invstd, c, frozen, eps);
    y[i] = xhat * w[c] + b[c];
}

// Backward sums per channel: sums[c] = Σ g, sums[C + c] = Σ g * xhat; copied to db / dw when
// want_db / want_dw (then those pointers are the bias / weight gradients).
// undoes: y = xhat * w + b   (db = Σ g, dw = Σ g xhat)
__kernel void bn_bwd_sums(__global const REAL* x, __global const REAL* g, __global const REAL* mean,
                          __global const REAL* var_or_invstd, __global REAL* sums, __global REAL* dw,
                          __global REAL* db, const int N, const int C, const int L, const int frozen,
                          const REAL eps, const int want_dw, const int want_db, __local REAL* s) {
    const int c = get_group_id(0);
    const int cnt = N * L, step = get_local_size(0);
    const REAL mu = mean[c], is = bn_invstd(var_or_invstd, c, frozen, eps);
    REAL sg = (REAL)0, sgx = (REAL)0;
    for (int k = get_local_id(0); k < cnt; k += step) {
        const int i = BN_AT(k);
        const REAL gi = g[i];
        sg += gi;
        sgx += gi * ((x[i] - mu) * is);
    }
    sg = bn_wg_sum(sg, s);
    sgx = bn_wg_sum(sgx, s);
    if (get_local_id(0) == 0 && c < C) {
        sums[c] = sg;
        sums[C + c] = sgx;
        if (want_db) db[c] = sg;
        if (want_dw) dw[c] = sgx;
    }
}

// dx. frozen: undoes xhat = (x - running_mean) * invstd with constant statistics:
//   dx = g * w * invstd
// batch: undoes xhat = (x - mean(x)) * invstd(x), mean and biased var over cnt values:
//   dx = invstd/cnt * (cnt*dxhat - Σ dxhat - xhat Σ dxhat xhat),  dxhat = g * w
__kernel void bn_dx(__global const REAL* x, __global const REAL* g, __global const REAL* w,
                    __global const REAL* mean, __global const REAL* var_or_invstd,
                    __global const REAL* sums, __global REAL* dx, const int n, const int C, const int L,
                    const int frozen, const REAL eps, const int cnt) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = (i / L) % C;
    const REAL is = bn_invstd(var_or_invstd, c, frozen, eps);
    const REAL dxhat = g[i] * w[c];
    if (frozen) {
        dx[i] = dxhat * is;
        return;
    }
    const REAL xhat = (x[i] - mean[c]) * is;
    const REAL fc = (REAL)cnt;
    dx[i] = (is / fc) * (fc * dxhat - w[c] * sums[c] - xhat * (w[c] * sums[C + c]));
}
