// Optimizer updates over flat buffers of n parameters (torch.optim semantics), and global-norm
// gradient clipping (torch.nn.utils.clip_grad_norm_) without a host round trip.
//   p (n) parameters, updated in place; g (n) gradients, read only; state buffers (n) in place.
//   scale (1): the clip factor clip_scale wrote; use_scale == 0: gradients taken as they are.
//   lr and step are per-step (dynamic) arguments; step counts from 1.

REAL optim_grad(__global const REAL* g, __global const REAL* scale, const int use_scale, const int i) {
    return use_scale ? g[i] * scale[0] : g[i];
}

// FedProx (Li et al. 2020): the gradient of (mu/2)*||p - p0||^2 added in place, g += mu*(p - p0),
// before clipping reads g (as adding the term to the loss before backward does in torch).
//   p0 (n): the anchor, the trainable parameters as the run started. Every backward overwrites g.
__kernel void prox_grad(__global REAL* g, __global const REAL* p, __global const REAL* p0, const int n,
                        const REAL mu) {
    const int i = get_global_id(0);
    if (i >= n) return;
    g[i] = g[i] + mu * (p[i] - p0[i]);
}

// torch SGD: d = g + wd*p; momentum: buf = d on step 1, else buf = momentum*buf + (1-dampening)*d;
// d = nesterov ? d + momentum*buf : buf; p -= lr*d.   omd = 1 - dampening.
__kernel void sgd_step(__global REAL* p, __global const REAL* g, __global REAL* buf,
                       __global const REAL* scale, const int n, const int use_scale, const REAL momentum,
                       const REAL omd, const REAL wd, const int nesterov, const REAL lr, const int step) {
    const int i = get_global_id(0);
    if (i >= n) return;
    REAL d = optim_grad(g, scale, use_scale, i);
    const REAL pi = p[i];
    if (wd != (REAL)0) d = d + wd * pi;
    if (momentum != (REAL)0) {
        const REAL bv = step <= 1 ? d : buf[i] * momentum + omd * d;
        buf[i] = bv;
        d = nesterov ? d + momentum * bv : bv;
    }
    p[i] = pi + (-lr) * d;
}

// torch Adam / AdamW (amsgrad off): m = lerp(m, d, 1-beta1), v = beta2*v + (1-beta2)*d*d,
//   p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps),  bc_k = 1 - beta_k^step
// Adam: d = g + wd*p (L2); AdamW: p *= 1 - lr*wd first (decoupled).
// w1 = 1-beta1, omb2 = 1-beta2; lb_k = log(beta_k) (from the host in double), so that
// bc_k = -expm1(step*lb_k) keeps full float precision where 1 - beta2^step would cancel.
#define ADAM(NAME, DECOUPLED)                                                                       \
__kernel void NAME(__global REAL* p, __global const REAL* g, __global REAL* m, __global REAL* v,           \
                   __global const REAL* scale, const int n, const int use_scale, const REAL w1,           \
                   const REAL beta2, const REAL omb2, const REAL lb1, const REAL lb2, const REAL eps,     \
                   const REAL wd, const REAL lr, const int step) {                                        \
    const int i = get_global_id(0);                                                                      \
    if (i >= n) return;                                                                                  \
    REAL d = optim_grad(g, scale, use_scale, i);                                                         \
    REAL pi = p[i];                                                                                      \
    if (wd != (REAL)0) {                                                                                 \
        if (DECOUPLED) pi = pi * ((REAL)1 - lr * wd);                                                    \
        else d = d + wd * pi;                                                                            \
    }                                                                                                    \
    const REAL mo = m[i];                                                                                \
    const REAL mi = w1 < (REAL)0.5 ? mo + w1 * (d - mo) : d - (d - mo) * ((REAL)1 - w1); /* torch lerp */ \
    const REAL vi = v[i] * beta2 + omb2 * d * d;                                                         \
    m[i] = mi;                                                                                           \
    v[i] = vi;                                                                                           \
    const REAL bc1 = -expm1((REAL)step * lb1), bc2 = -expm1((REAL)step * lb2);                           \
    const REAL denom = sqrt(vi) / sqrt(bc2) + eps;                                                       \
    p[i] = pi + (-(lr / bc1)) * (mi / denom);                                                            \
}
ADAM(adam_step, 0)
ADAM(adamw_step, 1)

// Clipping, pass 1: partial[off + group] = Σ g² over this group's share (grid-stride loop, then a
// tree sum in local memory). One launch per gradient segment, each with its own partial slots.
__kernel void grad_sq_sum(__global const REAL* g, __global REAL* partial, const int n, const int off,
                          __local REAL* s) {
    const int l = get_local_id(0);
    REAL acc = (REAL)0;
    for (int i = get_global_id(0); i < n; i += get_global_size(0)) acc += g[i] * g[i];
    const REAL sum = wg_sum(acc, s);
    if (l == 0) partial[off + get_group_id(0)] = sum;
}

// Clipping, pass 2 (one work-group): norm = sqrt(Σ partial);
// scale[0] = min(max_norm / (norm + 1e-6), 1)  (NaN propagates, as torch.clamp does);
// want_norm: scale[1] = norm (the total gradient norm before clipping, for the step's report)
__kernel void clip_scale(__global const REAL* partial, __global REAL* scale, const int G, const REAL max_norm,
                         const int want_norm, __local REAL* s) {
    const int l = get_local_id(0);
    REAL acc = (REAL)0;
    for (int i = l; i < G; i += get_local_size(0)) acc += partial[i];
    const REAL sum = wg_sum(acc, s);
    if (l == 0) {
        const REAL norm = sqrt(sum);
        const REAL coef = max_norm / (norm + (REAL)1e-6);
        scale[0] = coef > (REAL)1 ? (REAL)1 : coef;
        if (want_norm) scale[1] = norm;
    }
}
