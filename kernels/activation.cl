// Activations forward and backward (device_agent/ops/activation.py): Relu, LeakyRelu, PRelu, Clip
// (ReLU6), HardSigmoid, HardSwish, Sigmoid. x, y, g* are flat float arrays of n elements.
// Identity has no kernel: an alias (ops/_cl.py), or plan.cl's copy.

// ---------------------------------------------------------------------------- Relu
// y = max(x, 0)
__kernel void relu_fwd(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = fmax(x[i], (REAL)0);
}

// undoes: y = max(x, 0); reads y (saved) instead of x
__kernel void relu_bwd(__global const REAL* y, __global const REAL* gy, __global REAL* gx, const int n) {
    const int i = get_global_id(0);
    if (i < n) gx[i] = y[i] > (REAL)0 ? gy[i] : (REAL)0;
}

// ---------------------------------------------------------------------------- LeakyRelu
// y = x > 0 ? x : alpha * x
__kernel void leaky_fwd(__global const REAL* x, __global REAL* y, const int n, const REAL alpha) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = x[i];
    y[i] = v > (REAL)0 ? v : alpha * v;
}

// undoes: y = x > 0 ? x : alpha * x: gy where x > 0, alpha * gy elsewhere (x == 0 too, as torch).
// s is x, or y when alpha >= 0 (then y > 0 <=> x > 0, NaN stays NaN): the launcher picks
__kernel void leaky_bwd(__global const REAL* s, __global const REAL* gy, __global REAL* gx, const int n,
                        const REAL alpha) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL g = gy[i];
    gx[i] = s[i] > (REAL)0 ? g : alpha * g;
}

// ---------------------------------------------------------------------------- PRelu
// x (N,C,inner) flat, slope (C,), or (1,) when shared: y = x > 0 ? x : slope[c] * x.
// 3-D range (j < inner, c, n): no division per element.
__kernel void prelu_fwd(__global const REAL* x, __global const REAL* slope, __global REAL* y, const int C,
                        const int inner, const int shared) {
    const int j = get_global_id(0), c = get_global_id(1);
    if (j >= inner) return;
    const int i = ((int)get_global_id(2) * C + c) * inner + j;
    const REAL v = x[i];
    y[i] = v > (REAL)0 ? v : slope[shared ? 0 : c] * v;
}

// undoes: y = x > 0 ? x : slope * x (dx): gy where x > 0, slope[c] * gy elsewhere (x == 0 too, as torch)
__kernel void prelu_bwd(__global const REAL* x, __global const REAL* slope, __global const REAL* gy,
                        __global REAL* gx, const int C, const int inner, const int shared) {
    const int j = get_global_id(0), c = get_global_id(1);
    if (j >= inner) return;
    const int i = ((int)get_global_id(2) * C + c) * inner + j;
    const REAL g = gy[i];
    gx[i] = x[i] > (REAL)0 ? g : slope[shared ? 0 : c] * g;
}

// undoes: y = x > 0 ? x : slope * x, both gradients in one pass over x and gy:
//   dslope[c] = Σ_{n,j} [x <= 0] gy x   (NaN x counts: it is not > 0, as in the reference)
//   dx (write_dx) as prelu_bwd
// Work-group (c, sg) walks segment sg (terms k in [sg*SEG, (sg+1)*SEG) of channel c's N*inner,
// k = n*inner + j) and writes its partial sum to part[c*S + sg]. (n, j) advance without a division
// per term: one only when j passes the end of a row.
__kernel void prelu_bwd_dslope(__global const REAL* x, __global const REAL* slope, __global const REAL* gy,
                               __global REAL* gx, __global REAL* part, const int N, const int C, const int inner,
                               const int S, const int SEG, const int shared, const int write_dx,
                               __local REAL* s) {
    const int grp = get_group_id(0), c = grp / S, sg = grp % S, step = get_local_size(0);
    const int k1 = min(N * inner, sg * SEG + SEG);
    const REAL a = slope[shared ? 0 : c];
    REAL acc = (REAL)0;
    int k = sg * SEG + (int)get_local_id(0);
    int n = k / inner, j = k % inner;
    for (; k < k1; k += step) {
        const int e = (n * C + c) * inner + j;
        const REAL v = x[e], g = gy[e];
        const int pos = v > (REAL)0;
        if (!pos) acc += g * v;
        if (write_dx) gx[e] = pos ? g : a * g;
        j += step;
        if (j >= inner) {
            n += j / inner;
            j %= inner;
        }
    }
    const REAL total = wg_sum(acc, s);
    if (get_local_id(0) == 0) part[grp] = total;
}

// out[o] = Σ_{k < per} part[o*per + k]: one work-group per output (tree sum, deterministic)
__kernel void sum_rows(__global const REAL* part, __global REAL* out, const int per, __local REAL* s) {
    const int o = get_group_id(0);
    REAL acc = (REAL)0;
    for (int k = get_local_id(0); k < per; k += get_local_size(0)) acc += part[o * per + k];
    const REAL total = wg_sum(acc, s);
    if (get_local_id(0) == 0) out[o] = total;
}

// ---------------------------------------------------------------------------- Clip
// y = min(max(x, lo), hi); a bound with has_* == 0 is absent. NaN passes through (numpy).
__kernel void clip_fwd(__global const REAL* x, __global REAL* y, const int n,
                       const REAL lo, const REAL hi, const int has_lo, const int has_hi) {
    const int i = get_global_id(0);
    if (i >= n) return;
    REAL v = x[i];
    if (has_lo && v < lo) v = lo;
    if (has_hi && v > hi) v = hi;
    y[i] = v;
}

// undoes: y = min(max(x, lo), hi); the gradient passes strictly inside (lo, hi) (relu6 convention).
// `x` may be the input or the output y: lo < x < hi <=> lo < y < hi (the launcher passes y)
__kernel void clip_bwd(__global const REAL* x, __global const REAL* gy, __global REAL* gx, const int n,
                       const REAL lo, const REAL hi, const int has_lo, const int has_hi) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = x[i];
    const int pass = (!has_lo || v > lo) && (!has_hi || v < hi);
    gx[i] = pass ? gy[i] : (REAL)0;
}

// ---------------------------------------------------------------------------- HardSigmoid
// y = clip(alpha*x + beta, 0, 1)
__kernel void hardsigmoid_fwd(__global const REAL* x, __global REAL* y, const int n,
                              const REAL alpha, const REAL beta) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL t = alpha * x[i] + beta;
    y[i] = t < (REAL)0 ? (REAL)0 : (t > (REAL)1 ? (REAL)1 : t);
}

// undoes: y = clip(t, 0, 1), t = alpha*x + beta: alpha strictly inside 0 < t < 1, else 0
__kernel void hardsigmoid_bwd(__global const REAL* x, __global const REAL* gy, __global REAL* gx,
                              const int n, const REAL alpha, const REAL beta) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL t = alpha * x[i] + beta;
    gx[i] = (t > (REAL)0 && t < (REAL)1) ? gy[i] * alpha : (REAL)0;
}

// ---------------------------------------------------------------------------- HardSwish
// y = x * relu6(x + 3) / 6
__kernel void hardswish_fwd(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = x[i];
    y[i] = v * clamp(v + (REAL)3, (REAL)0, (REAL)6) / (REAL)6;
}

// undoes: y = x * relu6(x + 3) / 6: dy/dx = 0 (x <= -3), x/3 + 1/2 (-3 < x < 3), 1 (x >= 3)
__kernel void hardswish_bwd(__global const REAL* x, __global const REAL* gy, __global REAL* gx, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = x[i];
    const REAL d = v <= (REAL)-3 ? (REAL)0 : (v < (REAL)3 ? v / (REAL)3 + (REAL)0.5 : (REAL)1);
    gx[i] = gy[i] * d;
}

// ---------------------------------------------------------------------------- Sigmoid
// y = 1 / (1 + exp(-x)), stable: z = exp(-|x|) never overflows
__kernel void sigmoid_fwd(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = x[i];
    const REAL z = exp(-fabs(v));
    y[i] = v >= (REAL)0 ? (REAL)1 / ((REAL)1 + z) : z / ((REAL)1 + z);
}

// undoes: y = sigmoid(x): dy/dx = y (1 - y); reads y (saved)
__kernel void sigmoid_bwd(__global const REAL* y, __global const REAL* gy, __global REAL* gx, const int n) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const REAL v = y[i];
    gx[i] = gy[i] * v * ((REAL)1 - v);
}
