// Binary elementwise ops with numpy broadcasting and their gradients (device_agent/ops/elementwise.py):
// Add, Sub, Mul, Div.

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
