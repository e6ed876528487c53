// Plumbing, not an op: copies for aliases that cannot share storage (launched by the Plan,
// device_agent/backends/opencl/record.py, and by the ops' launchers through ops/_cl.py's copy), and the
// accumulation of a second gradient contribution into a tensor's gradient (record.py).

__kernel void copy(__global const REAL* x, __global REAL* y, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] = x[i];
}

__kernel void acc_add(__global REAL* y, __global const REAL* x, const int n) {
    const int i = get_global_id(0);
    if (i < n) y[i] += x[i];
}
