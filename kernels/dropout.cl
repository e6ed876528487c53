// Dropout forward and backward (device_agent/ops/dropout.py). x, y, g* are flat float arrays of n elements.

// The mask of device_agent/ops/dropout.py, bit for bit: u[i] = pcg(seed ^ pcg(i)) >> 8 (24 bits),
// keep iff u >= thresh, where thresh (an integer, from the host) is the first 24-bit value whose
// float u * 2^-24 is >= ratio under the reference's comparison.
uint pcg_hash(uint v) {
    const uint state = v * 747796405u + 2891336453u;
    const uint word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// y = x * keep / scale (scale = 1 - ratio); state[0] <- seed, for the backward
__kernel void dropout_fwd(__global const REAL* x, __global REAL* y, __global uint* state, const int n,
                          const uint thresh, const REAL scale, const uint seed) {
    const int i = get_global_id(0);
    if (i == 0) state[0] = seed;
    if (i >= n) return;
    const uint u = pcg_hash(seed ^ pcg_hash((uint)i)) >> 8;
    y[i] = (x[i] * (REAL)(u >= thresh)) / scale;
}

// undoes: y = x * keep / scale, the mask redrawn from the seed the forward stored
__kernel void dropout_bwd(__global const REAL* gy, __global REAL* gx, __global const uint* state,
                          const int n, const uint thresh, const REAL scale) {
    const int i = get_global_id(0);
    if (i >= n) return;
    const uint u = pcg_hash(state[0] ^ pcg_hash((uint)i)) >> 8;
    gx[i] = (gy[i] * (REAL)(u >= thresh)) / scale;
}
