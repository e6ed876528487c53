// Softmax along an axis and the fused softmax + cross-entropy with label smoothing.
// Rows: x viewed as (outer, K, inner); row r = (o, j) holds x[(o*K + k)*inner + j], k < K.
// One work-group (power-of-two size) per row; tree reductions in local memory (deterministic).

#ifndef LABEL_T
#define LABEL_T int  // labels' element type: int32 (the Plan's buffers); the op tests also use long
#endif

REAL sm_wg_max(REAL v, __local REAL* s) {
    const int l = get_local_id(0);
    s[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = (int)get_local_size(0) >> 1; h > 0; h >>= 1) {
        if (l < h) s[l] = fmax(s[l], s[l + h]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const REAL r = s[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

// y = exp(x - max) / Σ exp(x - max)   (stable: every exponent <= 0)
__kernel void softmax_fwd(__global const REAL* x, __global REAL* y, const int rows, const int K,
                          const int inner, __local REAL* s) {
    const int r = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    const int base = (r / inner) * K * inner + r % inner;
    REAL m = -INFINITY;
    for (int k = l; k < K; k += step) m = fmax(m, x[base + k * inner]);
    m = sm_wg_max(m, s);
    REAL acc = (REAL)0;
    for (int k = l; k < K; k += step) acc += exp(x[base + k * inner] - m);
    const REAL sum = wg_sum(acc, s);
    if (r >= rows) return;
    for (int k = l; k < K; k += step) y[base + k * inner] = exp(x[base + k * inner] - m) / sum;
}

// undoes: y = softmax(x):  dx = y * (g - Σ_k g y)
__kernel void softmax_bwd(__global const REAL* y, __global const REAL* g, __global REAL* dx, const int rows,
                          const int K, const int inner, __local REAL* s) {
    const int r = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    const int base = (r / inner) * K * inner + r % inner;
    REAL acc = (REAL)0;
    for (int k = l; k < K; k += step) acc += g[base + k * inner] * y[base + k * inner];
    const REAL dot = wg_sum(acc, s);
    if (r >= rows) return;
    for (int k = l; k < K; k += step) {
        const int e = base + k * inner;
        dx[e] = y[e] * (g[e] - dot);
    }
}

// y = z - log Σ exp(z), z = x - max   (stable: every exponent <= 0, the sum >= 1)
__kernel void logsoftmax_fwd(__global const REAL* x, __global REAL* y, const int rows, const int K,
                             const int inner, __local REAL* s) {
    const int r = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    const int base = (r / inner) * K * inner + r % inner;
    REAL m = -INFINITY;
    for (int k = l; k < K; k += step) m = fmax(m, x[base + k * inner]);
    m = sm_wg_max(m, s);
    REAL acc = (REAL)0;
    for (int k = l; k < K; k += step) acc += exp(x[base + k * inner] - m);
    const REAL logs = log(wg_sum(acc, s));
    if (r >= rows) return;
    for (int k = l; k < K; k += step) y[base + k * inner] = (x[base + k * inner] - m) - logs;
}

// undoes: y = log softmax(x):  dx = g - exp(y) Σ_k g
__kernel void logsoftmax_bwd(__global const REAL* y, __global const REAL* g, __global REAL* dx, const int rows,
                             const int K, const int inner, __local REAL* s) {
    const int r = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    const int base = (r / inner) * K * inner + r % inner;
    REAL acc = (REAL)0;
    for (int k = l; k < K; k += step) acc += g[base + k * inner];
    const REAL sum = wg_sum(acc, s);
    if (r >= rows) return;
    for (int k = l; k < K; k += step) {
        const int e = base + k * inner;
        dx[e] = g[e] - exp(y[e]) * sum;
    }
}

// ---------------------------------------------------------------------------- cross-entropy
// logits (N,K), labels (N,): q[n,k] = epsk + (k == label ? onem : 0)  (epsk = ε/K, onem = 1-ε),
// loss = -Σ_n Σ_k q log softmax(logits) / N  (torch cross_entropy with label_smoothing=ε).

// (v, i) beats (w, j) as numpy argmax sees it: larger value, NaN above all, ties to the lower index
int sce_beats(const REAL v, const int i, const REAL w, const int j) {
    if (isnan(v) || isnan(w)) return isnan(v) && (!isnan(w) || i < j);
    return v > w || (v == w && i < j);
}

// One work-group per row n. rows[n] = (max, Σ exp(z), Σ_k q log p, argmax == label), z = x - max,
// log p = z - log Σ exp(z). write_dx: dx[n,k] = (p - q) * invn as well (the loss gradient, g = 1).
__kernel void sce_rows(__global const REAL* logits, __global const LABEL_T* labels, __global REAL* rows,
                       __global REAL* dx, const int N, const int K, const REAL epsk, const REAL onem,
                       const REAL invn, const int write_dx, __local REAL* s, __local int* si) {
    const int n = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    __global const REAL* x = logits + n * K;
    REAL best = -INFINITY;
    int arg = K;                                   // no element yet: loses every comparison
    for (int k = l; k < K; k += step) {
        const REAL v = x[k];
        if (arg == K || sce_beats(v, k, best, arg)) { best = v; arg = k; }
    }
    s[l] = best;
    si[l] = arg;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = step >> 1; h > 0; h >>= 1) {
        if (l < h && si[l + h] < K && (si[l] == K || sce_beats(s[l + h], si[l + h], s[l], si[l]))) {
            s[l] = s[l + h];
            si[l] = si[l + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const REAL m = s[0];
    const int amax = si[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    const int label = (int)labels[n];
    REAL acc = (REAL)0;
    for (int k = l; k < K; k += step) acc += exp(x[k] - m);
    const REAL sum = wg_sum(acc, s);
    const REAL logs = log(sum);
    acc = (REAL)0;
    for (int k = l; k < K; k += step) {
        const REAL q = k == label ? epsk + onem : epsk;
        acc += q * ((x[k] - m) - logs);
    }
    const REAL ql = wg_sum(acc, s);
    if (l == 0) {
        rows[4 * n + 0] = m;
        rows[4 * n + 1] = sum;
        rows[4 * n + 2] = ql;
        rows[4 * n + 3] = amax == label ? (REAL)1 : (REAL)0;
    }
    if (write_dx) {
        for (int k = l; k < K; k += step) {
            const REAL q = k == label ? epsk + onem : epsk;
            dx[n * K + k] = (exp(x[k] - m) / sum - q) * invn;
        }
    }
}

// One work-group: loss[0] = -Σ_n rows[n].ql / N; want_correct: correct[0] = Σ_n rows[n].hit.
__kernel void sce_finish(__global const REAL* rows, __global REAL* loss, __global REAL* correct, const int N,
                         const int want_correct, __local REAL* s) {
    const int l = get_local_id(0), step = get_local_size(0);
    REAL ql = (REAL)0, hit = (REAL)0;
    for (int n = l; n < N; n += step) {
        ql += rows[4 * n + 2];
        hit += rows[4 * n + 3];
    }
    ql = wg_sum(ql, s);
    hit = wg_sum(hit, s);
    if (l == 0) {
        loss[0] = -ql / (REAL)N;
        if (want_correct) correct[0] = hit;
    }
}

// undoes: loss = mean_n -Σ_k q log softmax(logits):  dlogits = (softmax - q) * (g / N)
__kernel void sce_bwd(__global const REAL* logits, __global const LABEL_T* labels, __global const REAL* rows,
                      __global const REAL* gy, __global REAL* dx, const int N, const int K, const REAL epsk,
                      const REAL onem) {
    const int i = get_global_id(0);
    if (i >= N * K) return;
    const int n = i / K, k = i % K;
    const REAL q = k == (int)labels[n] ? epsk + onem : epsk;
    dx[i] = (exp(logits[i] - rows[4 * n]) / rows[4 * n + 1] - q) * (gy[0] / (REAL)N);
}
