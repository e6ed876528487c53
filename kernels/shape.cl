// Shape ops that move data: Concat and Slice (strided 2-D copies), Pad and Transpose (gathers).
// Flatten/Reshape are aliases and launch nothing. Pad's shapes are padded to rank 4 by the launchers
// (int4 xd, yd, ...), Transpose's to rank 6 (int8).

// dst[dst_off + r*dst_ld + c] = src[src_off + r*src_ld + c] for r < rows, c < cols.
// Concat forward: one launch per input (src = x_i, dst = y at that input's column offset);
// backward: the same copy the other way (src = gy, dst = gx_i).
__kernel void copy2d(__global const REAL* src, __global REAL* dst, const int rows, const int cols,
                     const int src_ld, const int dst_ld, const int src_off, const int dst_off) {
    const int i = get_global_id(0);
    if (i >= rows * cols) return;
    const int r = i / cols, c = i % cols;
    dst[dst_off + r * dst_ld + c] = src[src_off + r * src_ld + c];
}

#define PAD_CONSTANT 0
#define PAD_REFLECT 1
#define PAD_EDGE 2

// y (yd) = np.pad(x (xd), (lo, yd - xd - lo), mode): each output element copies the source
// element of np.pad's index map (reflect: pads < d, one reflection), or `value` (constant mode).
int pad_src(int o, const int d, const int lo, const int mode) {
    int s = o - lo;
    if (mode == PAD_REFLECT) {
        if (s < 0) s = -s;
        if (s >= d) s = 2 * (d - 1) - s;
    } else if (mode == PAD_EDGE) {
        s = clamp(s, 0, d - 1);
    } else if (s < 0 || s >= d) {
        s = -1;
    }
    return s;
}

__kernel void pad_fwd(__global const REAL* x, __global REAL* y, const int n, const int4 xd, const int4 yd,
                      const int4 lo, const int mode, const REAL value) {
    const int i = get_global_id(0);
    if (i >= n) return;
    int r = i;
    const int o3 = r % yd.w; r /= yd.w;
    const int o2 = r % yd.z; r /= yd.z;
    const int o1 = r % yd.y;
    const int o0 = r / yd.y;
    const int s0 = pad_src(o0, xd.x, lo.x, mode), s1 = pad_src(o1, xd.y, lo.y, mode);
    const int s2 = pad_src(o2, xd.z, lo.z, mode), s3 = pad_src(o3, xd.w, lo.w, mode);
    y[i] = (s0 < 0 || s1 < 0 || s2 < 0 || s3 < 0) ? value : x[((s0 * xd.y + s1) * xd.z + s2) * xd.w + s3];
}

// The output positions along one axis (length lo + d + hi) that copy source index s, as up to 3
// half-open ranges [st, en): the inverse of pad_src. Returns how many.
int pad_ranges(const int s, const int d, const int lo, const int hi, const int mode, int* st, int* en) {
    if (mode == PAD_EDGE) {            // s = clamp(o - lo): the ends own the whole padding
        st[0] = s == 0 ? 0 : s + lo;
        en[0] = s == d - 1 ? lo + d + hi : s + lo + 1;
        return 1;
    }
    st[0] = s + lo;                    // the copy in the middle block
    en[0] = s + lo + 1;
    int k = 1;
    if (mode == PAD_REFLECT) {
        if (s >= 1 && s <= lo) {       // left mirror: o = lo - s
            st[k] = lo - s; en[k] = lo - s + 1; k++;
        }
        if (s <= d - 2 && s >= d - 1 - hi) {   // right mirror: o = lo + 2(d-1) - s
            st[k] = lo + 2 * (d - 1) - s; en[k] = st[k] + 1; k++;
        }
    }
    return k;
}

// undoes: y = np.pad(x, ...): every input element sums the gradients of the output positions
// that copied it (a gather over the inverse index maps; no atomics).
__kernel void pad_bwd(__global const REAL* gy, __global REAL* gx, const int n, const int4 xd, const int4 yd,
                      const int4 lo, const int mode) {
    const int i = get_global_id(0);
    if (i >= n) return;
    int r = i;
    const int c3 = r % xd.w; r /= xd.w;
    const int c2 = r % xd.z; r /= xd.z;
    const int c1 = r % xd.y;
    const int c0 = r / xd.y;
    int st0[3], en0[3], st1[3], en1[3], st2[3], en2[3], st3[3], en3[3];
    const int n0 = pad_ranges(c0, xd.x, lo.x, yd.x - xd.x - lo.x, mode, st0, en0);
    const int n1 = pad_ranges(c1, xd.y, lo.y, yd.y - xd.y - lo.y, mode, st1, en1);
    const int n2 = pad_ranges(c2, xd.z, lo.z, yd.z - xd.z - lo.z, mode, st2, en2);
    const int n3 = pad_ranges(c3, xd.w, lo.w, yd.w - xd.w - lo.w, mode, st3, en3);
    REAL acc = (REAL)0;
    for (int a0 = 0; a0 < n0; a0++)
    for (int o0 = st0[a0]; o0 < en0[a0]; o0++)
    for (int a1 = 0; a1 < n1; a1++)
    for (int o1 = st1[a1]; o1 < en1[a1]; o1++)
    for (int a2 = 0; a2 < n2; a2++)
    for (int o2 = st2[a2]; o2 < en2[a2]; o2++) {
        const int row = ((o0 * yd.y + o1) * yd.z + o2) * yd.w;
        for (int a3 = 0; a3 < n3; a3++)
        for (int o3 = st3[a3]; o3 < en3[a3]; o3++) acc += gy[row + o3];
    }
    gx[i] = acc;
}

// undoes: y = x[.., start:end, ..]: gx viewed as (outer, D, inner) gets gy where start <= d < start + L
// and 0 elsewhere (every element written).
__kernel void slice_bwd(__global const REAL* gy, __global REAL* gx, const int n, const int D, const int L,
                        const int inner, const int start) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const int c = i % inner, d = (i / inner) % D, o = i / (inner * D);
    gx[i] = (d >= start && d < start + L) ? gy[(o * L + d - start) * inner + c] : (REAL)0;
}

// y = transpose(x): y (yd.s0..yd.s5, contiguous) gathers x, each of y's axes walking x with stride
// xs.sK (the launcher merges adjacent axes and pads to rank 6 with dims of 1, stride 0).
__kernel void transpose_nd(__global const REAL* x, __global REAL* y, const int n, const int8 yd,
                           const int8 xs) {
    const int i = get_global_id(0);
    if (i >= n) return;
    // the leading padding dims are 1: their divisions are skipped (a branch every work-item takes alike)
    int r = i, src = (r % yd.s5) * xs.s5;
    r /= yd.s5;
    if (yd.s4 > 1) { src += (r % yd.s4) * xs.s4; r /= yd.s4; }
    if (yd.s3 > 1) { src += (r % yd.s3) * xs.s3; r /= yd.s3; }
    if (yd.s2 > 1) { src += (r % yd.s2) * xs.s2; r /= yd.s2; }
    if (yd.s1 > 1) { src += (r % yd.s1) * xs.s1; r /= yd.s1; }
    src += r * xs.s0;
    y[i] = x[src];
}
