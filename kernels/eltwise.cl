// Pointwise kernels: activations forward/backward, binary ops with broadcasting, dropout, utilities.
// x, y, g* are flat float arrays of n elements.

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

// ---------------------------------------------------------------------------- copy
__kernel void copy_f(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = x[i];
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

// ---------------------------------------------------------------------------- Dropout
// The mask of device_agent/ops/dropout.py, bit for bit: u[i] = pcg(seed ^ pcg(i)) >> 8 (24 bits),
// keep iff u >= thresh, where thresh (an integer, from the host) is the first 24-bit value whose
// float u * 2^-24 is >= ratio under the reference's comparison.
uint pcg_hash(uint v) {
    const uint state = v * 747796405u + 2891336453u;
    const uint word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// y = x * keep / scale (scale = 1 - ratio); state[0] <- seed, for the backward
__kernel void dropout_fwd(__global const REAL* x, __global REAL* y, __global uint* state, const int n,
                          const uint thresh, const REAL scale, const uint seed) {
    const int i = get_global_id(0);
    if (i == 0) state[0] = seed;
    if (i >= n) return;
    const uint u = pcg_hash(seed ^ pcg_hash((uint)i)) >> 8;
    y[i] = (x[i] * (REAL)(u >= thresh)) / scale;
}

// undoes: y = x * keep / scale, the mask redrawn from the seed the forward stored
__kernel void dropout_bwd(__global const REAL* gy, __global REAL* gx, __global const uint* state,
                          const int n, const uint thresh, const REAL scale) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const uint u = pcg_hash(state[0] ^ pcg_hash((uint)i)) >> 8;
    gx[i] = (gy[i] * (REAL)(u >= thresh)) / scale;
}

// ---------------------------------------------------------------------------- Add Sub Mul Div
// y (dims, rank 4) = a OP b with numpy broadcasting: sa/sb are a's/b's element strides along the
// output axes, 0 where that input is stretched. *_flat: a, b and y all of one shape.
#define BINARY(NAME, EXPR)                                                                          \
__kernel void NAME##_fwd(__global const REAL* a, __global const REAL* b, __global REAL* y,          \
                         const int n, const int4 dims, const int4 sa, const int4 sb) {             \
    const int i = get_global_id(0);                                                                 \
    if (i >= n) return;                                                                             \
    int r = i;                                                                                      \
    const int i3 = r % dims.w; r /= dims.w;                                                         \
    const int i2 = r % dims.z; r /= dims.z;                                                         \
    const int i1 = r % dims.y;                                                                      \
    const int i0 = r / dims.y;                                                                      \
    const REAL u = a[i0 * sa.x + i1 * sa.y + i2 * sa.z + i3 * sa.w];                                \
    const REAL v = b[i0 * sb.x + i1 * sb.y + i2 * sb.z + i3 * sb.w];                                \
    y[i] = EXPR;                                                                                    \
}                                                                                                   \
__kernel void NAME##_flat(__global const REAL* a, __global const REAL* b, __global REAL* y,         \
                          const int n) {                                                            \
    const int i = get_global_id(0);                                                                 \
    if (i >= n) return;                                                                             \
    const REAL u = a[i], v = b[i];                                                                  \
    y[i] = EXPR;                                                                                    \
}
BINARY(add, u + v)
BINARY(sub, u - v)
BINARY(mul, u * v)
BINARY(div, u / v)

// The gradient term of one output element, by mode (g = gy, u = a, v = b at that element):
//   0  g            (Add a, Add b, Sub a)      undoes y = a + b, y = a - b
//   1  -g           (Sub b)                    undoes y = a - b
//   2  g * b        (Mul a)                    undoes y = a * b
//   3  g * a        (Mul b)
//   4  g / b        (Div a)                    undoes y = a / b
//   5  -(g/b)*a/b   (Div b)
REAL bcast_term(const int mode, const REAL g, __global const REAL* a, __global const REAL* b,
                const int ia, const int ib) {
    switch (mode) {
        case 0: return g;
        case 1: return -g;
        case 2: return g * b[ib];
        case 3: return g * a[ia];
        case 4: return g / b[ib];
        default: { const REAL v = b[ib]; return -(g / v) * a[ia] / v; }
    }
}

// gx (xdims) = the gradient term summed over the output axes that broadcasting stretched x along.
// One work-group (power-of-two size) per gx element; its work-items stride over the R = prod(rdims)
// output elements that element feeds, then a tree sum (deterministic).
//   xdims  gx's shape padded to rank 4;  rdims  the stretched extent per axis (1 where kept)
//   so     output strides;  sa, sb  a's and b's strides along the output axes (0 where stretched)
__kernel void bcast_grad(__global const REAL* g, __global const REAL* a, __global const REAL* b,
                         __global REAL* gx, const int nx, const int R, const int mode,
                         const int4 xdims, const int4 rdims, const int4 so, const int4 sa, const int4 sb,
                         __local REAL* scratch) {
    const int j = get_group_id(0);
    if (j >= nx) return;  // uniform per group: the barriers below stay legal
    int q = j;
    const int c3 = q % xdims.w; q /= xdims.w;
    const int c2 = q % xdims.z; q /= xdims.z;
    const int c1 = q % xdims.y;
    const int c0 = q / xdims.y;
    const int bo = c0 * so.x + c1 * so.y + c2 * so.z + c3 * so.w;
    const int ba = c0 * sa.x + c1 * sa.y + c2 * sa.z + c3 * sa.w;
    const int bb = c0 * sb.x + c1 * sb.y + c2 * sb.z + c3 * sb.w;
    REAL acc = (REAL)0;
    for (int r = get_local_id(0); r < R; r += get_local_size(0)) {
        int t = r;
        const int r3 = t % rdims.w; t /= rdims.w;
        const int r2 = t % rdims.z; t /= rdims.z;
        const int r1 = t % rdims.y;
        const int r0 = t / rdims.y;
        const int o = bo + r0 * so.x + r1 * so.y + r2 * so.z + r3 * so.w;
        acc += bcast_term(mode, g[o], a, b, ba + r0 * sa.x + r1 * sa.y + r2 * sa.z + r3 * sa.w,
                          bb + r0 * sb.x + r1 * sb.y + r2 * sb.z + r3 * sb.w);
    }
    const REAL total = wg_sum(acc, scratch);
    if (get_local_id(0) == 0) gx[j] = total;
}

// gx (= output shape, nothing to reduce) = the gradient term per element; the other operand
// may still be broadcast (sa, sb as in binary *_fwd).
__kernel void bcast_grad_elem(__global const REAL* g, __global const REAL* a, __global const REAL* b,
                              __global REAL* gx, const int n, const int mode,
                              const int4 dims, const int4 sa, const int4 sb) {
    const int i = get_global_id(0);
    if (i >= n) return;
    int r = i;
    const int i3 = r % dims.w; r /= dims.w;
    const int i2 = r % dims.z; r /= dims.z;
    const int i1 = r % dims.y;
    const int i0 = r / dims.y;
    gx[i] = bcast_term(mode, g[i], a, b, i0 * sa.x + i1 * sa.y + i2 * sa.z + i3 * sa.w,
                       i0 * sb.x + i1 * sb.y + i2 * sb.z + i3 * sb.w);
}
