// Convolution helpers around the GEMM (kernels/gemm.cl); the depthwise kernels are conv_depthwise.cl.
// Launchers: device_agent/ops/conv2d.py. Shapes: x (N,C,H,W), w (K,C/g,R,S), y/gy (N,K,P,Q);
// pads (pt, pl) top/left (bottom/right are implied by P, Q); stride (sh, sw); dilation (dh, dw).
// Input pixel of output (p, q) and tap (r, s): h = p*sh + r*dh - pt, w = q*sw + s*dw - pl.
// Every kernel writes each output element exactly once (no atomics): results are deterministic.

#ifndef LWG
#define LWG 64     // work-items per work-group of the reductions (bias_grad); power of 2.
                   // 1 on CPU devices: one work-item walks the whole reduction, no barriers
#endif
#if LWG & (LWG - 1)
#error "conv2d.cl: LWG must be a power of two"
#endif

// Kernel size, stride and dilation fixed at build time when GEO_R is defined (the launchers build one
// program per such geometry): divisions by the stride and the tap loops get constant operands. The
// gathers (dw_bwd_data, col2im) otherwise spent most of their time in integer division on a GPU.
// Without GEO_R the kernels read the same values from their arguments. Kernel bodies use KR_ etc.
#ifdef GEO_R
#define KR_ GEO_R
#define KS_ GEO_S
#define SH_ GEO_SH
#define SW_ GEO_SW
#define DH_ GEO_DH
#define DW_ GEO_DW
#else
#define KR_ R
#define KS_ S
#define SH_ sh
#define SW_ sw
#define DH_ dh
#define DW_ dw
#endif

// x images [img0, img0+nb) -> cols (nb, C*R*S, ldp), rows ordered (c, r, s) like w.reshape(K, -1);
// zero where the window reads padding. ldp >= P*Q is the row length (P*Q rounded up to 4 floats, so
// GPU GEMMs read the rows as float4). Global size (P*Q, C*R*S, nb); x_off = img0*C*H*W.
__kernel void im2col(__global const float* x, const int x_off, __global float* cols, const int ldp,
                     const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                     const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int pq = get_global_id(0), row = get_global_id(1), img = get_global_id(2);
    if (pq >= P * Q || row >= C * KR_ * KS_) return;
    const int c = row / (KR_ * KS_), r = (row / KS_) % KR_, s = row % KS_;
    const int h = (pq / Q) * SH_ + r * DH_ - pt, w = (pq % Q) * SW_ + s * DW_ - pl;
    cols[(img * C * KR_ * KS_ + row) * ldp + pq] =
        h >= 0 && h < H && w >= 0 && w < W ? x[x_off + ((img * C + c) * H + h) * W + w] : 0.0f;
}

// im2col with four consecutive pq per work-item and one aligned float4 store (the row padding up to
// ldp gets zeros): the one-float-per-work-item form reached ~0.4 TB/s on an H100. Global size
// (ldp/4, C*R*S, nb).
__kernel void im2col4(__global const float* x, const int x_off, __global float* cols, const int ldp,
                      const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                      const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int t = get_global_id(0), row = get_global_id(1), img = get_global_id(2);
    if (4 * t >= ldp || row >= C * KR_ * KS_) return;
    const int c = row / (KR_ * KS_), r = (row / KS_) % KR_, s = row % KS_;
    __global const float* xc = x + x_off + (img * C + c) * H * W;
    int p = (4 * t) / Q, q = (4 * t) % Q;
    float v[4];
    for (int e = 0; e < 4; e++) {
        const int h = p * SH_ + r * DH_ - pt, w = q * SW_ + s * DW_ - pl;
        v[e] = p < P && h >= 0 && h < H && w >= 0 && w < W ? xc[h * W + w] : 0.0f;
        if (++q == Q) {
            q = 0;
            p++;
        }
    }
    vstore4((float4)(v[0], v[1], v[2], v[3]), t, cols + (img * C * KR_ * KS_ + row) * ldp);
}

// The transposed layout for dW on CPU-shaped GEMMs (dW = gy @ rows is an NN product there, far faster
// than gy @ cols^T): rows (nb, P*Q, C*R*S), rows[img, pq, (c,r,s)] = cols[img, (c,r,s), pq].
// Global size (C*R*S, P*Q, nb).
__kernel void im2row(__global const float* x, const int x_off, __global float* rows,
                     const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                     const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int row = get_global_id(0), pq = get_global_id(1), img = get_global_id(2);
    if (pq >= P * Q || row >= C * KR_ * KS_) return;
    const int c = row / (KR_ * KS_), r = (row / KS_) % KR_, s = row % KS_;
    const int h = (pq / Q) * SH_ + r * DH_ - pt, w = (pq % Q) * SW_ + s * DW_ - pl;
    rows[(img * P * Q + pq) * C * KR_ * KS_ + row] =
        h >= 0 && h < H && w >= 0 && w < W ? x[x_off + ((img * C + c) * H + h) * W + w] : 0.0f;
}

// undoes im2col: dx[img, c, h, w] = sum of the cols entries (rows of length ldp) that im2col read from
// (h, w), gathered (each dx element written once, overwriting). Global size (H*W, C, nb); dx_off = img0*C*H*W.
__kernel void col2im(__global const float* cols, const int ldp, __global float* dx, const int dx_off,
                     const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                     const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int hw = get_global_id(0), c = get_global_id(1), img = get_global_id(2);
    if (hw >= H * W || c >= C) return;
    const int h = hw / W, w = hw % W;
    __global const float* col = cols + (img * C + c) * KR_ * KS_ * ldp;
    float acc = 0.0f;
    for (int r = 0; r < KR_; r++) {
        const int t = h + pt - r * DH_;          // = p * sh
        if (t < 0) break;                       // t only falls as r grows
        if (t % SH_) continue;
        const int p = t / SH_;
        if (p >= P) continue;
        for (int s = 0; s < KS_; s++) {
            const int u = w + pl - s * DW_;      // = q * sw
            if (u < 0) break;
            if (u % SW_) continue;
            const int q = u / SW_;
            if (q < Q) acc += col[(r * KS_ + s) * ldp + p * Q + q];
        }
    }
    dx[dx_off + (img * C + c) * H * W + hw] = acc;
}

// Sums `acc` over the work-group into part[0] (deterministic tree; LWG a power of two).
inline float group_sum(float acc, __local float* part) {
    const int lid = get_local_id(0);
    part[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = LWG / 2; step > 0; step >>= 1) {
        if (lid < step) part[lid] += part[lid + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return part[0];
}

// undoes y += b[k]: db[k] = sum_{n, pq} gy[n, k, pq]. One work-group of LWG work-items per channel.
// Global size (K*LWG), local size (LWG).
__kernel void bias_grad(__global const float* gy, __global float* db, const int N, const int K, const int PQ) {
    __local float part[LWG];
    const int k = get_group_id(0), lid = get_local_id(0);
    float acc = 0.0f;
    for (int n = 0; n < N; n++) {
        __global const float* g = gy + (n * K + k) * PQ;
        for (int i = lid; i < PQ; i += LWG) acc += g[i];
    }
    acc = group_sum(acc, part);
    if (lid == 0) db[k] = acc;
}

// Pointwise (1x1, stride 1, no pads, one group) dW on CPUs with no transposition pass:
//   dw[k, c] = sum_n sum_i gy[n, k, i] * x[n, c, i]   (i over the L = H*W contiguous pixels)
// Each work-item owns a PW_TK x PW_TC tile of dW: per image, eight pixels at a time, PW_TK gy rows and
// PW_TC x rows loaded as 8-wide vectors and all PW_TK*PW_TC products summed in registers; a scalar tail;
// the lanes added in a fixed tree at the end (deterministic). Rows past K or C repeat the last one and
// are not written. Global size (ceil(C/PW_TC), ceil(K/PW_TK)).
#ifndef PW_TK
#define PW_TK 4
#endif
#ifndef PW_TC
#define PW_TC 4
#endif
#define PW_MIN(a, b) ((a) < (b) ? (a) : (b))   // no min(): a call on PoCL (see conv_depthwise.cl)
#define PW_LD8(p) ((float8)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7]))
__kernel void pw_dw_cpu(__global const float* x, __global const float* gy, __global float* dwt,
                        const int N, const int C, const int K, const int L) {
    const int c0 = get_global_id(0) * PW_TC, k0 = get_global_id(1) * PW_TK;
    if (c0 >= C || k0 >= K) return;
    float8 acc[PW_TK][PW_TC];
    float acs[PW_TK][PW_TC];
    _Pragma("unroll") for (int a = 0; a < PW_TK; a++)
        _Pragma("unroll") for (int e = 0; e < PW_TC; e++) {
            acc[a][e] = (float8)0.0f;
            acs[a][e] = 0.0f;
        }
    const int l8 = L / 8 * 8;
    for (int n = 0; n < N; n++) {
        __global const float* gp[PW_TK];
        __global const float* xp[PW_TC];
        _Pragma("unroll") for (int a = 0; a < PW_TK; a++) gp[a] = gy + (n * K + PW_MIN(k0 + a, K - 1)) * L;
        _Pragma("unroll") for (int e = 0; e < PW_TC; e++) xp[e] = x + (n * C + PW_MIN(c0 + e, C - 1)) * L;
        for (int i = 0; i < l8; i += 8) {
            float8 gv[PW_TK], xv[PW_TC];
            _Pragma("unroll") for (int a = 0; a < PW_TK; a++) gv[a] = PW_LD8(gp[a] + i);
            _Pragma("unroll") for (int e = 0; e < PW_TC; e++) xv[e] = PW_LD8(xp[e] + i);
            _Pragma("unroll") for (int a = 0; a < PW_TK; a++)
                _Pragma("unroll") for (int e = 0; e < PW_TC; e++) acc[a][e] += gv[a] * xv[e];
        }
        for (int i = l8; i < L; i++)
            _Pragma("unroll") for (int a = 0; a < PW_TK; a++)
                _Pragma("unroll") for (int e = 0; e < PW_TC; e++) acs[a][e] += gp[a][i] * xp[e][i];
    }
    _Pragma("unroll") for (int a = 0; a < PW_TK; a++)
        _Pragma("unroll") for (int e = 0; e < PW_TC; e++) {
            const float8 v = acc[a][e];
            if (k0 + a < K && c0 + e < C)
                dwt[(k0 + a) * C + c0 + e] = acs[a][e] + (((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7)));
        }
}
