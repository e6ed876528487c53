// Shared definitions included by every THOMAS kernel file (OpenCL C 1.2).
#ifndef REAL
#define REAL float  // storage and accumulation type; the only one the agent builds today
#endif

// Activation storage (dtype "mixed", issue 18 item 1; docs/BACKENDS.md "Half-precision storage").
// A kernel reads and writes ACTIVATIONS (forward values, never gradients or weights) through these, and
// declares their pointers `__global ACT_T*` / `__global const ACT_T*`. Built with -DACT_HALF each element is
// a 16-bit half in memory (vload_half / vstore_half: core OpenCL 1.2, no cl_khr_fp16; vstore_half rounds to
// nearest even), converted to and from float in registers: arithmetic stays float. Without it (the default)
// they are plain REAL loads and stores, so a kernel written with them builds unchanged in float32.
// i counts elements, not bytes; v is a float expression.
// LOAD_ACT4 / STORE_ACT4: four values at p + 4 i (float4 / vload_half4 alignment).
#ifdef ACT_HALF
#define ACT_T half
#define LOAD_ACT(p, i) vload_half((i), (p))
#define STORE_ACT(p, i, v) vstore_half((v), (i), (p))
#define LOAD_ACT4(p, i) vload_half4((i), (p))
#define STORE_ACT4(p, i, v) vstore_half4((v), (i), (p))
#else
#define ACT_T REAL
#define LOAD_ACT(p, i) ((p)[(i)])
#define STORE_ACT(p, i, v) ((p)[(i)] = (v))
#define LOAD_ACT4(p, i) vload4((i), (p))
#define STORE_ACT4(p, i, v) vstore4((v), (i), (p))
#endif

// Sum of v over the work-group (its size a power of two, s one REAL per work-item); every work-item
// gets the total, in a fixed order (deterministic). s may be reused once this returns.
REAL wg_sum(REAL v, __local REAL* s) {
    const int l = get_local_id(0);
    s[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = (int)get_local_size(0) >> 1; h > 0; h >>= 1) {
        if (l < h) s[l] += s[l + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const REAL r = s[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
