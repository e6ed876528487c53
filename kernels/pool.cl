// Pooling: MaxPool, AveragePool (torch max_pool2d / avg_pool2d semantics, asymmetric pads,
// ceil mode, dilation), GlobalAveragePool.
//   x (N,C,H,W) -> y (N,C,OH,OW); NC = N*C planes, one work-item per output (forward) or per input
//   pixel (backward: a gather over the windows that contain it, no atomics).
// Window (oh, ow) reads rows oh*SH - PT + kh*DH (kh < KH) and cols ow*SW - PL + kw*DW (kw < KW);
// taps outside the input are padding (-inf for max, 0 for average).

// First window index o with o*S - P + EK - 1 >= i (the first window whose span reaches pixel i;
// EK = the effective kernel D*(K-1) + 1).
int first_window(const int i, const int S, const int P, const int EK) {
    const int t = i + P - EK + 1;
    return t <= 0 ? 0 : (t + S - 1) / S;
}

// The tap of window o that reads pixel i, or -1 (i between two dilated taps, or outside the span).
int tap_of(const int i, const int o, const int S, const int D, const int P, const int K) {
    const int off = i + P - o * S;
    return (off >= 0 && off % D == 0 && off / D < K) ? off / D : -1;
}

// y = the max over the window; arg = its tap (row-major, kh*KW + kw) chosen like numpy argmax over
// the -inf-padded window: the FIRST maximum, and NaN beats everything (first NaN).
__kernel void maxpool_fwd(__global const REAL* x, __global REAL* y, __global int* arg, const int NC,
                          const int H, const int W, const int OH, const int OW, const int KH, const int KW,
                          const int SH, const int SW, const int DH, const int DW, const int PT, const int PL) {
    const int i = get_global_id(0);
    if (i >= NC * OH * OW) return;
    const int ow = i % OW, oh = (i / OW) % OH, p = i / (OW * OH);
    __global const REAL* xp = x + p * H * W;
    const int h0 = oh * SH - PT, w0 = ow * SW - PL;
    REAL best = -INFINITY;
    int tap = 0;
    for (int kh = 0; kh < KH; kh++) {
        const int h = h0 + kh * DH;
        for (int kw = 0; kw < KW; kw++) {
            const int w = w0 + kw * DW;
            const REAL v = (h >= 0 && h < H && w >= 0 && w < W) ? xp[h * W + w] : -INFINITY;
            if (v > best || (isnan(v) && !isnan(best))) {
                best = v;
                tap = kh * KW + kw;
            }
        }
    }
    y[i] = best;
    arg[i] = tap;
}

// undoes: y = window[arg]: each input pixel sums gy over the windows whose argmax tap is it.
__kernel void maxpool_bwd(__global const REAL* gy, __global const int* arg, __global REAL* gx, const int NC,
                          const int H, const int W, const int OH, const int OW, const int KH, const int KW,
                          const int SH, const int SW, const int DH, const int DW, const int PT, const int PL) {
    const int i = get_global_id(0);
    if (i >= NC * H * W) return;
    const int w = i % W, h = (i / W) % H, p = i / (W * H);
    const int oh1 = min(OH - 1, (h + PT) / SH), ow1 = min(OW - 1, (w + PL) / SW);
    const int ow0 = first_window(w, SW, PL, DW * (KW - 1) + 1);
    REAL acc = (REAL)0;
    for (int oh = first_window(h, SH, PT, DH * (KH - 1) + 1); oh <= oh1; oh++) {
        const int th = tap_of(h, oh, SH, DH, PT, KH);
        if (th < 0) continue;
        const int row = (p * OH + oh) * OW;
        for (int ow = ow0; ow <= ow1; ow++) {
            const int tw = tap_of(w, ow, SW, DW, PL, KW);
            if (tw >= 0 && arg[row + ow] == th * KW + tw) acc += gy[row + ow];
        }
    }
    gx[i] = acc;
}

// CPU-shaped (PoCL) forms of the two max-pool kernels. Per element, the kernels above spend most of
// their time on integer divisions (index decomposition, window search), branches and, backward, the
// gather's window search per input pixel; a CPU work-item takes a whole row or plane instead.
// maxpool_fwd_rows: one work-item per output row (plane p, row oh), 8 outputs at a time as vectors
// (8 independent select chains instead of one branchy scan per output: 4x faster on PoCL). Each output
// sees its taps in maxpool_fwd's order with its tie and NaN rule: the same y and arg. A tap outside the
// input reads -inf, which never replaces `best` (it starts at -inf), as maxpool_fwd's padding.
// v != v is isnan(v) without PoCL's out-of-line builtin call. (REAL is float: the vectors are float8.)
#define TAPV(j) ((ow0 + j < OW && (ow0 + j) * SW + off >= 0 && (ow0 + j) * SW + off < W) \
                 ? xr[(ow0 + j) * SW + off] : -INFINITY)
__kernel void maxpool_fwd_rows(__global const REAL* x, __global REAL* y, __global int* arg, const int NC,
                              const int H, const int W, const int OH, const int OW, const int KH,
                              const int KW, const int SH, const int SW, const int DH, const int DW,
                              const int PT, const int PL) {
    const int r = get_global_id(0);
    if (r >= NC * OH) return;
    const int oh = r % OH, p = r / OH;
    __global const REAL* xp = x + p * H * W;
    const int h0 = oh * SH - PT;
    for (int ow0 = 0; ow0 < OW; ow0 += 8) {
        float8 best = (float8)(-INFINITY);
        int8 tap = (int8)(0);
        for (int kh = 0; kh < KH; kh++) {
            const int h = h0 + kh * DH;
            if (h < 0 || h >= H) continue;
            __global const REAL* xr = xp + h * W;
            for (int kw = 0; kw < KW; kw++) {
                const int off = kw * DW - PL;
                const float8 v = (float8)(TAPV(0), TAPV(1), TAPV(2), TAPV(3), TAPV(4), TAPV(5), TAPV(6), TAPV(7));
                const int8 take = (v > best) | ((v != v) & (best == best));
                best = take ? v : best;
                tap = take ? (int8)(kh * KW + kw) : tap;
            }
        }
        const float* bl = (const float*)&best;
        const int* tl = (const int*)&tap;
        for (int j = 0; j < 8 && ow0 + j < OW; j++) {
            y[r * OW + ow0 + j] = bl[j];
            arg[r * OW + ow0 + j] = tl[j];
        }
    }
}

// maxpool_bwd_planes: one work-item per plane: gx = 0, then each output's gy added to the input pixel
// its argmax tap names (a tap in the padding adds nothing), outputs in raster order. Every pixel thus
// receives its windows' gradients in the order maxpool_bwd sums them (oh, then ow ascending, from
// 0): the same bits, deterministic, no atomics.
__kernel void maxpool_bwd_planes(__global const REAL* gy, __global const int* arg, __global REAL* gx,
                                 const int NC, const int H, const int W, const int OH, const int OW,
                                 const int KH, const int KW, const int SH, const int SW, const int DH,
                                 const int DW, const int PT, const int PL) {
    const int p = get_global_id(0);
    if (p >= NC) return;
    __global REAL* gp = gx + p * H * W;
    for (int i = 0; i < H * W; i++) gp[i] = (REAL)0;
    __global const REAL* g = gy + p * OH * OW;
    __global const int* a = arg + p * OH * OW;
    for (int oh = 0; oh < OH; oh++) {
        const int h0 = oh * SH - PT;
        for (int ow = 0; ow < OW; ow++) {
            const int t = a[oh * OW + ow], th = t / KW;
            const int h = h0 + th * DH, w = ow * SW - PL + (t - th * KW) * DW;
            if (h >= 0 && h < H && w >= 0 && w < W) gp[h * W + w] += g[oh * OW + ow];
        }
    }
}

// The number of taps avg_pool2d divides by along one axis, for window o (taps s + k*D, k < K,
// s = o*S - P0):
//   count_include_pad: the taps inside the padded input [-P0, N + P1)
//   else:              the taps inside the input [0, N)
// (s < N always: the output-size rule drops windows starting past the input.)
int avg_count(const int o, const int S, const int K, const int D, const int P0, const int P1, const int N,
              const int cip) {
    const int s = o * S - P0;
    const int lo = (cip || s >= 0) ? 0 : (-s + D - 1) / D;       // first tap at or after 0 (or -P0)
    const int hi = ((cip ? N + P1 : N) - s + D - 1) / D;           // taps before the end
    return min(K, hi) - lo;
}

// y = Σ_window x / divisor
__kernel void avgpool_fwd(__global const REAL* x, __global REAL* y, const int NC,
                          const int H, const int W, const int OH, const int OW, const int KH, const int KW,
                          const int SH, const int SW, const int DH, const int DW, const int PT, const int PL,
                          const int PB, const int PR, const int cip) {
    const int i = get_global_id(0);
    if (i >= NC * OH * OW) return;
    const int ow = i % OW, oh = (i / OW) % OH, p = i / (OW * OH);
    __global const REAL* xp = x + p * H * W;
    const int h0 = oh * SH - PT, w0 = ow * SW - PL;
    REAL acc = (REAL)0;
    for (int kh = 0; kh < KH; kh++) {
        const int h = h0 + kh * DH;
        if (h < 0 || h >= H) continue;
        for (int kw = 0; kw < KW; kw++) {
            const int w = w0 + kw * DW;
            if (w >= 0 && w < W) acc += xp[h * W + w];
        }
    }
    const int div = avg_count(oh, SH, KH, DH, PT, PB, H, cip) * avg_count(ow, SW, KW, DW, PL, PR, W, cip);
    y[i] = acc / (REAL)div;
}

// undoes: y = Σ_window x / divisor: each input pixel sums gy / divisor over the windows with a tap on it.
__kernel void avgpool_bwd(__global const REAL* gy, __global REAL* gx, const int NC,
                          const int H, const int W, const int OH, const int OW, const int KH, const int KW,
                          const int SH, const int SW, const int DH, const int DW, const int PT, const int PL,
                          const int PB, const int PR, const int cip) {
    const int i = get_global_id(0);
    if (i >= NC * H * W) return;
    const int w = i % W, h = (i / W) % H, p = i / (W * H);
    const int oh1 = min(OH - 1, (h + PT) / SH), ow1 = min(OW - 1, (w + PL) / SW);
    const int ow0 = first_window(w, SW, PL, DW * (KW - 1) + 1);
    REAL acc = (REAL)0;
    for (int oh = first_window(h, SH, PT, DH * (KH - 1) + 1); oh <= oh1; oh++) {
        if (tap_of(h, oh, SH, DH, PT, KH) < 0) continue;
        const int dh = avg_count(oh, SH, KH, DH, PT, PB, H, cip);
        const int row = (p * OH + oh) * OW;
        for (int ow = ow0; ow <= ow1; ow++)
            if (tap_of(w, ow, SW, DW, PL, KW) >= 0)
                acc += gy[row + ow] / (REAL)(dh * avg_count(ow, SW, KW, DW, PL, PR, W, cip));
    }
    gx[i] = acc;
}

// y (N,C,1,1) = mean over H*W = L: one work-group (power-of-two size) per plane, tree sum.
__kernel void gap_fwd(__global const REAL* x, __global REAL* y, const int NC, const int L,
                      __local REAL* s) {
    const int p = get_group_id(0), l = get_local_id(0);
    REAL acc = (REAL)0;
    for (int k = l; k < L; k += get_local_size(0)) acc += x[p * L + k];
    const REAL sum = wg_sum(acc, s);
    if (l == 0 && p < NC) y[p] = sum / (REAL)L;
}

// undoes: y = mean over (H, W): dx = gy / (H*W) broadcast over the plane
__kernel void gap_bwd(__global const REAL* gy, __global REAL* gx, const int n, const int L) {
    const int i = get_global_id(0);
    if (i < n) gx[i] = gy[i / L] / (REAL)L;
}
