// Dropout forward and backward (device_agent/ops/dropout.py). x, y, g* are flat float arrays of n elements.

// Bit-identical to numpy on every device: the mask is integer-only and the scale is applied by
// multiplications only (correctly rounded in OpenCL; x / y may be 2.5 ulp off, and NVIDIA's is).
// No a * b + c anywhere, and contraction is off besides, so no compiler can fuse into an FMA.
#pragma OPENCL FP_CONTRACT OFF

// The mask of device_agent/ops/dropout.py (keep_mask), bit for bit: u[i] = pcg(seed ^ pcg(i)) >> 8
// (24 bits), keep iff u >= thresh, where thresh (an integer, from the host: keep_threshold) is the
// first 24-bit value whose float u * 2^-24 is >= ratio under the reference's comparison.
uint pcg_hash(uint v) {
    const uint state = v * 747796405u + 2891336453u;
    const uint word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// y = (x * keep) * scale, scale = float32(1 / (1 - ratio)) from the host (keep_scale); state[0] <- seed,
// for the backward
__kernel void dropout_fwd(__global const REAL* x, __global REAL* y, __global uint* state, const int n,
                          const uint thresh, const REAL scale, const uint seed) {
    const int i = get_global_id(0);
    if (i == 0) state[0] = seed;
    if (i >= n) return;
    const uint u = pcg_hash(seed ^ pcg_hash((uint)i)) >> 8;
    const REAL kept = x[i] * (REAL)(u >= thresh);       // exact: x or +-0
    y[i] = kept * scale;
}

// undoes: y = (x * keep) * scale, the mask redrawn from the seed the forward stored
__kernel void dropout_bwd(__global const REAL* gy, __global REAL* gx, __global const uint* state,
                          const int n, const uint thresh, const REAL scale) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const uint u = pcg_hash(state[0] ^ pcg_hash((uint)i)) >> 8;
    const REAL kept = gy[i] * (REAL)(u >= thresh);
    gx[i] = kept * scale;
}
