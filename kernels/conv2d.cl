// Convolution helpers around the GEMM (kernels/gemm.cl) and the direct depthwise kernels.
// Launchers: device_agent/ops/conv2d.py. Shapes: x (N,C,H,W), w (K,C/g,R,S), y/gy (N,K,P,Q);
// pads (pt, pl) top/left (bottom/right are implied by P, Q); stride (sh, sw); dilation (dh, dw).
// Input pixel of output (p, q) and tap (r, s): h = p*sh + r*dh - pt, w = q*sw + s*dw - pl.
// Every kernel writes each output element exactly once (no atomics): results are deterministic.

#ifndef LWG
#define LWG 64     // work-items per work-group of the reductions (dw_bwd_filter, bias_grad); power of 2.
                   // 1 on CPU devices: one work-item walks the whole reduction, no barriers
#endif
#if LWG & (LWG - 1)
#error "conv2d.cl: LWG must be a power of two"
#endif

// x images [img0, img0+nb) -> cols (nb, C*R*S, ldp), rows ordered (c, r, s) like w.reshape(K, -1);
// zero where the window reads padding. ldp >= P*Q is the row length (P*Q rounded up to 4 floats, so
// GPU GEMMs read the rows as float4). Global size (P*Q, C*R*S, nb); x_off = img0*C*H*W.
__kernel void im2col(__global const float* x, const int x_off, __global float* cols, const int ldp,
                     const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                     const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int pq = get_global_id(0), row = get_global_id(1), img = get_global_id(2);
    if (pq >= P * Q || row >= C * R * S) return;
    const int c = row / (R * S), r = (row / S) % R, s = row % S;
    const int h = (pq / Q) * sh + r * dh - pt, w = (pq % Q) * sw + s * dw - pl;
    cols[(img * C * R * S + row) * ldp + pq] =
        h >= 0 && h < H && w >= 0 && w < W ? x[x_off + ((img * C + c) * H + h) * W + w] : 0.0f;
}

// The transposed layout for dW on CPU-shaped GEMMs (dW = gy @ rows is an NN product there, far faster
// than gy @ cols^T): rows (nb, P*Q, C*R*S), rows[img, pq, (c,r,s)] = cols[img, (c,r,s), pq].
// Global size (C*R*S, P*Q, nb).
__kernel void im2row(__global const float* x, const int x_off, __global float* rows,
                     const int C, const int H, const int W, const int R, const int S, const int P, const int Q,
                     const int sh, const int sw, const int dh, const int dw, const int pt, const int pl) {
    const int row = get_global_id(0), pq = get_global_id(1), img = get_global_id(2);
    if (pq >= P * Q || row >= C * R * S) return;
    const int c = row / (R * S), r = (row / S) % R, s = row % S;
    const int h = (pq / Q) * sh + r * dh - pt, w = (pq % Q) * sw + s * dw - pl;
    rows[(img * P * Q + pq) * C * R * S + row] =
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
    __global const float* col = cols + (img * C + c) * R * S * ldp;
    float acc = 0.0f;
    for (int r = 0; r < R; r++) {
        const int t = h + pt - r * dh;          // = p * sh
        if (t < 0) break;                       // t only falls as r grows
        if (t % sh) continue;
        const int p = t / sh;
        if (p >= P) continue;
        for (int s = 0; s < S; s++) {
            const int u = w + pl - s * dw;      // = q * sw
            if (u < 0) break;
            if (u % sw) continue;
            const int q = u / sw;
            if (q < Q) acc += col[(r * S + s) * ldp + p * Q + q];
        }
    }
    dx[dx_off + (img * C + c) * H * W + hw] = acc;
}

// Depthwise (groups == C, K = C*mult): y[n,k,p,q] = b[k] + sum_{r,s} x[n, k/mult, h, w] * w[k,0,r,s].
// mode bit 0: add the bias; bits 1-2: then an activation (1 relu, 2 relu6, as gemm.cl's epilogue).
// Global size (P*Q, K, N).
__kernel void dw_fwd(__global const float* x, __global const float* wt, __global const float* bias,
                     const int mode, __global float* y,
                     const int C, const int H, const int W, const int mult, const int R, const int S,
                     const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                     const int pt, const int pl) {
    const int pq = get_global_id(0), k = get_global_id(1), n = get_global_id(2);
    if (pq >= P * Q || k >= C * mult) return;
    const int p = pq / Q, q = pq % Q;
    __global const float* xp = x + (n * C + k / mult) * H * W;
    __global const float* wp = wt + k * R * S;
    float acc = 0.0f;
    for (int r = 0; r < R; r++) {
        const int h = p * sh + r * dh - pt;
        if (h < 0 || h >= H) continue;
        for (int s = 0; s < S; s++) {
            const int w = q * sw + s * dw - pl;
            if (w >= 0 && w < W) acc += xp[h * W + w] * wp[r * S + s];
        }
    }
    if (mode & 1) acc += bias[k];
    const int act = mode >> 1;
    if (act == 1) acc = fmax(acc, 0.0f);
    else if (act == 2) {
        if (acc < 0.0f) acc = 0.0f;
        if (acc > 6.0f) acc = 6.0f;
    }
    y[(n * C * mult + k) * P * Q + pq] = acc;
}

// undoes dw_fwd for x: dx[n,c,h,w] = sum_{j<mult, r, s : h = p*sh + r*dh - pt, w = q*sw + s*dw - pl}
//   gy[n, c*mult+j, p, q] * w[c*mult+j, 0, r, s]    (a gather; global size (H*W, C, N))
__kernel void dw_bwd_data(__global const float* gy, __global const float* wt, __global float* dx,
                          const int C, const int H, const int W, const int mult, const int R, const int S,
                          const int P, const int Q, const int sh, const int sw, const int dh, const int dw,
                          const int pt, const int pl) {
    const int hw = get_global_id(0), c = get_global_id(1), n = get_global_id(2);
    if (hw >= H * W || c >= C) return;
    const int h = hw / W, w = hw % W;
    float acc = 0.0f;
    for (int j = 0; j < mult; j++) {
        const int k = c * mult + j;
        __global const float* g = gy + (n * C * mult + k) * P * Q;
        __global const float* wp = wt + k * R * S;
        for (int r = 0; r < R; r++) {
            const int t = h + pt - r * dh;
            if (t < 0) break;
            if (t % sh) continue;
            const int p = t / sh;
            if (p >= P) continue;
            for (int s = 0; s < S; s++) {
                const int u = w + pl - s * dw;
                if (u < 0) break;
                if (u % sw) continue;
                const int q = u / sw;
                if (q < Q) acc += g[p * Q + q] * wp[r * S + s];
            }
        }
    }
    dx[(n * C + c) * H * W + hw] = acc;
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

// undoes dw_fwd for w: dw[k,0,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, k/mult, h, w]. One work-group of
// LWG work-items per weight (k, r, s); work-item l takes the rows (n, p) = l, l+LWG, ... and walks q.
// Global size (K*R*S*LWG), local size (LWG).
__kernel void dw_bwd_filter(__global const float* x, __global const float* gy, __global float* dwt,
                            const int N, const int C, const int H, const int W, const int mult,
                            const int R, const int S, const int P, const int Q, const int sh, const int sw,
                            const int dh, const int dw, const int pt, const int pl) {
    __local float part[LWG];
    const int widx = get_group_id(0), lid = get_local_id(0);
    const int k = widx / (R * S), r = (widx / S) % R, s = widx % S, c = k / mult, K = C * mult;
    // the q range whose input column w = q*sw + s*dw - pl lies inside [0, W)
    const int off = s * dw - pl;
    const int q0 = off >= 0 ? 0 : (-off + sw - 1) / sw;
    const int q1 = min(Q, (W - 1 - off) / sw + 1);     // W - 1 - off >= 0 unless no column is inside
    float acc = 0.0f;
    for (int np = lid; np < N * P; np += LWG) {
        const int n = np / P, p = np % P;
        const int h = p * sh + r * dh - pt;
        if (h < 0 || h >= H || W - 1 - off < 0) continue;
        __global const float* g = gy + ((n * K + k) * P + p) * Q;
        __global const float* xr = x + ((n * C + c) * H + h) * W + off;
        for (int q = q0; q < q1; q++) acc += g[q] * xr[q * sw];
    }
    acc = group_sum(acc, part);
    if (lid == 0) dwt[widx] = acc;
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
