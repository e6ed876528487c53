// Shared definitions included by every THOMAS kernel file (OpenCL C 1.2).
#ifndef REAL
#define REAL float  // storage and accumulation type; the only one the agent builds today
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
