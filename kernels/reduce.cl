// Reductions over axes: ReduceMean (mode 0) and ReduceMax (mode 1, with its argmax).
// x is viewed as (K0, R0, K1, R1, K2, R2) (kd = (K0, K1, K2), rd = (R0, R1, R2); the launcher merges
// axes and pads with 1s): output o = (k0*K1 + k1)*K2 + k2, reduced index r = (r0*R1 + r1)*R2 + r2.
// ReduceMax keeps the FIRST maximum in r order; NaN beats everything (numpy argmax).

#define MODE_MEAN 0
#define MODE_MAX 1

// (v, i) beats (w, j) when the tree merges two partial results: larger, or NaN over a number, ties and
// NaN pairs to the lower index (j == R: an empty partial)
int rd_beats(const REAL v, const int i, const REAL w, const int j) {
    if (isnan(v) || isnan(w)) return isnan(v) && (!isnan(w) || i < j);
    return v > w || (v == w && i < j);
}

// One work-item per output: y[o] = mean or max of its K0..R2 slab; arg[o] = the max's r (mode 1).
__kernel void reduce_nd(__global const REAL* x, __global REAL* y, __global int* arg, const int n,
                        const int4 kd, const int4 rd, const int mode) {
    const int o = get_global_id(0);
    if (o >= n) return;
    const int k2 = o % kd.z, k1 = (o / kd.z) % kd.y, k0 = o / (kd.z * kd.y);
    REAL acc = mode == MODE_MAX ? -INFINITY : (REAL)0;
    int best = 0, r = 0;
    for (int r0 = 0; r0 < rd.x; r0++)
    for (int r1 = 0; r1 < rd.y; r1++) {
        const int row = ((((k0 * rd.x + r0) * kd.y + k1) * rd.y + r1) * kd.z + k2) * rd.z;
        for (int r2 = 0; r2 < rd.z; r2++, r++) {
            const REAL v = x[row + r2];
            if (mode == MODE_MEAN) {
                acc += v;
            } else if (r == 0 || v > acc || (isnan(v) && !isnan(acc))) {   // r ascends: first max
                acc = v;
                best = r;
            }
        }
    }
    if (mode == MODE_MEAN) {
        y[o] = acc / (REAL)(rd.x * rd.y * rd.z);
    } else {
        y[o] = acc;
        arg[o] = best;
    }
}

// x (rows, R) contiguous rows: one work-group (power-of-two size) per row, tree reduction in local
// memory (s: values, si: indices, both one per work-item; deterministic).
__kernel void reduce_rows(__global const REAL* x, __global REAL* y, __global int* arg, const int rows,
                          const int R, const int mode, __local REAL* s, __local int* si) {
    const int p = get_group_id(0), l = get_local_id(0), step = get_local_size(0);
    __global const REAL* xr = x + (p < rows ? p : 0) * R;
    if (mode == MODE_MEAN) {
        REAL acc = (REAL)0;
        for (int k = l; k < R; k += step) acc += xr[k];
        const REAL sum = wg_sum(acc, s);
        if (l == 0 && p < rows) y[p] = sum / (REAL)R;
        return;
    }
    REAL best = -INFINITY;
    int bi = R;                                   // "none yet": loses every tie
    for (int k = l; k < R; k += step) {                  // k ascends: strictly larger (or a first NaN)
        const REAL v = xr[k];
        if (bi == R || v > best || (isnan(v) && !isnan(best))) {
            best = v;
            bi = k;
        }
    }
    s[l] = best;
    si[l] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = step >> 1; h > 0; h >>= 1) {
        if (l < h && rd_beats(s[l + h], si[l + h], s[l], si[l])) {
            s[l] = s[l + h];
            si[l] = si[l + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0 && p < rows) {
        y[p] = s[0];
        arg[p] = si[0];
    }
}

// undoes: y = mean (gx = gy / R) or max (gx = gy at the saved argmax, 0 elsewhere) over the reduced
// axes; one work-item per x element, every element written.
__kernel void reduce_bwd(__global const REAL* gy, __global const int* arg, __global REAL* gx, const int n,
                         const int4 kd, const int4 rd, const int mode) {
    const int i = get_global_id(0);
    if (i >= n) return;
    // NOTE: the merged view has many dims of 1; skipping their divisions (a branch every work-item
    // takes alike) makes the usual (K0, R0) layout one division instead of five.
    int t = i, r2 = 0, k2 = 0, r1 = 0, k1 = 0;
    if (rd.z > 1) { r2 = t % rd.z; t /= rd.z; }
    if (kd.z > 1) { k2 = t % kd.z; t /= kd.z; }
    if (rd.y > 1) { r1 = t % rd.y; t /= rd.y; }
    if (kd.y > 1) { k1 = t % kd.y; t /= kd.y; }
    const int r0 = t % rd.x;
    const int k0 = t / rd.x;
    const int o = (k0 * kd.y + k1) * kd.z + k2;
    if (mode == MODE_MEAN) {
        gx[i] = gy[o] / (REAL)(rd.x * rd.y * rd.z);
    } else {
        gx[i] = arg[o] == (r0 * rd.y + r1) * rd.z + r2 ? gy[o] : (REAL)0;
    }
}
