// Pointwise kernels: activations forward/backward, binary ops with broadcasting, dropout, utilities.
// x, y, g* are flat float arrays of n elements.

__kernel void relu_fwd(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = fmax(x[i], (REAL)0);
}

// undoes: y = max(x, 0); reads y (saved) instead of x
__kernel void relu_bwd(__global const REAL* y, __global const REAL* gy, __global REAL* gx, const int n) {
    const int i = get_global_id(0);
    if (i < n) gx[i] = y[i] > (REAL)0 ? gy[i] : (REAL)0;
}
