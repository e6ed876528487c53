// LRN across channels (ONNX window): x (N,C,H,W) viewed as (N, C, L), L = H*W; one work-item per
// element.   a = (size-1)/2 channels before, b = size/2 after (a + b = size - 1)
//   S[c] = Σ_{c' = c-a .. c+b, 0 <= c' < C} x[c']²,   d[c] = bias + alpha/size · S[c],   y = x · d^-beta
// `kas` = alpha/size (from the host, in float32 as the reference rounds it).

// y = x * d^-beta; scale <- d (state, for the backward)
__kernel void lrn_fwd(__global const REAL* x, __global REAL* y, __global REAL* scale, const int n,
                      const int C, const int L, const int a, const int b, const REAL kas,
                      const REAL beta, const REAL bias) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = (i / L) % C;
    __global const REAL* col = x + (i - c * L);          // channel 0 of this (n, l)
    REAL s = (REAL)0;
    for (int k = max(c - a, 0); k <= min(c + b, C - 1); k++) {
        const REAL v = col[k * L];
        s += v * v;
    }
    const REAL d = s * kas + bias;
    scale[i] = d;
    y[i] = x[i] * pow(d, -beta);
}

// undoes: y[c] = x[c] d[c]^-beta, d[c] = bias + alpha/size Σ_{c' in win(c)} x[c']²:
//   dx[j] = gy[j] d[j]^-beta - 2 beta alpha/size · x[j] · Σ_{c: j in win(c)} gy[c] x[c] d[c]^-beta / d[c]
//   j in win(c) <=> c in j-b .. j+a   (the transposed window); k2 = 2 beta alpha/size
__kernel void lrn_bwd(__global const REAL* x, __global const REAL* gy, __global const REAL* scale,
                      __global REAL* gx, const int n, const int C, const int L, const int a, const int b,
                      const REAL beta, const REAL k2) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int j = (i / L) % C;
    const int base = i - j * L;
    REAL t = (REAL)0;
    for (int c = max(j - b, 0); c <= min(j + a, C - 1); c++) {
        const int e = base + c * L;
        const REAL d = scale[e];
        t += gy[e] * x[e] * pow(d, -beta) / d;
    }
    gx[i] = gy[i] * pow(scale[i], -beta) - k2 * x[i] * t;
}
