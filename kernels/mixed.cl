// dtype "mixed" (launched by device_agent/backends/opencl/mixed.py): a tensor a backward reads is kept as halves from its producer to that backward
// (pack_half right after the producer, round to nearest even) and expanded to float right before the
// first backward that reads it (unpack_half); arithmetic stays float. vload_half / vstore_half are core
// OpenCL 1.2 (no cl_khr_fp16). Four values per work-item (global size ceil(n / 4)): the vector forms
// ran 13x faster than one value per work-item on PoCL (a 154 MB tensor: 17 vs 221 ms); the last
// work-item finishes a tail of n % 4 one by one. Buffers are whole or sub-buffers at the device's
// base-address alignment, so float4 / 8-byte half4 accesses are aligned.
__kernel void pack_half(__global const REAL* x, __global half* y, const int n) {
    const int i = get_global_id(0);
    if (4 * i + 3 < n) {
        vstore_half4(vload4(i, x), i, y);
    } else {
        for (int k = 4 * i; k < n; ++k) vstore_half(x[k], k, y);
    }
}

__kernel void unpack_half(__global const half* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (4 * i + 3 < n) {
        vstore4(vload_half4(i, x), i, y);
    } else {
        for (int k = 4 * i; k < n; ++k) y[k] = vload_half(k, x);
    }
}
