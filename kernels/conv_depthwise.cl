// Depthwise convolution (groups == C > 1, K = C*mult): direct kernels, no GEMM. Launchers:
// device_agent/ops/conv_depthwise.py (called by ops/conv2d.py). Shapes: x (N,C,H,W), w (K,1,R,S),
// y/gy (N,K,P,Q); pads (pt, pl) top/left; stride (sh, sw); dilation (dh, dw). Input pixel of output
// (p, q) and tap (r, s): h = p*sh + r*dh - pt, w = q*sw + s*dw - pl.
// Every kernel writes each output element exactly once (no atomics): results are deterministic.
// GPU-shaped: dw_fwd, dw_bwd_data (one or a few outputs per work-item), dw_bwd_filter_part (+ finish).
// CPU-shaped: dw_fwd_rows, dw_bwd_data_rows (a plane per work-item, vectors along the rows),
// dw_bwd_filter_rows (+ finish when cut in segments).

#ifndef LWG
#define LWG 64     // work-items per work-group of the reductions (dw_bwd_filter_part); power of 2.
                   // 1 on CPU devices: one work-item walks the whole reduction, no barriers
#endif
#if LWG & (LWG - 1)
#error "conv_depthwise.cl: LWG must be a power of two"
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

// Depthwise (groups == C, K = C*mult): y[n,k,p,q] = b[k] + sum_{r,s} x[n, k/mult, h, w] * w[k,0,r,s].
// mode bit 0: add the bias; bits 1-2: then an activation (1 relu, 2 relu6, as gemm.cl's epilogue).
// Each work-item computes a run of qb consecutive outputs of one row (GPUs: qb = 1, one output per
// work-item; CPUs: a whole row, no index division per output). Global size (P*ceil(Q/qb), K, N).
__kernel void dw_fwd(__global const float* x, __global const float* wt, __global const float* bias,
                     const int mode, __global float* y,
                     const int C, const int H, const int W, const int mult, const int R, const int S,
                     const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                     const int pt, const int pl, const int qb) {
    const int nq = (Q + qb - 1) / qb;
    const int t = get_global_id(0), k = get_global_id(1), n = get_global_id(2);
    if (t >= P * nq || k >= C * mult) return;
    const int p = t / nq, q0 = (t % nq) * qb, q1 = min(Q, q0 + qb);
    __global const float* xp = x + (n * C + k / mult) * H * W;
    __global const float* wp = wt + k * KR_ * KS_;
    __global float* yp = y + ((n * C * mult + k) * P + p) * Q;
    const int act = mode >> 1;
    for (int q = q0; q < q1; q++) {
        float acc = 0.0f;
        for (int r = 0; r < KR_; r++) {
            const int h = p * SH_ + r * DH_ - pt;
            if (h < 0 || h >= H) continue;
            for (int s = 0; s < KS_; s++) {
                const int w = q * SW_ + s * DW_ - pl;
                if (w >= 0 && w < W) acc += xp[h * W + w] * wp[r * KS_ + s];
            }
        }
        if (mode & 1) acc += bias[k];
        if (act == 1) acc = fmax(acc, 0.0f);
        else if (act == 2) {
            if (acc < 0.0f) acc = 0.0f;
            if (acc > 6.0f) acc = 6.0f;
        }
        yp[q] = acc;
    }
}

// CPU-shaped depthwise kernels: one work-item per row, the taps outside and each tap's contiguous q
// (or w) range inside, without per-element bounds checks or index division (the compiler can
// vectorise along the row; PoCL vectorises across work-items only when they read neighbours).
// Input column of output column q and tap offset o = s*dw - pl: w = q*sw + o, inside [0, W) for
// q in [dw_qlo, dw_qhi).
inline int dw_qlo(const int o, const int sw) { return o >= 0 ? 0 : (-o + sw - 1) / sw; }
inline int dw_qhi(const int o, const int sw, const int W, const int Q) {
    return W - 1 - o < 0 ? 0 : (W - 1 - o) / sw + 1 < Q ? (W - 1 - o) / sw + 1 : Q;   // no min(): a call on PoCL
}

#ifdef GEO_R
#define DW_TAPS (GEO_R * GEO_S)
#else
#define DW_TAPS 49   // without a build-time geometry: kernels up to 7x7 (the launchers always set GEO_R)
#endif
#ifndef DW_VEC
#define DW_VEC 8   // lanes of the vector sums: 4 or 8
#endif
// DW_VEC floats p[0], p[st], p[2*st], ... as one vector. NOTE: spelled out instead of vloadN: this PoCL
// (3.0-rc2, LLVM 14) links its builtins after optimisation, so each vload8 / min / fmax is a call
// (and vload16(..).even gave wrong sums); LLVM merges the scalar loads into one vector load.
#define DW_LD4(p, st) ((float4)((p)[0], (p)[st], (p)[2 * (st)], (p)[3 * (st)]))
#if DW_VEC == 4
typedef float4 dwvec;
#define DW_LD(p, st) DW_LD4(p, st)
#elif DW_VEC == 8
typedef float8 dwvec;
#define DW_LD(p, st) ((float8)((p)[0], (p)[st], (p)[2 * (st)], (p)[3 * (st)], (p)[4 * (st)], (p)[5 * (st)], \
                               (p)[6 * (st)], (p)[7 * (st)]))
#else
#error "conv_depthwise.cl: DW_VEC must be 4 or 8"
#endif
#define DW_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DW_MAX(a, b) ((a) > (b) ? (a) : (b))

// dw_fwd by output rows (n, k, p), pb rows per work-item (PoCL pays per work-group: rows alone were
// too little work each); same sums in the same order. Global size (ceil(P/pb), K, N).
// one output vector of dw_fwd_rows: columns q .. q+V-1 of row p, every tap inside the row
#define DW_FWD_VEC(V, acc, q)                                                                          \
    {                                                                                                  \
        _Pragma("unroll") for (int r = 0; r < KR_; r++) {                                              \
            const int h = p * SH_ + r * DH_ - pt;                                                      \
            if (h < 0 || h >= H) continue;                                                             \
            __global const float* x0 = xp + h * W - pl + (q) * SW_;                                   \
            _Pragma("unroll") for (int s = 0; s < KS_; s++) acc += DW_LD##V(x0 + s * DW_, SW_) * wv[r * KS_ + s]; \
        }                                                                                              \
        if (mode & 1) acc += b0;                                                                       \
        if (act >= 1) acc = acc < 0.0f ? 0.0f : acc;                                                   \
        if (act == 2) acc = acc > 6.0f ? 6.0f : acc;                                                   \
    }
#define DW_LD8(p, st) DW_LD(p, st)

__kernel void dw_fwd_rows(__global const float* x, __global const float* wt, __global const float* bias,
                          const int mode, __global float* y,
                          const int C, const int H, const int W, const int mult, const int R, const int S,
                          const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                          const int pt, const int pl, const int pb) {
    const int p0 = get_global_id(0) * pb, k = get_global_id(1), n = get_global_id(2);
    if (p0 >= P || k >= C * mult) return;
    __global const float* xp = x + (n * C + k / mult) * H * W;
    float wv[DW_TAPS];
    _Pragma("unroll") for (int t = 0; t < KR_ * KS_; t++) wv[t] = wt[k * KR_ * KS_ + t];
    const int act = mode >> 1;
    const float b0 = (mode & 1) ? bias[k] : 0.0f;
    // columns [qa, qb) have every tap inside the row: vectors of 8 (or 4 on short rows), the last one
    // moved back to end at qb (columns it repeats get the same value again); the rest one by one. Taps
    // in the order r, s, then the bias, as dw_fwd.
    int qa = 0, qb = Q;
    _Pragma("unroll") for (int s = 0; s < KS_; s++) {
        qa = DW_MAX(qa, dw_qlo(s * DW_ - pl, SW_));
        qb = DW_MIN(qb, dw_qhi(s * DW_ - pl, SW_, W, Q));
    }
    const int vw = DW_VEC == 8 && qb - qa >= 8 ? 8 : qb - qa >= 4 ? 4 : 0;
    for (int p = p0; p < DW_MIN(P, p0 + pb); p++) {
        __global float* yr = y + ((n * C * mult + k) * P + p) * Q;
#if DW_VEC == 8
        if (vw == 8)
            for (int q0 = qa; q0 < qb; q0 += 8) {
                const int q = DW_MIN(q0, qb - 8);
                float8 acc = (float8)0.0f;
                DW_FWD_VEC(8, acc, q)
                yr[q] = acc.s0; yr[q + 1] = acc.s1; yr[q + 2] = acc.s2; yr[q + 3] = acc.s3;
                yr[q + 4] = acc.s4; yr[q + 5] = acc.s5; yr[q + 6] = acc.s6; yr[q + 7] = acc.s7;
            }
#endif
        if (vw == 4)
            for (int q0 = qa; q0 < qb; q0 += 4) {
                const int q = DW_MIN(q0, qb - 4);
                float4 acc = (float4)0.0f;
                DW_FWD_VEC(4, acc, q)
                yr[q] = acc.s0; yr[q + 1] = acc.s1; yr[q + 2] = acc.s2; yr[q + 3] = acc.s3;
            }
        for (int q = 0; q < Q; q++) {
            if (q == qa && vw) q = qb;   // the vector part
            if (q >= Q) break;
            float a = 0.0f;
            _Pragma("unroll") for (int r = 0; r < KR_; r++) {
                const int h = p * SH_ + r * DH_ - pt;
                if (h < 0 || h >= H) continue;
                _Pragma("unroll") for (int s = 0; s < KS_; s++) {
                    const int w = q * SW_ + s * DW_ - pl;
                    if (w >= 0 && w < W) a += xp[h * W + w] * wv[r * KS_ + s];
                }
            }
            if (mode & 1) a += b0;
            if (act >= 1) a = a < 0.0f ? 0.0f : a;
            if (act == 2) a = a > 6.0f ? 6.0f : a;
            yr[q] = a;
        }
    }
}

// dw_bwd_data by input rows (n, c, h), hb rows per work-item: a gather, each dx value summed over
// j, r, s in that order (as dw_bwd_data: the same sums in the same order). Row h, column w = m*sw + e
// (phase e < sw): tap (r, s) reaches it from gy column q = m + d, d = (e + pl - s*dw) / sw when that
// divides; so along m every tap reads a contiguous gy run: vectors of 8 (or 4) over the m where every
// such tap's q is inside [0, Q), the last one moved back to end there (values it repeats come out the
// same); the rest one by one. Global size (ceil(H/hb), C, N).
inline float dw_bwd_at(__global const float* gyn, const float* wv, const int c, const int mult,
                       const int h, const int w, const int P, const int Q, const int pt, const int pl) {
    float acc = 0.0f;   // taps unrolled: a tap that misses is skipped, the others added in the order j, r, s
    for (int j = 0; j < mult; j++) {
        __global const float* g = gyn + (c * mult + j) * P * Q;
        _Pragma("unroll") for (int r = 0; r < KR_; r++) {
            const int t = h + pt - r * DH_;
            if (t < 0 || t % SH_ || t / SH_ >= P) continue;
            _Pragma("unroll") for (int s = 0; s < KS_; s++) {
                const int u = w + pl - s * DW_;
                if (u >= 0 && u % SW_ == 0 && u / SW_ < Q)
                    acc += g[(t / SH_) * Q + u / SW_] * wv[(j * KR_ + r) * KS_ + s];
            }
        }
    }
    return acc;
}

#ifndef DW_WMAX
#define DW_WMAX (2 * DW_TAPS)   // private weights of dw_bwd_data_rows: channel multipliers up to 2 (launcher)
#endif
#define DW_BWD_VEC(V, acc, m)                                                                          \
    for (int j = 0; j < mult; j++) {                                                                   \
        const int k = c * mult + j;                                                                    \
        __global const float* g = gyn + k * P * Q;                                                     \
        const float* wp = wv + j * KR_ * KS_;                                                          \
        _Pragma("unroll") for (int r = 0; r < KR_; r++) {                                              \
            const int t = h + pt - r * DH_;                                                            \
            if (t < 0 || t % SH_ || t / SH_ >= P) continue;                                            \
            __global const float* gr = g + (t / SH_) * Q + (m);                                        \
            _Pragma("unroll") for (int s = 0; s < KS_; s++) {                                          \
                const int u = e + pl - s * DW_;                                                        \
                if (u % SW_ == 0) acc += DW_LD##V(gr + u / SW_, 1) * wp[r * KS_ + s];                  \
            }                                                                                          \
        }                                                                                              \
    }

__kernel void dw_bwd_data_rows(__global const float* gy, __global const float* wt, __global float* dx,
                               const int C, const int H, const int W, const int mult, const int R, const int S,
                               const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                               const int pt, const int pl, const int hb) {
    const int h0 = get_global_id(0) * hb, c = get_global_id(1), n = get_global_id(2);
    if (h0 >= H || c >= C) return;
    __global const float* gyn = gy + n * C * mult * P * Q;
    float wv[DW_WMAX];   // the weights of channels c*mult .. c*mult + mult-1 (mult <= DW_WMAX / (R*S), launcher)
    for (int t = 0; t < mult * KR_ * KS_; t++) wv[t] = wt[c * mult * KR_ * KS_ + t];
    for (int h = h0; h < DW_MIN(H, h0 + hb); h++) {
        __global float* dr = dx + ((n * C + c) * H + h) * W;
        for (int e = 0; e < SW_; e++) {
            const int mw = W - 1 - e < 0 ? 0 : (W - 1 - e) / SW_ + 1;   // columns m*sw + e inside the row
            int ma = 0, mb = mw;
            _Pragma("unroll") for (int s = 0; s < KS_; s++) {
                const int u = e + pl - s * DW_;
                if (u % SW_ == 0) {
                    ma = DW_MAX(ma, -(u / SW_));
                    mb = DW_MIN(mb, Q - u / SW_);
                }
            }
            const int vw = DW_VEC == 8 && mb - ma >= 8 ? 8 : mb - ma >= 4 ? 4 : 0;
#if DW_VEC == 8
            if (vw == 8)
                for (int m0 = ma; m0 < mb; m0 += 8) {
                    const int m = DW_MIN(m0, mb - 8);
                    float8 acc = (float8)0.0f;
                    DW_BWD_VEC(8, acc, m)
                    __global float* d = dr + m * SW_ + e;
                    d[0] = acc.s0; d[SW_] = acc.s1; d[2 * SW_] = acc.s2; d[3 * SW_] = acc.s3;
                    d[4 * SW_] = acc.s4; d[5 * SW_] = acc.s5; d[6 * SW_] = acc.s6; d[7 * SW_] = acc.s7;
                }
#endif
            if (vw == 4)
                for (int m0 = ma; m0 < mb; m0 += 4) {
                    const int m = DW_MIN(m0, mb - 4);
                    float4 acc = (float4)0.0f;
                    DW_BWD_VEC(4, acc, m)
                    __global float* d = dr + m * SW_ + e;
                    d[0] = acc.s0; d[SW_] = acc.s1; d[2 * SW_] = acc.s2; d[3 * SW_] = acc.s3;
                }
            for (int m = 0; m < mw; m++) {
                if (m == ma && vw) m = mb;   // the vector part
                if (m >= mw) break;
                dr[m * SW_ + e] = dw_bwd_at(gyn, wv, c, mult, h, m * SW_ + e, P, Q, pt, pl);
            }
        }
    }
}

// undoes dw_fwd for x: dx[n,c,h,w] = sum_{j<mult, r, s : h = p*sh + r*dh - pt, w = q*sw + s*dw - pl}
//   gy[n, c*mult+j, p, q] * w[c*mult+j, 0, r, s]    (a gather; runs of wb values of a row per work-item
//   as dw_fwd's qb; global size (H*ceil(W/wb), C, N))
__kernel void dw_bwd_data(__global const float* gy, __global const float* wt, __global float* dx,
                          const int C, const int H, const int W, const int mult, const int R, const int S,
                          const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                          const int pt, const int pl, const int wb) {
    const int nw = (W + wb - 1) / wb;
    const int t0 = get_global_id(0), c = get_global_id(1), n = get_global_id(2);
    if (t0 >= H * nw || c >= C) return;
    const int h = t0 / nw, w0 = (t0 % nw) * wb, w1 = min(W, w0 + wb);
    for (int w = w0; w < w1; w++) {
        float acc = 0.0f;
        for (int j = 0; j < mult; j++) {
            const int k = c * mult + j;
            __global const float* g = gy + (n * C * mult + k) * P * Q;
            __global const float* wp = wt + k * KR_ * KS_;
            for (int r = 0; r < KR_; r++) {
                const int t = h + pt - r * DH_;
                if (t < 0) break;
                if (t % SH_) continue;
                const int p = t / SH_;
                if (p >= P) continue;
                for (int s = 0; s < KS_; s++) {
                    const int u = w + pl - s * DW_;
                    if (u < 0) break;
                    if (u % SW_) continue;
                    const int q = u / SW_;
                    if (q < Q) acc += g[p * Q + q] * wp[r * KS_ + s];
                }
            }
        }
        dx[((n * C + c) * H + h) * W + w] = acc;
    }
}

// undoes dw_fwd for w: dw[k,0,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, k/mult, h, w], in two launches so
// that wide maps with few channels fill a GPU. The N*P rows (n, p) are cut in S segments of `seg`
// rows; work-group (sg, k) sums its segment for all R*S taps of channel k at once (each gy value is
// read once, the x window from cache) into part[(k*R*S + tap)*S + sg], and dw_bwd_filter_finish adds
// each weight's S parts in order (deterministic). Within a work-group the LWG work-items are
// LR rows x LQ columns (LQ = lq, a power of two near Q): neighbours read neighbouring q, so loads
// coalesce. Global sizes: part (S*LWG, K) with local (LWG, 1); finish (K*R*S).
__kernel void dw_bwd_filter_part(__global const float* x, __global const float* gy, __global float* part,
                                 const int N, const int C, const int H, const int W, const int mult,
                                 const int R, const int S, const int P, const int Q, const int sh, const int sw,
                                 const int dh, const int dw, const int pt, const int pl, const int seg,
                                 const int lq) {
    __local float lpart[DW_TAPS * LWG];
    const int k = get_global_id(1), sg = get_group_id(0), NS = get_num_groups(0), lid = get_local_id(0);
    const int c = k / mult, K = C * mult, lr = LWG / lq, qi = lid % lq;
    const int np1 = min(N * P, (sg + 1) * seg);
    float acc[DW_TAPS];
    for (int t = 0; t < DW_TAPS; t++) acc[t] = 0.0f;
    for (int np = sg * seg + lid / lq; np < np1; np += lr) {
        const int n = np / P, p = np % P;
        __global const float* g = gy + ((n * K + k) * P + p) * Q;
        __global const float* xc = x + (n * C + c) * H * W;
        if (lq == 1) {   // one lane per row (CPUs): taps outside, each tap's contiguous q range inside
            for (int r = 0; r < KR_; r++) {
                const int h = p * SH_ + r * DH_ - pt;
                if (h < 0 || h >= H) continue;
                __global const float* xr = xc + h * W;
                for (int s = 0; s < KS_; s++) {
                    const int o = s * DW_ - pl, q1 = dw_qhi(o, SW_, W, Q);
                    float a = acc[r * KS_ + s];
                    for (int q = dw_qlo(o, SW_); q < q1; q++) a += g[q] * xr[q * SW_ + o];
                    acc[r * KS_ + s] = a;
                }
            }
            continue;
        }
        for (int q = qi; q < Q; q += lq) {
            const float gv = g[q];
            for (int r = 0; r < KR_; r++) {
                const int h = p * SH_ + r * DH_ - pt;
                if (h < 0 || h >= H) continue;
                for (int s = 0; s < KS_; s++) {
                    const int w = q * SW_ + s * DW_ - pl;
                    if (w >= 0 && w < W) acc[r * KS_ + s] += gv * xc[h * W + w];
                }
            }
        }
    }
    // all taps' sums over the work-group at once: one tree in local memory (deterministic)
    for (int t = 0; t < KR_ * KS_; t++) lpart[t * LWG + lid] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = LWG / 2; step > 0; step >>= 1) {
        if (lid < step)
            for (int t = 0; t < KR_ * KS_; t++) lpart[t * LWG + lid] += lpart[t * LWG + lid + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        for (int t = 0; t < KR_ * KS_; t++) part[(k * KR_ * KS_ + t) * NS + sg] = lpart[t * LWG];
}

// dw_bwd_filter_part for CPU devices: one work-item per (segment sg, channel k) walks the segment's rows
// (n, p) of gy with all R*S taps' sums held in registers: per row and tap one dot product of the gy row
// with the x row it met: DW_VEC-wide vectors over the columns where every tap's input is inside the row
// (then one half-width vector where it fits), scalar sums over the edges and the rest. Fixed order of
// sums (vector lanes added in a fixed tree at the end): deterministic. No local memory, no barriers.
// ~6x dw_bwd_filter_part (lq = 1) on PoCL for MobileNetV2's depthwise layers.
// Writes part[(k*R*S + tap)*NS + sg] as dw_bwd_filter_part (NS = 1: straight into dW, no finish).
// Global size (NS, K).

__kernel void dw_bwd_filter_rows(__global const float* x, __global const float* gy, __global float* part,
                                 const int N, const int C, const int H, const int W, const int mult,
                                 const int R, const int S, const int P, const int Q, const int sh, const int sw,
                                 const int dh, const int dw, const int pt, const int pl, const int seg,
                                 const int NS) {
    const int sg = get_global_id(0), k = get_global_id(1), K = C * mult;
    if (sg >= NS || k >= K) return;
    const int c = k / mult, np1 = DW_MIN(N * P, (sg + 1) * seg);
    // columns [qa, qv) take the vector sums for every tap (qt: then one half-width vector where it
    // fits); each tap's own range [dw_qlo, dw_qhi) the scalar rest
    int qa = 0, qb = Q;
    for (int s = 0; s < KS_; s++) {
        qa = DW_MAX(qa, dw_qlo(s * DW_ - pl, SW_));
        qb = DW_MIN(qb, dw_qhi(s * DW_ - pl, SW_, W, Q));
    }
    const int qv = qb > qa ? qa + (qb - qa) / DW_VEC * DW_VEC : qa;
    const int qt = DW_VEC == 8 && qv + 4 <= qb ? qv + 4 : qv;
    dwvec av[DW_TAPS];
    float as[DW_TAPS];
    for (int t = 0; t < KR_ * KS_; t++) {
        av[t] = (dwvec)0.0f;
        as[t] = 0.0f;
    }
    for (int np = sg * seg; np < np1; np++) {
        const int n = np / P, p = np % P;
        __global const float* g = gy + ((n * K + k) * P + p) * Q;
        __global const float* xc = x + (n * C + c) * H * W;
        for (int r = 0; r < KR_; r++) {
            const int h = p * SH_ + r * DH_ - pt;
            if (h < 0 || h >= H) continue;
            __global const float* x0 = xc + h * W - pl;   // x0[q*sw + s*dw] = input of column q, tap s
#if KS_ == 3   // the three taps' sums of this r in named registers (LLVM kept av[] in memory otherwise)
            dwvec a0 = av[r * 3], a1 = av[r * 3 + 1], a2 = av[r * 3 + 2];
            float s0 = as[r * 3], s1 = as[r * 3 + 1], s2 = as[r * 3 + 2];
            for (int q = qa; q < qv; q += DW_VEC) {
                const dwvec gv = DW_LD(g + q, 1);
                a0 += gv * DW_LD(x0 + q * SW_, SW_);
                a1 += gv * DW_LD(x0 + q * SW_ + DW_, SW_);
                a2 += gv * DW_LD(x0 + q * SW_ + 2 * DW_, SW_);
            }
#if DW_VEC == 8
            if (qt > qv) {
                const float4 gv = DW_LD4(g + qv, 1);
                a0.lo += gv * DW_LD4(x0 + qv * SW_, SW_);
                a1.lo += gv * DW_LD4(x0 + qv * SW_ + DW_, SW_);
                a2.lo += gv * DW_LD4(x0 + qv * SW_ + 2 * DW_, SW_);
            }
#endif
            // the edges, tap by tap inside [dw_qlo, dw_qhi) (w = q*sw + s*dw - pl inside the row)
            for (int q = 0; q < qa; q++) {
                const float gq = g[q];
                const int w = q * SW_ - pl;
                if (w >= 0 && w < W) s0 += gq * x0[q * SW_];
                if (w + DW_ >= 0 && w + DW_ < W) s1 += gq * x0[q * SW_ + DW_];
                if (w + 2 * DW_ >= 0 && w + 2 * DW_ < W) s2 += gq * x0[q * SW_ + 2 * DW_];
            }
            for (int q = qt; q < Q; q++) {
                const float gq = g[q];
                const int w = q * SW_ - pl;
                if (w >= 0 && w < W) s0 += gq * x0[q * SW_];
                if (w + DW_ >= 0 && w + DW_ < W) s1 += gq * x0[q * SW_ + DW_];
                if (w + 2 * DW_ >= 0 && w + 2 * DW_ < W) s2 += gq * x0[q * SW_ + 2 * DW_];
            }
            av[r * 3] = a0;
            av[r * 3 + 1] = a1;
            av[r * 3 + 2] = a2;
            as[r * 3] = s0;
            as[r * 3 + 1] = s1;
            as[r * 3 + 2] = s2;
#else
            for (int q = qa; q < qv; q += DW_VEC) {
                const dwvec gv = DW_LD(g + q, 1);
                for (int s = 0; s < KS_; s++) av[r * KS_ + s] += gv * DW_LD(x0 + q * SW_ + s * DW_, SW_);
            }
            for (int s = 0; s < KS_; s++) {
                const int o = s * DW_ - pl, q1 = dw_qhi(o, SW_, W, Q);
                float a = as[r * KS_ + s];
                for (int q = dw_qlo(o, SW_); q < DW_MIN(qa, q1); q++) a += g[q] * x0[q * SW_ + s * DW_];
                for (int q = DW_MAX(qv, dw_qlo(o, SW_)); q < q1; q++) a += g[q] * x0[q * SW_ + s * DW_];
                as[r * KS_ + s] = a;
            }
#endif
        }
    }
    for (int t = 0; t < KR_ * KS_; t++) {
        const dwvec v = av[t];
#if DW_VEC == 8
        const float a = as[t] + (((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7)));
#else
        const float a = as[t] + ((v.s0 + v.s1) + (v.s2 + v.s3));
#endif
        part[(k * KR_ * KS_ + t) * NS + sg] = a;
    }
}

__kernel void dw_bwd_filter_finish(__global const float* part, const int NS, __global float* dwt, const int KRS) {
    const int widx = get_global_id(0);
    if (widx >= KRS) return;
    float acc = 0.0f;
    for (int sg = 0; sg < NS; sg++) acc += part[widx * NS + sg];
    dwt[widx] = acc;
}
