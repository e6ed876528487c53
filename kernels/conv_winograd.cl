// Winograd F(2x2, 3x3) convolution transforms (launcher: device_agent/ops/conv_winograd.py).
//
// A 3x3, stride-1 convolution of a 4x4 input tile d gives a 2x2 output tile
//     y = A^T [ sum_c (G g_c G^T) . (B^T d_c B) ] A           (. elementwise over the 4x4 positions xi)
// with the matrices of Lavin & Gray (2016):
//     B^T = | 1  0 -1  0 |    G = | 1    0    0   |    A^T = | 1  1  1  0 |
//           | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//           | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//           | 0  1  0 -1 |        | 0    0    1   |
// The sum over c is 16 GEMMs, one per position xi: M[xi] (K, T) = U[xi] (K, C) @ V[xi] (C, T), run by the
// GEMM launcher; these kernels only transform. Layouts (floats):
//     U  [16][O][I]   the filters G g G^T (O outputs, I inputs of the GEMM)
//     V  [16][C][T]   the input tiles B^T d B, T = tiles of the chunk, t = (n * TP + tp) * TQ + tq
//     M  [16][K][T]   the GEMM products; the output transform reads them
// dX of a 3x3 stride-1 convolution is the same correlation of dY with the flipped, transposed filters
// (wino_filter's flip) and pads 2 - pad: the launcher reuses these kernels for it. dW is the adjoint of the
// forward in g: dW = G^T [ sum_t (B^T d_t B) . (A dY_t A^T) ] G, i.e. 16 GEMMs over the tiles,
//     W'[xi] (K, C) = Y'[xi] (K, T) @ V'[xi] (T, C)      (wino_grad_tile, wino_input with tr = 1)
// and wino_filter_grad's G^T W' G back to 3x3.

// w (Kw, Cw, 3, 3) -> U[xi][o][i]: flip = 0: g = w[o, i]; flip = 1: g = w[i, o] rotated by 180 degrees.
__kernel void wino_filter(__global const float* w, __global float* U, const int O, const int I, const int Cw,
                          const int flip) {
    const int i = get_global_id(0), o = get_global_id(1);
    if (i >= I || o >= O) return;
    __global const float* src = w + (flip ? (i * Cw + o) : (o * Cw + i)) * 9;
    float g[3][3];
    for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s)
            g[r][s] = flip ? src[(2 - r) * 3 + (2 - s)] : src[r * 3 + s];
    float t[4][3];   // G g
    for (int s = 0; s < 3; ++s) {
        t[0][s] = g[0][s];
        t[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
        t[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
        t[3][s] = g[2][s];
    }
    const int plane = O * I, at = o * I + i;
    for (int a = 0; a < 4; ++a) {   // (G g) G^T
        U[(a * 4 + 0) * plane + at] = t[a][0];
        U[(a * 4 + 1) * plane + at] = 0.5f * (t[a][0] + t[a][1] + t[a][2]);
        U[(a * 4 + 2) * plane + at] = 0.5f * (t[a][0] - t[a][1] + t[a][2]);
        U[(a * 4 + 3) * plane + at] = t[a][2];
    }
}

// x images (from x_off: nb images of C x H x W) -> V[xi][c][t] (from v_off); tile (tp, tq) reads rows 2 tp - pt ..
// 2 tp - pt + 3 and columns 2 tq - pl .. + 3, zero outside the image.
// tr = 1 (dW): V[xi][t][c] instead, the GEMM's B operand untransposed; work-items then run along c.
__kernel void wino_input(__global const float* x, const int x_off, __global float* V, const int v_off, const int C,
                         const int H, const int W, const int TP, const int TQ, const int pt, const int pl,
                         const int T, const int tr) {
    const int t = get_global_id(tr ? 1 : 0), c = get_global_id(tr ? 0 : 1);
    if (t >= T || c >= C) return;
    const int tq = t % TQ, rest = t / TQ;
    const int tp = rest % TP, n = rest / TP;
    const int h0 = 2 * tp - pt, w0 = 2 * tq - pl;
    __global const float* src = x + x_off + ((long)n * C + c) * H * W;
    float d[4][4];
    for (int a = 0; a < 4; ++a) {
        const int h = h0 + a;
        const bool row = h >= 0 && h < H;
        for (int e = 0; e < 4; ++e) {
            const int ww = w0 + e;
            d[a][e] = row && ww >= 0 && ww < W ? src[h * W + ww] : 0.0f;
        }
    }
    float u[4][4];   // B^T d
    for (int e = 0; e < 4; ++e) {
        u[0][e] = d[0][e] - d[2][e];
        u[1][e] = d[1][e] + d[2][e];
        u[2][e] = d[2][e] - d[1][e];
        u[3][e] = d[1][e] - d[3][e];
    }
    const long plane = (long)C * T, at = v_off + (tr ? (long)t * C + c : (long)c * T + t);
    for (int a = 0; a < 4; ++a) {   // (B^T d) B
        V[(a * 4 + 0) * plane + at] = u[a][0] - u[a][2];
        V[(a * 4 + 1) * plane + at] = u[a][1] + u[a][2];
        V[(a * 4 + 2) * plane + at] = u[a][2] - u[a][1];
        V[(a * 4 + 3) * plane + at] = u[a][1] - u[a][3];
    }
}

// M[xi][k][t] (from m_off) -> y (from y_off: nb images of K x P x Q), the 2x2 tile A^T m A cropped to P x Q;
// mode bit 0: + bias[k]; bits 1-2: the activation (1 relu, 2 relu6), as conv2d.cl's.
__kernel void wino_output(__global const float* M, const int m_off, __global float* y, const int y_off,
                          __global const float* bias, const int mode, const int K, const int P, const int Q,
                          const int TP, const int TQ, const int T) {
    const int t = get_global_id(0), k = get_global_id(1);
    if (t >= T || k >= K) return;
    const int tq = t % TQ, rest = t / TQ;
    const int tp = rest % TP, n = rest / TP;
    const long plane = (long)K * T, at = m_off + (long)k * T + t;
    float m[4][4];
    for (int a = 0; a < 4; ++a)
        for (int e = 0; e < 4; ++e)
            m[a][e] = M[(a * 4 + e) * plane + at];
    float u[2][4];   // A^T m
    for (int e = 0; e < 4; ++e) {
        u[0][e] = m[0][e] + m[1][e] + m[2][e];
        u[1][e] = m[1][e] - m[2][e] - m[3][e];
    }
    const float b = (mode & 1) ? bias[k] : 0.0f;
    const int act = mode >> 1;
    __global float* dst = y + y_off + ((long)n * K + k) * P * Q;
    for (int a = 0; a < 2; ++a) {   // (A^T m) A
        const int p = 2 * tp + a;
        if (p >= P) break;
        float v[2] = {u[a][0] + u[a][1] + u[a][2] + b, u[a][1] - u[a][2] - u[a][3] + b};
        for (int e = 0; e < 2; ++e) {
            const int q = 2 * tq + e;
            if (q >= Q) break;
            float r = v[e];
            if (act == 1) r = fmax(r, 0.0f);
            else if (act == 2) r = clamp(r, 0.0f, 6.0f);
            dst[p * Q + q] = r;
        }
    }
}

// dY (from y_off: nb images of K x P x Q) -> Y'[xi][k][t] (from o_off) = A g A^T of each 2x2 tile g (zero
// outside P x Q); A = (A^T)^T, so a row (g0, g1) becomes (g0, g0 + g1, g0 - g1, -g1).
__kernel void wino_grad_tile(__global const float* gy, const int y_off, __global float* O, const int o_off,
                             const int K, const int P, const int Q, const int TP, const int TQ, const int T) {
    const int t = get_global_id(0), k = get_global_id(1);
    if (t >= T || k >= K) return;
    const int tq = t % TQ, rest = t / TQ;
    const int tp = rest % TP, n = rest / TP;
    __global const float* src = gy + y_off + ((long)n * K + k) * P * Q;
    float g[2][2];
    for (int a = 0; a < 2; ++a)
        for (int e = 0; e < 2; ++e) {
            const int p = 2 * tp + a, q = 2 * tq + e;
            g[a][e] = p < P && q < Q ? src[p * Q + q] : 0.0f;
        }
    float u[4][2];   // A g
    for (int e = 0; e < 2; ++e) {
        u[0][e] = g[0][e];
        u[1][e] = g[0][e] + g[1][e];
        u[2][e] = g[0][e] - g[1][e];
        u[3][e] = -g[1][e];
    }
    const long plane = (long)K * T, at = o_off + (long)k * T + t;
    for (int a = 0; a < 4; ++a) {   // (A g) A^T
        O[(a * 4 + 0) * plane + at] = u[a][0];
        O[(a * 4 + 1) * plane + at] = u[a][0] + u[a][1];
        O[(a * 4 + 2) * plane + at] = u[a][0] - u[a][1];
        O[(a * 4 + 3) * plane + at] = -u[a][1];
    }
}

// W'[xi][k][c] (from 0, summed over every chunk's tiles) -> dW (K, C, 3, 3) = G^T W' G.
__kernel void wino_filter_grad(__global const float* Wt, __global float* dw, const int K, const int C) {
    const int c = get_global_id(0), k = get_global_id(1);
    if (c >= C || k >= K) return;
    const long plane = (long)K * C, at = (long)k * C + c;
    float m[4][4];
    for (int a = 0; a < 4; ++a)
        for (int e = 0; e < 4; ++e)
            m[a][e] = Wt[(a * 4 + e) * plane + at];
    float u[3][4];   // G^T m; G^T = | 1 1/2 1/2 0 | | 0 1/2 -1/2 0 | | 0 1/2 1/2 1 |
    for (int e = 0; e < 4; ++e) {
        u[0][e] = m[0][e] + 0.5f * (m[1][e] + m[2][e]);
        u[1][e] = 0.5f * (m[1][e] - m[2][e]);
        u[2][e] = 0.5f * (m[1][e] + m[2][e]) + m[3][e];
    }
    __global float* dst = dw + ((long)k * C + c) * 9;
    for (int r = 0; r < 3; ++r) {   // (G^T m) G
        dst[r * 3 + 0] = u[r][0] + 0.5f * (u[r][1] + u[r][2]);
        dst[r * 3 + 1] = 0.5f * (u[r][1] - u[r][2]);
        dst[r * 3 + 2] = 0.5f * (u[r][1] + u[r][2]) + u[r][3];
    }
}
