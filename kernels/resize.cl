// ResizeNearest: y (NC, OH, OW) copies x (NC, H, W) through per-axis index tables computed by the
// launcher (device_agent/ops/resize.py: ONNX Resize nearest, onnxruntime's float32 maths).
//   forward  tab = [src_h (OH) | src_w (OW)]          y[p, i, j] = x[p, src_h[i], src_w[j]]
//   backward tab = [beg_h (H+1) | beg_w (W+1)]        outputs copying input row h: [beg_h[h], beg_h[h+1])

__kernel void resize_nearest_fwd(__global const REAL* x, __global REAL* y, __global const int* tab,
                                 const int NC, const int H, const int W, const int OH, const int OW) {
    const int i = get_global_id(0);
    if (i >= NC * OH * OW) return;
    const int ow = i % OW, oh = (i / OW) % OH, p = i / (OW * OH);
    y[i] = x[(p * H + tab[oh]) * W + tab[OH + ow]];
}

// undoes: y = x[src_h][:, src_w]: each input pixel sums gy over the outputs that copied it (a gather
// over two runs; no atomics, every element written).
__kernel void resize_nearest_bwd(__global const REAL* gy, __global REAL* gx, __global const int* tab,
                                 const int NC, const int H, const int W, const int OH, const int OW) {
    const int i = get_global_id(0);
    if (i >= NC * H * W) return;
    const int w = i % W, h = (i / W) % H, p = i / (W * H);
    const int w0 = tab[H + 1 + w], w1 = tab[H + 1 + w + 1];
    REAL acc = (REAL)0;
    for (int oh = tab[h]; oh < tab[h + 1]; oh++) {
        const int row = (p * OH + oh) * OW;
        for (int ow = w0; ow < w1; ow++) acc += gy[row + ow];
    }
    gx[i] = acc;
}
