// Implicit-GEMM convolution (GPUs): the im2col columns are gathered tile by tile into local memory,
// never written to global memory, so no [C*R*S, N*P*Q] workspace exists. Launchers:
// device_agent/ops/conv_igemm.py. Shapes: x (N,C,H,W), w (K,C/g,R,S), y/gy (N,K,P,Q); pads (pt, pl)
// top/left; stride (SH_, SW_) and dilation (DH_, DW_) and the kernel size (KR_, KS_) are build-time
// constants (one program per geometry, as conv2d.cl). Input pixel of output (p, q) and tap (r, s):
// h = p*sh + r*dh - pt, w = q*sw + s*dw - pl. Group gi = get_group_id(2) (dW: / nseg), Cg = C/g, Kg = K/g.
//
//   conv_igemm_fwd      y[n, gi*Kg+m, pq]  = sum_{crs}     w[gi*Kg+m, crs] * cols[crs, (n, pq)]     (M=Kg, N=N*P*Q, K=Cg*R*S)
//   conv_igemm_bwd_data dx[n, gi*Cg+m, hw] = sum_{(k,r,s)} w[gi*Kg+k, m, r, s] * gy[n, gi*Kg+k, p, q] where
//                       (h + pt - r*dh, w + pl - s*dw) = (p*sh, q*sw)                          (M=Cg, N=N*H*W, K=Kg*R*S)
//   conv_igemm_bwd_filt dw[gi*Kg+m, crs]   = sum_{(n,pq)}  gy[n, gi*Kg+m, pq] * cols[crs, (n, pq)]   (M=Kg, N=Cg*R*S, K=N*P*Q)
//                       the reduction cut in nseg segments: segment sg writes part[sg] (or dw itself when
//                       nseg == 1); conv_igemm_sum adds the parts in order (deterministic, no atomics)
//
// Each kernel is one GEMM body (an MWG x NWG tile per work-group of NDIMC x MDIMC work-items, each an
// MWI x NWI register tile, KWG-deep slices staged in local memory, as gemm.cl's GPU family) with its own
// gather of the A and B slices. Every output element is written exactly once.

#ifndef MWG
#define MWG 64     // work-group tile rows (M)
#endif
#ifndef NWG
#define NWG 64     // work-group tile columns (N)
#endif
#ifndef KWG
#define KWG 16     // reduction slice staged in local memory: (MWG + NWG) * KWG * 4 B = 8 KiB here
#endif
#ifndef MDIMC
#define MDIMC 8    // work-items along M
#endif
#ifndef NDIMC
#define NDIMC 8    // work-items along N
#endif
#ifndef LPAD
#define LPAD 0     // floats of padding per local row (a multiple of 4)
#endif
#ifndef GEO_R      // kernel size, stride, dilation (the launcher always sets them)
#define GEO_R 3
#define GEO_S 3
#define GEO_SH 1
#define GEO_SW 1
#define GEO_DH 1
#define GEO_DW 1
#endif
#define KR_ GEO_R
#define KS_ GEO_S
#define SH_ GEO_SH
#define SW_ GEO_SW
#define DH_ GEO_DH
#define DW_ GEO_DW
#define RS_ (GEO_R * GEO_S)

// Activations (x, y) are ACT_T, read and written through LOAD_ACT / STORE_ACT (common.cl: halves under
// -DACT_HALF); gradients and weights are float.

#define MWI (MWG / MDIMC)
#define NWI (NWG / NDIMC)
#define THREADS (MDIMC * NDIMC)
#define AL (MWG + LPAD)
#define BL (NWG + LPAD)
#if (MWI % 4) || (NWI % 4) || (LPAD % 4)
#error "conv_igemm.cl: MWI, NWI and LPAD must be multiples of 4"
#endif
#if (THREADS % KWG) || ((THREADS % NWG) && (NWG % THREADS))
#error "conv_igemm.cl: THREADS must be a multiple of KWG, and THREADS and NWG multiples of one another"
#endif

// The B slice's columns: work-item tid gathers columns tid % NWG (+ t*THREADS when NWG > THREADS),
// rows kk = tid / NWG, + BKSTEP ...; column facts are decoded once per kernel, not per element.
#if THREADS >= NWG
#define BCOLS 1
#define BKSTEP (THREADS / NWG)
#else
#define BCOLS (NWG / THREADS)
#define BKSTEP 1
#endif

// acc += As^T Bs over one KWG slice (As[kk*AL + m], Bs[kk*BL + n]); float4 reads as gemm.cl: work-item
// (tx, ty) owns rows iv*MDIMC*4 + ty*4 + {0..3} and columns jv*NDIMC*4 + tx*4 + {0..3}
#define TILE_MAC(acc, As, Bs, tx, ty)                                                              \
    for (int kk = 0; kk < KWG; kk++) {                                                             \
        float a[MWI], b[NWI];                                                                      \
        for (int iv = 0; iv < MWI / 4; iv++) {                                                     \
            const float4 v = *(__local const float4*)(As + kk * AL + iv * MDIMC * 4 + ty * 4);     \
            a[iv * 4 + 0] = v.x; a[iv * 4 + 1] = v.y; a[iv * 4 + 2] = v.z; a[iv * 4 + 3] = v.w;    \
        }                                                                                          \
        for (int jv = 0; jv < NWI / 4; jv++) {                                                     \
            const float4 v = *(__local const float4*)(Bs + kk * BL + jv * NDIMC * 4 + tx * 4);     \
            b[jv * 4 + 0] = v.x; b[jv * 4 + 1] = v.y; b[jv * 4 + 2] = v.z; b[jv * 4 + 3] = v.w;    \
        }                                                                                          \
        for (int i = 0; i < MWI; i++)                                                              \
            for (int j = 0; j < NWI; j++) acc[i][j] = fma(a[i], b[j], acc[i][j]);                  \
    }

#define ROW_OF(i, ty) ((i) / 4 * MDIMC * 4 + (ty) * 4 + (i) % 4)
#define COL_OF(j, tx) ((j) / 4 * NDIMC * 4 + (tx) * 4 + (j) % 4)

#define LOCAL_TILES                                                                                \
    __local float4 As4[KWG * AL / 4];                                                              \
    __local float4 Bs4[KWG * BL / 4];                                                              \
    __local float* As = (__local float*)As4;                                                       \
    __local float* Bs = (__local float*)Bs4;                                                       \
    const int tx = get_local_id(0), ty = get_local_id(1), tid = ty * NDIMC + tx;                   \
    const int n0 = get_group_id(0) * NWG, m0 = get_group_id(1) * MWG;                              \
    float acc[MWI][NWI];                                                                           \
    for (int i = 0; i < MWI; i++)                                                                  \
        for (int j = 0; j < NWI; j++) acc[i][j] = 0.0f;

// mode bit 0: + bias[k]; bits 1-2: then an activation (1 relu, 2 relu6), as conv2d.cl / gemm.cl
inline float fwd_epilogue(float v, const int mode, __global const float* bias, const int k) {
    if (mode & 1) v += bias[k];
    const int act = mode >> 1;
    if (act == 1) v = fmax(v, 0.0f);
    else if (act == 2) v = fmin(fmax(v, 0.0f), 6.0f);
    return v;
}

// Global size (ceil(N*P*Q / NWG) * NDIMC, ceil(Kg / MWG) * MDIMC, g), local (NDIMC, MDIMC, 1).
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void conv_igemm_fwd(__global const ACT_T* x, __global const float* wt, __global const float* bias,
                    const int mode, __global ACT_T* y, const int N, const int C, const int H, const int W,
                    const int K, const int P, const int Q, const int pt, const int pl, const int groups) {
    LOCAL_TILES
    const int gi = get_group_id(2), Cg = C / groups, Kg = K / groups, KK = Cg * RS_;
    const int PQ = P * Q, NPQ = N * PQ, HW = H * W;
    __global const float* wg = wt + gi * Kg * KK;
    // this work-item's B columns (n, p, q): image offset and window origin, once
    int xoff[BCOLS], hb[BCOLS], wb[BCOLS];
    for (int t = 0; t < BCOLS; t++) {
        const int j = n0 + tid % NWG + t * THREADS;
        const int img = j / PQ, pq = j % PQ;
        xoff[t] = j < NPQ ? (img * C + gi * Cg) * HW : -1;
        hb[t] = (pq / Q) * SH_ - pt;
        wb[t] = (pq % Q) * SW_ - pl;
    }
    for (int k0 = 0; k0 < KK; k0 += KWG) {
        for (int idx = tid; idx < MWG * KWG; idx += THREADS) {     // A: w rows, contiguous along crs
            const int m = idx / KWG, kk = idx % KWG, mm = m0 + m, kc = k0 + kk;
            As[kk * AL + m] = mm < Kg && kc < KK ? wg[mm * KK + kc] : 0.0f;
        }
        for (int kk = tid / NWG; kk < KWG; kk += BKSTEP) {        // B: the columns, gathered from x
            const int crs = k0 + kk, c = crs / RS_, r = (crs % RS_) / KS_, s = crs % KS_;
            for (int t = 0; t < BCOLS; t++) {
                const int h = hb[t] + r * DH_, w = wb[t] + s * DW_;
                const int in = xoff[t] >= 0 && crs < KK && h >= 0 && h < H && w >= 0 && w < W;
                Bs[kk * BL + tid % NWG + t * THREADS] = in ? LOAD_ACT(x, xoff[t] + c * HW + h * W + w) : 0.0f;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        TILE_MAC(acc, As, Bs, tx, ty)
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int j = 0; j < NWI; j++) {
        const int col = n0 + COL_OF(j, tx);
        if (col >= NPQ) continue;
        const int img = col / PQ, pq = col % PQ;
        __global ACT_T* yc = y + (img * K + gi * Kg) * PQ + pq;
        for (int i = 0; i < MWI; i++) {
            const int m = m0 + ROW_OF(i, ty);
            if (m < Kg) STORE_ACT(yc, m * PQ, fwd_epilogue(acc[i][j], mode, bias, gi * Kg + m));
        }
    }
}

// Global size (ceil(N*H*W / NWG) * NDIMC, ceil(Cg / MWG) * MDIMC, g), local (NDIMC, MDIMC, 1).
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void conv_igemm_bwd_data(__global const float* gy, __global const float* wt, __global float* dx,
                         const int N, const int C, const int H, const int W, const int K, const int P,
                         const int Q, const int pt, const int pl, const int groups) {
    LOCAL_TILES
    const int gi = get_group_id(2), Cg = C / groups, Kg = K / groups, KK = Kg * RS_;
    const int PQ = P * Q, HW = H * W, NHW = N * HW;
    // this work-item's B columns (n, h, w): gy image offset and (h + pt, w + pl), once
    int goff[BCOLS], th[BCOLS], tw[BCOLS];
    for (int t = 0; t < BCOLS; t++) {
        const int j = n0 + tid % NWG + t * THREADS;
        const int img = j / HW, hw = j % HW;
        goff[t] = j < NHW ? (img * K + gi * Kg) * PQ : -1;
        th[t] = hw / W + pt;
        tw[t] = hw % W + pl;
    }
    for (int k0 = 0; k0 < KK; k0 += KWG) {
        for (int idx = tid; idx < MWG * KWG; idx += THREADS) {     // A: w^T, A[c, (k, rs)] = w[k, c, rs]
            const int m = idx / KWG, kk = idx % KWG, mm = m0 + m, kc = k0 + kk;
            As[kk * AL + m] = mm < Cg && kc < KK ? wt[((gi * Kg + kc / RS_) * Cg + mm) * RS_ + kc % RS_] : 0.0f;
        }
        for (int kk = tid / NWG; kk < KWG; kk += BKSTEP) {        // B: gy at the output that tap (r, s) maps here
            const int krs = k0 + kk, k = krs / RS_, r = (krs % RS_) / KS_, s = krs % KS_;
            for (int t = 0; t < BCOLS; t++) {
                const int u = th[t] - r * DH_, v = tw[t] - s * DW_;     // = p*sh, q*sw
                const int p = u / SH_, q = v / SW_;
                const int in = goff[t] >= 0 && krs < KK && u >= 0 && v >= 0 && u == p * SH_ && v == q * SW_
                               && p < P && q < Q;
                Bs[kk * BL + tid % NWG + t * THREADS] = in ? gy[goff[t] + k * PQ + p * Q + q] : 0.0f;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        TILE_MAC(acc, As, Bs, tx, ty)
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int j = 0; j < NWI; j++) {
        const int col = n0 + COL_OF(j, tx);
        if (col >= NHW) continue;
        const int img = col / HW, hw = col % HW;
        __global float* dc = dx + (img * C + gi * Cg) * HW + hw;
        for (int i = 0; i < MWI; i++) {
            const int m = m0 + ROW_OF(i, ty);
            if (m < Cg) dc[m * HW] = acc[i][j];
        }
    }
}

// Global size (ceil(Cg*R*S / NWG) * NDIMC, ceil(Kg / MWG) * MDIMC, g * nseg), local (NDIMC, MDIMC, 1).
// Segment sg of group gi sums j in [sg*seg, (sg+1)*seg) of the N*P*Q reduction (seg a multiple of KWG)
// into out[sg*K*Cg*R*S + (gi*Kg + m)*Cg*R*S + crs]: out is dw itself when nseg == 1, else the parts.
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void conv_igemm_bwd_filt(__global const ACT_T* x, __global const float* gy, __global float* out,
                         const int N, const int C, const int H, const int W, const int K, const int P,
                         const int Q, const int pt, const int pl, const int groups, const int nseg,
                         const int seg) {
    LOCAL_TILES
    const int gi = get_group_id(2) / nseg, sg = get_group_id(2) % nseg;
    const int Cg = C / groups, Kg = K / groups, CRS = Cg * RS_, PQ = P * Q, HW = H * W;
    const int jbeg = sg * seg, jend = min(N * PQ, jbeg + seg);
    const int kk = tid % KWG;        // the slice row (reduction index) this work-item loads, every slice
    for (int k0 = jbeg; k0 < jend; k0 += KWG) {
        const int jr = k0 + kk, live = jr < jend, img = jr / PQ, pq = jr % PQ;
        // A: gy rows (k) along the reduction (n, pq)
        const int goff = (img * K + gi * Kg) * PQ + pq;
        for (int idx = tid; idx < MWG * KWG; idx += THREADS) {
            const int mm = m0 + idx / KWG;
            As[kk * AL + idx / KWG] = live && mm < Kg ? gy[goff + mm * PQ] : 0.0f;
        }
        // B: the columns' transpose, gathered from x: B[(n, pq), crs]
        const int xoff = (img * C + gi * Cg) * HW, hb = (pq / Q) * SH_ - pt, wb = (pq % Q) * SW_ - pl;
        for (int idx = tid; idx < NWG * KWG; idx += THREADS) {
            const int n = idx / KWG, crs = n0 + n, c = crs / RS_, r = (crs % RS_) / KS_, s = crs % KS_;
            const int h = hb + r * DH_, w = wb + s * DW_;
            const int in = live && crs < CRS && h >= 0 && h < H && w >= 0 && w < W;
            Bs[kk * BL + n] = in ? LOAD_ACT(x, xoff + c * HW + h * W + w) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        TILE_MAC(acc, As, Bs, tx, ty)
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global float* o = out + (sg * K + gi * Kg) * CRS;
    for (int i = 0; i < MWI; i++) {
        const int m = m0 + ROW_OF(i, ty);
        if (m >= Kg) continue;
        for (int j = 0; j < NWI; j++) {
            const int col = n0 + COL_OF(j, tx);
            if (col < CRS) o[m * CRS + col] = acc[i][j];
        }
    }
}

// dw[i] = sum_{sg < nseg} part[sg*total + i], in order. Global size (total).
__kernel void conv_igemm_sum(__global const float* part, const int nseg, const int total, __global float* dw) {
    const int i = get_global_id(0);
    if (i >= total) return;
    float s = 0.0f;
    for (int sg = 0; sg < nseg; sg++) s += part[sg * total + i];
    dw[i] = s;
}
