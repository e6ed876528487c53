// Optimizer updates over flat buffers of n parameters (torch.optim semantics), and global-norm
// gradient clipping (torch.nn.utils.clip_grad_norm_) without a host round trip.
//   p (n) parameters, updated in place; g (n) gradients, read only; state buffers (n) in place.
//   scale (1): the clip factor clip_scale wrote; use_scale == 0: gradients taken as they are.
//   lr and step are per-step (dynamic) arguments; step counts from 1.

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
// SGD_BODY(T, LD, ST, i): the update of element(s) i in type T (REAL, or a vector of REALs loaded with
// LD and stored with ST): the scalar kernel and the CPU-shaped vector one share it, expression for
// expression, so both round alike (the same contractions into FMAs): the same bits.
#define SGD_BODY(T, LD, ST, i)                                                                      \
    T d = LD(g, i);                                                                                 \
    if (use_scale) d = d * scale[0];                                                                \
    const T pi = LD(p, i);                                                                          \
    if (wd != (REAL)0) d = d + wd * pi;                                                             \
    if (momentum != (REAL)0) {                                                                      \
        const T bv = step <= 1 ? d : LD(buf, i) * momentum + omd * d;                               \
        ST(bv, buf, i);                                                                             \
        d = nesterov ? d + momentum * bv : bv;                                                      \
    }                                                                                               \
    ST(pi + (-lr) * d, p, i);
#define LD1(a, i) (a)[i]
#define ST1(v, a, i) ((a)[i] = (v))
#define SGD_ARGS __global REAL* p, __global const REAL* g, __global REAL* buf, __global const REAL* scale,  \
    const int n, const int use_scale, const REAL momentum, const REAL omd, const REAL wd, const int nesterov, \
    const REAL lr, const int step

__kernel void sgd_step(SGD_ARGS) {
    const int i = get_global_id(0);
    if (i >= n) return;
    SGD_BODY(REAL, LD1, ST1, i)
}

// torch Adam / AdamW (amsgrad off): m = lerp(m, d, 1-beta1), v = beta2*v + (1-beta2)*d*d,
//   p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps),  bc_k = 1 - beta_k^step
// Adam: d = g + wd*p (L2); AdamW: p *= 1 - lr*wd first (decoupled).
// w1 = 1-beta1, omb2 = 1-beta2; lb_k = log(beta_k) (from the host in double), so that
// bc_k = -expm1(step*lb_k) keeps full float precision where 1 - beta2^step would cancel.
#define ADAM_BODY(T, LD, ST, i, DECOUPLED)                                                          \
    T d = LD(g, i);                                                                                  \
    if (use_scale) d = d * scale[0];                                                                 \
    T pi = LD(p, i);                                                                                 \
    if (wd != (REAL)0) {                                                                             \
        if (DECOUPLED) pi = pi * ((REAL)1 - lr * wd);                                                \
        else d = d + wd * pi;                                                                        \
    }                                                                                                \
    const T mo = LD(m, i);                                                                           \
    const T mi = w1 < (REAL)0.5 ? mo + w1 * (d - mo) : d - (d - mo) * ((REAL)1 - w1); /* torch lerp */ \
    const T vi = LD(v, i) * beta2 + omb2 * d * d;                                                    \
    ST(mi, m, i);                                                                                    \
    ST(vi, v, i);                                                                                    \
    const T denom = sqrt(vi) / sqrt_bc2 + eps;                                                       \
    ST(pi + (-(lr / bc1)) * (mi / denom), p, i);
#define ADAM_ARGS __global REAL* p, __global const REAL* g, __global REAL* m, __global REAL* v,          \
    __global const REAL* scale, const int n, const int use_scale, const REAL w1, const REAL beta2,        \
    const REAL omb2, const REAL lb1, const REAL lb2, const REAL eps, const REAL wd, const REAL lr, const int step
#define ADAM_BC const REAL bc1 = -expm1((REAL)step * lb1), sqrt_bc2 = sqrt(-expm1((REAL)step * lb2));
#define ADAM(NAME, DECOUPLED)                                                                       \
__kernel void NAME(ADAM_ARGS) {                                                                     \
    const int i = get_global_id(0);                                                                 \
    if (i >= n) return;                                                                             \
    ADAM_BC                                                                                         \
    ADAM_BODY(REAL, LD1, ST1, i, DECOUPLED)                                                         \
}
ADAM(adam_step, 0)
ADAM(adamw_step, 1)

// OPTVW consecutive elements per work-item as one vector (CPU devices; any device whose tuning "optim"
// sets "vec"), the last partial group element by element. On CPU devices unaligned vector pointers,
// not vloadN (PoCL calls its builtins out of line); elsewhere vloadN/vstoreN.
#ifndef OPTVW
#define OPTVW 8
#endif
#define OCAT_(a, b) a##b
#define OCAT(a, b) OCAT_(a, b)
#define REALV OCAT(REAL, OPTVW)
#if defined(__clang__) && defined(CPU_DEVICE)  // (the loader defines CPU_DEVICE)
typedef REALV REALV_u __attribute__((aligned(4)));
#define LDV(a, i) (*(__global const REALV_u*)((a) + (i)))
#define STV(v, a, i) (*(__global REALV_u*)((a) + (i)) = (v))
#else
#define LDV(a, i) OCAT(vload, OPTVW)(0, (a) + (i))
#define STV(v, a, i) OCAT(vstore, OPTVW)(v, 0, (a) + (i))
#endif

__kernel void sgd_step_vec(SGD_ARGS) {
    const int i0 = get_global_id(0) * OPTVW;
    if (i0 >= n) return;
    if (i0 + OPTVW <= n) {
        SGD_BODY(REALV, LDV, STV, i0)
    } else {
        for (int i = i0; i < n; i++) {
            SGD_BODY(REAL, LD1, ST1, i)
        }
    }
}

#define ADAM_VEC(NAME, DECOUPLED)                                                                   \
__kernel void NAME(ADAM_ARGS) {                                                                     \
    const int i0 = get_global_id(0) * OPTVW;                                                        \
    if (i0 >= n) return;                                                                            \
    ADAM_BC                                                                                         \
    if (i0 + OPTVW <= n) {                                                                          \
        ADAM_BODY(REALV, LDV, STV, i0, DECOUPLED)                                                   \
    } else {                                                                                        \
        for (int i = i0; i < n; i++) {                                                              \
            ADAM_BODY(REAL, LD1, ST1, i, DECOUPLED)                                                 \
        }                                                                                           \
    }                                                                                               \
}
ADAM_VEC(adam_step_vec, 0)
ADAM_VEC(adamw_step_vec, 1)


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
