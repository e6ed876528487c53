// GEMM (row-major, element offsets, batched by strides) and the column sums the FC bias needs.
//
//   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C (+ bias)      for z in 0..batch-1
//   op(A) = A (M x K, lda >= K) or A^T (A stored K x M, lda >= M); op(B) likewise (K x N or N x K)
//   A, B, C of batch z start at a_off + z*stride_a (b_off + z*stride_b, c_off + z*stride_c)
//   bias_mode bits 0-1: 0 no bias, 1 + bias[bias_off + n] (per column), 2 + bias[bias_off + m] (per row);
//   bits 2-3: an activation applied last (0 none, 1 relu as activation.cl's relu_fwd, 2 relu6 as its
//   clip_fwd with (0, 6)): a frozen conv/FC + activation pair runs as one launch (backends/opencl/passes.py)
//   beta == 0 never reads C (it may hold NaN).
//
// Two families, one kernel per form (nn, nt, tn, tt) each, all from one build:
//   gemm_gpu_*  GPU-shaped: an MWG x NWG tile per work-group of NDIMC x MDIMC work-items, each
//               work-item an MWI x NWI register tile, K in KWG slices staged in local memory.
//   gemm_cpu_*  CPU-shaped (PoCL): each work-item owns a TM x TN block held in TM x TN/VW float<VW>
//               registers (outer-product form: nn, tn, tt; *_lb: the group's op(B) strip staged in
//               local memory first) or a DM x DN block of float<VW> dot-product accumulators (nt: both
//               operands are contiguous along K); gemm_cpu_sm_*: small M, all rows per work-item.
// The launcher is device_agent/backends/opencl/gemm.py; tile sizes come from configs/tuning/gemm.json.

#ifndef MULADD
#define MULADD(a, b, c) fma(a, b, c)  // exact and a single instruction on every FMA-capable GPU/CPU
#endif

// ------------------------------------------------------------------------- GPU-shaped tunables
#ifndef MWG
#define MWG 64     // work-group tile rows (M); 64 keeps a 64-thread group busy on phone GPUs
#endif
#ifndef NWG
#define NWG 64     // work-group tile columns (N)
#endif
#ifndef KWG
#define KWG 16     // K-slice staged in local memory per step: (MWG + NWG) * KWG * 4 B = 8 KiB here
#endif
#ifndef MDIMC
#define MDIMC 8    // work-items along M; MWI = MWG / MDIMC rows each
#endif
#ifndef NDIMC
#define NDIMC 8    // work-items along N; NWI = NWG / NDIMC columns each
#endif

#ifndef LPAD
#define LPAD 0     // floats of padding per local-memory row (0 or 4): spreads the transposing stores of
                   // A (nn, nt) and B (nt, tt) over more banks
#endif
#ifndef PF
#define PF 0       // K-slice pipelining: 0 load, barrier, compute, barrier; 1 register prefetch (slice k+1 read
                   // from global memory into registers while slice k is computed from local memory); 2 the
                   // same with two local buffers per operand (one barrier per slice, twice the local memory)
#endif
#ifndef KUNROLL
#define KUNROLL 1  // unroll the KWG loop (GPUs); the launcher turns it off for a GPU-shaped build on a CPU device
#endif

#define MWI (MWG / MDIMC)
#define NWI (NWG / NDIMC)
#define THREADS (MDIMC * NDIMC)

// ------------------------------------------------------------------------- CPU-shaped tunables
#ifndef TM
#define TM 6       // rows per work-item (outer form); 6 x 16 floats = 12 of the 16 AVX2 registers
#endif
#ifndef TN
#define TN 16      // columns per work-item, a multiple of VW
#endif
#ifndef VW
#define VW 8       // vector width of both CPU forms: 8 = one AVX2 register (float16 breaks PoCL's AVX2 ABI)
#endif
#ifndef DM
#define DM 2       // rows per work-item (dot form, nt)
#endif
#ifndef DN
#define DN 4       // columns per work-item (dot form): DM * DN accumulators of VW floats along K
#endif

#ifndef SMR
#define SMR 8      // skinny form (small M): rows per pass over op(B); all M rows in passes of SMR
#endif
#ifndef SWV
#define SWV 64     // skinny form: float<VW> column vectors per work-item (SMR x SWV partial sums in L1)
#endif
#ifndef SKC
#define SKC 8      // skinny form: rows of op(B) per chunk (SKC x SWV*VW floats stay in L1 across the strip)
#endif

#ifndef FAMILY
#define FAMILY 3   // bit 1: build the GPU-shaped kernels, bit 2: the CPU-shaped ones (the launcher builds one)
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define floatVW CAT(float, VW)
#define vloadVW CAT(vload, VW)
#define vstoreVW CAT(vstore, VW)

// element (m, k) of op(A) and (k, n) of op(B)
#define OPA(ta, m, k) ((ta) ? A[(k) * lda + (m)] : A[(m) * lda + (k)])
#define OPB(tb, k, n) ((tb) ? B[(n) * ldb + (k)] : B[(k) * ldb + (n)])

// v = alpha * acc (+ beta * C) (+ bias), the one epilogue every kernel applies per element
inline float epilogue(const float acc, const float alpha, const float beta, __global const float* c,
                      __global const float* bias, const int bias_mode, const int m, const int n) {
    float v = alpha * acc;
    if (beta != 0.0f) v = MULADD(beta, *c, v);
    const int bm = bias_mode & 3, act = bias_mode >> 2;
    if (bm == 1) v += bias[n];
    else if (bm == 2) v += bias[m];
    if (act == 1) v = fmax(v, 0.0f);
    else if (act == 2) {
        if (v < 0.0f) v = 0.0f;
        if (v > 6.0f) v = 6.0f;
    }
    return v;
}

// ========================================================================= GPU-shaped family
#if FAMILY & 1
#if (MWI % 4) || (NWI % 4) || (KWG % 4) || (LPAD % 4)
#error "gemm.cl: MWI, NWI, KWG and LPAD must be multiples of 4"
#endif
// Float4 number idx of the KWG x XWG slice of a matrix whose element (x, k) sits at src[x*ld + k]
// (kcontig) or src[k*ld + x]: its value (zeros past xlim / klim) and where gpu_stash puts it in
// dst[k*(XWG + LPAD) + x]. `fast`: slice fully inside and float4-aligned.
inline float4 gpu_fetch(const int kcontig, __global const float* src, const int ld, const int xlim,
                        const int klim, const int x0, const int k0, const int XWG, const int idx,
                        const int fast) {
    float4 v;
    if (kcontig) {
        const int x = idx / (KWG / 4), k = (idx % (KWG / 4)) * 4;
        if (fast) {
            v = *(__global const float4*)(src + (x0 + x) * ld + k0 + k);
        } else {
            const int xx = x0 + x, kk = k0 + k, in = xx < xlim;
            v.x = in && kk + 0 < klim ? src[xx * ld + kk + 0] : 0.0f;
            v.y = in && kk + 1 < klim ? src[xx * ld + kk + 1] : 0.0f;
            v.z = in && kk + 2 < klim ? src[xx * ld + kk + 2] : 0.0f;
            v.w = in && kk + 3 < klim ? src[xx * ld + kk + 3] : 0.0f;
        }
    } else {
        const int k = idx / (XWG / 4), x = (idx % (XWG / 4)) * 4;
        if (fast) {
            v = *(__global const float4*)(src + (k0 + k) * ld + x0 + x);
        } else {
            const int xx = x0 + x, kk = k0 + k, in = kk < klim;
            v.x = in && xx + 0 < xlim ? src[kk * ld + xx + 0] : 0.0f;
            v.y = in && xx + 1 < xlim ? src[kk * ld + xx + 1] : 0.0f;
            v.z = in && xx + 2 < xlim ? src[kk * ld + xx + 2] : 0.0f;
            v.w = in && xx + 3 < xlim ? src[kk * ld + xx + 3] : 0.0f;
        }
    }
    return v;
}

inline void gpu_stash(const int kcontig, const int XWG, const int idx, const float4 v, __local float* dst) {
    const int XL = XWG + LPAD;
    if (kcontig) {
        const int x = idx / (KWG / 4), k = (idx % (KWG / 4)) * 4;
        dst[(k + 0) * XL + x] = v.x;
        dst[(k + 1) * XL + x] = v.y;
        dst[(k + 2) * XL + x] = v.z;
        dst[(k + 3) * XL + x] = v.w;
    } else {
        const int k = idx / (XWG / 4), x = (idx % (XWG / 4)) * 4;
        *(__local float4*)(dst + k * XL + x) = v;              // 16-byte aligned: XL, x multiples of 4
    }
}

// The whole slice into dst, each work-item taking float4s tid, tid + THREADS, ...
inline void gpu_load_tile(const int kcontig, __global const float* src, const int ld, const int xlim,
                          const int klim, const int x0, const int k0, const int XWG, __local float* dst,
                          const int tid, const int fast) {
    for (int idx = tid; idx < XWG * KWG / 4; idx += THREADS)
        gpu_stash(kcontig, XWG, idx, gpu_fetch(kcontig, src, ld, xlim, klim, x0, k0, XWG, idx, fast), dst);
}

#if PF
// PF: the same float4s of a work-item (at most PFN(XWG) of them) held in registers r[] between the
// global read of slice k+1 and its store to local memory after slice k is computed
#define PFN(XWG) ((XWG * KWG / 4 + THREADS - 1) / THREADS)
inline void gpu_fetch_regs(float4* r, const int n, const int kcontig, __global const float* src, const int ld,
                           const int xlim, const int klim, const int x0, const int k0, const int XWG,
                           const int tid, const int fast) {
#pragma unroll
    for (int q = 0; q < n; q++) {
        const int idx = tid + q * THREADS;
        if ((XWG * KWG / 4) % THREADS == 0 || idx < XWG * KWG / 4)
            r[q] = gpu_fetch(kcontig, src, ld, xlim, klim, x0, k0, XWG, idx, fast);
    }
}

inline void gpu_stash_regs(const float4* r, const int n, const int kcontig, const int XWG, __local float* dst,
                           const int tid) {
#pragma unroll
    for (int q = 0; q < n; q++) {
        const int idx = tid + q * THREADS;
        if ((XWG * KWG / 4) % THREADS == 0 || idx < XWG * KWG / 4) gpu_stash(kcontig, XWG, idx, r[q], dst);
    }
}
#endif

// Work-item (tx, ty) owns rows m0 + iv*MDIMC*4 + ty*4 + {0..3} and columns n0 + jv*NDIMC*4 + tx*4 + {0..3}:
// float4 groups interleaved so that a warp's local reads and global stores are contiguous.
inline void gemm_gpu_body(const int ta, const int tb, const int M, const int N, const int K,
                          __global const float* A, const int a_off, const int lda,
                          __global const float* B, const int b_off, const int ldb,
                          __global float* C, const int c_off, const int ldc,
                          const float alpha, const float beta,
                          const int stride_a, const int stride_b, const int stride_c,
                          __global const float* bias, const int bias_off, const int bias_mode,
                          const int aligned, const int ksplit, const int kchunk,
                          __local float* As, __local float* Bs) {
    const int tx = get_local_id(0), ty = get_local_id(1), tid = ty * NDIMC + tx;
    const int n0 = get_group_id(0) * NWG, m0 = get_group_id(1) * MWG;
    // split-K: group index gz = z * ksplit + part; part takes K range [part*kchunk, +kchunk) and
    // writes its own (partial) matrix gz; gemm_reduce sums them. ksplit == 1: gz == z, whole K.
    const int gz = get_global_id(2), z = gz / ksplit, kbeg = (gz % ksplit) * kchunk;
    const int kend = min(K, kbeg + kchunk);
    A += a_off + z * stride_a;
    B += b_off + z * stride_b;
    C += c_off + gz * stride_c;
    bias += bias_off;
    float acc[MWI][NWI];
    for (int i = 0; i < MWI; i++)
        for (int j = 0; j < NWI; j++) acc[i][j] = 0.0f;
    const int full_m = m0 + MWG <= M, full_n = n0 + NWG <= N;
#if PF
    // the slice at k0 = kbeg into registers; each step then stores the registers (PF 1) and reads the
    // next slice before computing this one. Local memory holds the same values at the same places as
    // PF 0 and the fma chain is the same: the results are bit-identical.
    // PF 2: two local buffers per operand; slice k+1 is stored into the one slice k does not read, so
    // one barrier per step orders both the stores before the reads and the reads before the next stores
    float4 ra[PFN(MWG)], rb[PFN(NWG)];
    int buf = 0;
    if (kbeg < kend) {                                 // the same for the whole work-group
        const int full_k = kbeg + KWG <= kend;
        gpu_fetch_regs(ra, PFN(MWG), !ta, A, lda, M, kend, m0, kbeg, MWG, tid, (aligned & 1) && full_m && full_k);
        gpu_fetch_regs(rb, PFN(NWG), tb, B, ldb, N, kend, n0, kbeg, NWG, tid, (aligned & 2) && full_n && full_k);
#if PF == 2
        gpu_stash_regs(ra, PFN(MWG), !ta, MWG, As, tid);
        gpu_stash_regs(rb, PFN(NWG), tb, NWG, Bs, tid);
        barrier(CLK_LOCAL_MEM_FENCE);
#endif
    }
#endif
    for (int k0 = kbeg; k0 < kend; k0 += KWG) {
#if PF == 0
        const int full_k = k0 + KWG <= kend;
        gpu_load_tile(!ta, A, lda, M, kend, m0, k0, MWG, As, tid, (aligned & 1) && full_m && full_k);
        gpu_load_tile(tb, B, ldb, N, kend, n0, k0, NWG, Bs, tid, (aligned & 2) && full_n && full_k);
        barrier(CLK_LOCAL_MEM_FENCE);
        __local const float* Ak = As;
        __local const float* Bk = Bs;
#else
#if PF == 1
        gpu_stash_regs(ra, PFN(MWG), !ta, MWG, As, tid);
        gpu_stash_regs(rb, PFN(NWG), tb, NWG, Bs, tid);
        barrier(CLK_LOCAL_MEM_FENCE);
        __local const float* Ak = As;
        __local const float* Bk = Bs;
#else
        __local const float* Ak = As + buf * KWG * (MWG + LPAD);
        __local const float* Bk = Bs + buf * KWG * (NWG + LPAD);
#endif
        const int kn = k0 + KWG, more = kn < kend, full_k = kn + KWG <= kend;
        if (more) {
            gpu_fetch_regs(ra, PFN(MWG), !ta, A, lda, M, kend, m0, kn, MWG, tid, (aligned & 1) && full_m && full_k);
            gpu_fetch_regs(rb, PFN(NWG), tb, B, ldb, N, kend, n0, kn, NWG, tid, (aligned & 2) && full_n && full_k);
        }
#endif
#if KUNROLL
#pragma unroll
#else
#pragma unroll 1
#endif
        for (int kk = 0; kk < KWG; kk++) {
            float a[MWI], b[NWI];
            for (int iv = 0; iv < MWI / 4; iv++) {
                const float4 v = *(__local const float4*)(Ak + kk * (MWG + LPAD) + iv * MDIMC * 4 + ty * 4);
                a[iv * 4 + 0] = v.x; a[iv * 4 + 1] = v.y; a[iv * 4 + 2] = v.z; a[iv * 4 + 3] = v.w;
            }
            for (int jv = 0; jv < NWI / 4; jv++) {
                const float4 v = *(__local const float4*)(Bk + kk * (NWG + LPAD) + jv * NDIMC * 4 + tx * 4);
                b[jv * 4 + 0] = v.x; b[jv * 4 + 1] = v.y; b[jv * 4 + 2] = v.z; b[jv * 4 + 3] = v.w;
            }
            for (int i = 0; i < MWI; i++)
                for (int j = 0; j < NWI; j++) acc[i][j] = MULADD(a[i], b[j], acc[i][j]);
        }
#if PF == 2
        if (more) {
            buf ^= 1;
            gpu_stash_regs(ra, PFN(MWG), !ta, MWG, As + buf * KWG * (MWG + LPAD), tid);
            gpu_stash_regs(rb, PFN(NWG), tb, NWG, Bs + buf * KWG * (NWG + LPAD), tid);
        }
#endif
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < MWI; i++) {
        const int m = m0 + (i / 4) * MDIMC * 4 + ty * 4 + (i % 4);
        if (m >= M) continue;
        for (int jv = 0; jv < NWI / 4; jv++) {
            const int n = n0 + jv * NDIMC * 4 + tx * 4;
            __global float* c = C + m * ldc + n;
            if ((aligned & 4) && n + 3 < N) {       // C rows float4-aligned: one vector store
                float4 v;
                v.x = epilogue(acc[i][jv * 4 + 0], alpha, beta, c + 0, bias, bias_mode, m, n + 0);
                v.y = epilogue(acc[i][jv * 4 + 1], alpha, beta, c + 1, bias, bias_mode, m, n + 1);
                v.z = epilogue(acc[i][jv * 4 + 2], alpha, beta, c + 2, bias, bias_mode, m, n + 2);
                v.w = epilogue(acc[i][jv * 4 + 3], alpha, beta, c + 3, bias, bias_mode, m, n + 3);
                *(__global float4*)c = v;
            } else {
                for (int e = 0; e < 4; e++)
                    if (n + e < N) c[e] = epilogue(acc[i][jv * 4 + e], alpha, beta, c + e, bias, bias_mode, m, n + e);
            }
        }
    }
}

#define GPU_ARGS const int M, const int N, const int K, \
    __global const float* A, const int a_off, const int lda, __global const float* B, const int b_off, const int ldb, \
    __global float* C, const int c_off, const int ldc, const float alpha, const float beta, \
    const int stride_a, const int stride_b, const int stride_c, \
    __global const float* bias, const int bias_off, const int bias_mode, const int aligned, \
    const int ksplit, const int kchunk
#define GPU_PASS M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, alpha, beta, stride_a, stride_b, stride_c, \
    bias, bias_off, bias_mode, aligned, ksplit, kchunk, As, Bs
#define NBUF (PF == 2 ? 2 : 1)   // local buffers per operand
#define GPU_KERNEL(name, ta, tb) \
    __kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1))) void name(GPU_ARGS) { \
        __local float4 As4[NBUF * KWG * (MWG + LPAD) / 4];  /* float4: 16-byte aligned for the vector reads */ \
        __local float4 Bs4[NBUF * KWG * (NWG + LPAD) / 4]; \
        __local float* As = (__local float*)As4; \
        __local float* Bs = (__local float*)Bs4; \
        gemm_gpu_body(ta, tb, GPU_PASS); \
    }
GPU_KERNEL(gemm_gpu_nn, 0, 0)
GPU_KERNEL(gemm_gpu_nt, 0, 1)
GPU_KERNEL(gemm_gpu_tn, 1, 0)
GPU_KERNEL(gemm_gpu_tt, 1, 1)
#endif  // FAMILY & 1

// ========================================================================= CPU-shaped family
#if FAMILY & 2
// NOTE: PoCL's CPU driver does not inline its builtins (fma, vload8, min, ...): each one is a real call
// that spills the accumulators. The hot loops below therefore use only operators (a * b + c contracts
// to one FMA), unaligned vector pointers instead of vloadN, and fully unrolled register tiles.
#if defined(__clang__) && defined(CPU_DEVICE)  // (the loader defines CPU_DEVICE)
typedef floatVW floatVW_u __attribute__((aligned(4)));   // a float<VW> at any float address
#define LOADV(p) (*(__global const floatVW_u*)(p))
#define STOREV(v, p) (*(__global floatVW_u*)(p) = (v))
#define LLOADV(p) (*(__local const floatVW*)(p))        // the Bs strip rows: TN floats, a multiple of VW
#define LSTOREV(v, p) (*(__local floatVW*)(p) = (v))
#else
// NOTE: GPUs need a float<VW> access aligned to its own size; NVIDIA places a __local argument 16
// bytes in (a misaligned float8 access there lost the CUDA context), so vloadN / vstoreN off CPUs
#define LOADV(p) vloadVW(0, p)
#define STOREV(v, p) vstoreVW(v, 0, p)
#define LLOADV(p) vloadVW(0, p)
#define LSTOREV(v, p) vstoreVW(v, 0, p)
#endif
#define UNROLL _Pragma("unroll")

// Outer-product form (nn, tn, tt): work-item (gx, gy) owns rows m0 = gy*TM .. +TM and columns
// n0 = gx*TN .. +TN, held as TM x (TN/VW) float<VW> accumulators. Per k: TN/VW vector loads of a row
// of op(B), TM broadcasts of op(A), TM*TN/VW vector FMAs.
// Edges stay vectorised: rows past M are clamped to M-1 (computed, not stored); a column block past
// N is shifted left to end at N (overlapping its neighbour, storing only its own columns), and only
// N < TN (or B transposed, tt) falls back to lane-by-lane loads of B.
#define NV (TN / VW)
// the outer forms' stores: vectors where the block is whole and C gets no bias (beta as the epilogue's
// fma(beta, c, alpha * acc)), else element by element through epilogue()
#define CPU_OUTER_STORE                                                                              \
    const int fast = n0 == nown && !narrow && m0 + TM <= M && bias_mode == 0;                        \
    UNROLL for (int i = 0; i < TM; i++) {                                                            \
        const int m = m0 + i;                                                                        \
        if (m >= M) break;                                                                           \
        if (fast && beta == 0.0f) {                                                                  \
            UNROLL for (int v = 0; v < NV; v++) STOREV(alpha * acc[i][v], C + m * ldc + n0 + v * VW); \
        } else if (fast) {                                                                           \
            UNROLL for (int v = 0; v < NV; v++) {                                                    \
                __global float* c = C + m * ldc + n0 + v * VW;                                       \
                const floatVW av = alpha * acc[i][v];                                                \
                STOREV((floatVW)(beta) * LOADV(c) + av, c);                                          \
            }                                                                                        \
        } else {                                                                                     \
            float out[TN];                                                                           \
            UNROLL for (int v = 0; v < NV; v++) vstoreVW(acc[i][v], v, out);                         \
            for (int j = 0; j < TN; j++) {                                                           \
                const int n = n0 + j;                                                                \
                if (n >= nown && n < N)                                                              \
                    C[m * ldc + n] = epilogue(out[j], alpha, beta, C + m * ldc + n, bias, bias_mode, m, n); \
            }                                                                                        \
        }                                                                                            \
    }
inline void gemm_cpu_outer(const int ta, const int tb, const int M, const int N, const int K,
                           __global const float* A, const int lda, __global const float* B, const int ldb,
                           __global float* C, const int ldc, const float alpha, const float beta,
                           __global const float* bias, const int bias_mode) {
    const int m0 = get_global_id(1) * TM, nown = get_global_id(0) * TN;
    if (m0 >= M || nown >= N) return;
    const int n0 = nown + TN <= N ? nown : (N > TN ? N - TN : 0);
    const int narrow = N < TN;
    // op(A)[m0+i, k] = ap[i][k * astep]
    __global const float* ap[TM];
    UNROLL for (int i = 0; i < TM; i++) {
        const int r = m0 + i < M ? m0 + i : M - 1;
        ap[i] = ta ? A + r : A + r * lda;
    }
    const int astep = ta ? lda : 1;
    floatVW acc[TM][NV];
    UNROLL for (int i = 0; i < TM; i++)
        UNROLL for (int v = 0; v < NV; v++) acc[i][v] = (floatVW)(0.0f);
    if (!tb && !narrow) {
        __global const float* bp = B + n0;
        for (int k = 0; k < K; k++, bp += ldb) {
            floatVW bv[NV];
            UNROLL for (int v = 0; v < NV; v++) bv[v] = LOADV(bp + v * VW);
            UNROLL for (int i = 0; i < TM; i++) {
                const floatVW a = (floatVW)(ap[i][k * astep]);
                UNROLL for (int v = 0; v < NV; v++) acc[i][v] = a * bv[v] + acc[i][v];
            }
        }
    } else {
        for (int k = 0; k < K; k++) {
            float bl[TN];
            UNROLL for (int j = 0; j < TN; j++) bl[j] = n0 + j < N ? OPB(tb, k, n0 + j) : 0.0f;
            floatVW bv[NV];
            UNROLL for (int v = 0; v < NV; v++) bv[v] = vloadVW(v, bl);
            UNROLL for (int i = 0; i < TM; i++) {
                const floatVW a = (floatVW)(ap[i][k * astep]);
                UNROLL for (int v = 0; v < NV; v++) acc[i][v] = a * bv[v] + acc[i][v];
            }
        }
    }
    CPU_OUTER_STORE
}

// The outer form with op(B)'s strip staged in local memory (LB tiles, work-groups of 1 x LY): the
// group's work-items first copy the K x TN strip (a strided walk down B, zero-filled past N) into
// Bs, contiguous, then each runs its TM x TN block from there: the strip is read from memory once per
// group and the inner loop streams 64 contiguous bytes per k (the prefetchers follow it; a strided
// walk of B's rows per work-item runs at a third of the in-cache rate). Bs holds K * TN floats.
inline void gemm_cpu_outer_lb(const int ta, const int tb, const int M, const int N, const int K,
                              __global const float* A, const int lda, __global const float* B, const int ldb,
                              __global float* C, const int ldc, const float alpha, const float beta,
                              __global const float* bias, const int bias_mode, __local float* Bs) {
    const int nown = get_global_id(0) * TN;
    const int n0 = nown + TN <= N ? nown : (N > TN ? N - TN : 0);
    const int narrow = N < TN;
    if (nown < N) {
        for (int k = get_local_id(1); k < K; k += get_local_size(1)) {
            __local float* d = Bs + k * TN;
            if (!tb && !narrow) {
                UNROLL for (int v = 0; v < NV; v++)
                    LSTOREV(LOADV(B + k * ldb + n0 + v * VW), d + v * VW);
            } else {
                UNROLL for (int j = 0; j < TN; j++) d[j] = n0 + j < N ? OPB(tb, k, n0 + j) : 0.0f;
            }
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int m0 = get_global_id(1) * TM;
    if (m0 >= M || nown >= N) return;
    __global const float* ap[TM];
    UNROLL for (int i = 0; i < TM; i++) {
        const int r = m0 + i < M ? m0 + i : M - 1;
        ap[i] = ta ? A + r : A + r * lda;
    }
    const int astep = ta ? lda : 1;
    floatVW acc[TM][NV];
    UNROLL for (int i = 0; i < TM; i++)
        UNROLL for (int v = 0; v < NV; v++) acc[i][v] = (floatVW)(0.0f);
    __local const float* bp = Bs;
    for (int k = 0; k < K; k++, bp += TN) {
        floatVW bv[NV];
        UNROLL for (int v = 0; v < NV; v++) bv[v] = LLOADV(bp + v * VW);
        UNROLL for (int i = 0; i < TM; i++) {
            const floatVW a = (floatVW)(ap[i][k * astep]);
            UNROLL for (int v = 0; v < NV; v++) acc[i][v] = a * bv[v] + acc[i][v];
        }
    }
    CPU_OUTER_STORE
}

// Skinny form (nn, tn with M <= skinny_m: FC dX at batch 8, C = gy @ W): op(B), the weight, is the
// one big operand and must stream from memory near its bandwidth. The outer form walks a 16-float
// column strip down all K rows of B (a new page and DRAM burst per 64 bytes: 4-6x slower than
// streaming); here work-item gx owns SW = SWV*VW columns n0 = gx*SW .. and every row (in passes of
// SMR rows), takes B in chunks of SKC rows x SW contiguous floats (a few KiB, L1-resident), and for
// each float<VW> column of the chunk runs SMR register accumulators down its SKC rows; the SMR x SWV
// partial sums live in private memory between chunks. Rows past M are clamped (computed, not
// stored); a strip past N is shifted left as in the outer form; only N < SW reads lane by lane.
#define SW (SWV * VW)
inline void gemm_cpu_skinny(const int ta, const int M, const int N, const int K,
                            __global const float* A, const int lda, __global const float* B, const int ldb,
                            __global float* C, const int ldc, const float alpha, const float beta,
                            __global const float* bias, const int bias_mode) {
    const int nown = get_global_id(0) * SW;
    if (nown >= N) return;
    const int n0 = nown + SW <= N ? nown : (N > SW ? N - SW : 0);
    const int narrow = N < SW;
    const int astep = ta ? lda : 1;
    for (int m0 = 0; m0 < M; m0 += SMR) {
        __global const float* ap[SMR];
        UNROLL for (int i = 0; i < SMR; i++) {
            const int r = m0 + i < M ? m0 + i : M - 1;
            ap[i] = ta ? A + r : A + r * lda;
        }
        floatVW acc[SWV][SMR];
        for (int v = 0; v < SWV; v++)
            UNROLL for (int i = 0; i < SMR; i++) acc[v][i] = (floatVW)(0.0f);
        for (int kc = 0; kc < K; kc += SKC) {
            const int kn = min(SKC, K - kc);
            __global const float* bc = B + kc * ldb + n0;
            for (int v = 0; v < SWV; v++) {
                floatVW r[SMR];
                UNROLL for (int i = 0; i < SMR; i++) r[i] = acc[v][i];
                __global const float* bp = bc + v * VW;
                if (!narrow) {
                    for (int k = 0; k < kn; k++) {
                        const floatVW bv = LOADV(bp + k * ldb);
                        UNROLL for (int i = 0; i < SMR; i++) r[i] = (floatVW)(ap[i][(kc + k) * astep]) * bv + r[i];
                    }
                } else {
                    for (int k = 0; k < kn; k++) {
                        float bl[VW];
                        UNROLL for (int j = 0; j < VW; j++)
                            bl[j] = n0 + v * VW + j < N ? bp[k * ldb + j] : 0.0f;
                        const floatVW bv = vloadVW(0, bl);
                        UNROLL for (int i = 0; i < SMR; i++) r[i] = (floatVW)(ap[i][(kc + k) * astep]) * bv + r[i];
                    }
                }
                UNROLL for (int i = 0; i < SMR; i++) acc[v][i] = r[i];
            }
        }
        const int fast = n0 == nown && !narrow && beta == 0.0f && bias_mode == 0;
        for (int i = 0; i < SMR; i++) {
            const int m = m0 + i;
            if (m >= M) break;
            for (int v = 0; v < SWV; v++) {
                __global float* c = C + m * ldc + n0 + v * VW;
                if (fast) {
                    STOREV(alpha * acc[v][i], c);
                } else {
                    float out[VW];
                    vstoreVW(acc[v][i], 0, out);
                    for (int j = 0; j < VW; j++) {
                        const int n = n0 + v * VW + j;
                        if (n >= nown && n < N) c[j] = epilogue(out[j], alpha, beta, c + j, bias, bias_mode, m, n);
                    }
                }
            }
        }
    }
}

// Dot-product form (nt): C[m,n] = sum_k A[m,k] * B[n,k], both rows contiguous along K. Work-item
// (gx, gy) owns rows gy*DM .. +DM and columns gx*DN .. +DN; rows/columns past the edge are clamped
// (computed, not stored). Accumulates DM*DN float<VW> partial sums, reduced once at the end.
inline void gemm_cpu_dot(const int M, const int N, const int K,
                         __global const float* A, const int lda, __global const float* B, const int ldb,
                         __global float* C, const int ldc, const float alpha, const float beta,
                         __global const float* bias, const int bias_mode) {
    const int m0 = get_global_id(1) * DM, n0 = get_global_id(0) * DN;
    if (m0 >= M || n0 >= N) return;
    __global const float* ar[DM];
    __global const float* br[DN];
    UNROLL for (int i = 0; i < DM; i++) ar[i] = A + (m0 + i < M ? m0 + i : M - 1) * lda;
    UNROLL for (int j = 0; j < DN; j++) br[j] = B + (n0 + j < N ? n0 + j : N - 1) * ldb;
    floatVW acc[DM][DN];
    UNROLL for (int i = 0; i < DM; i++)
        UNROLL for (int j = 0; j < DN; j++) acc[i][j] = (floatVW)(0.0f);
    int k = 0;
    for (; k + VW <= K; k += VW) {
        floatVW av[DM], bv[DN];
        UNROLL for (int i = 0; i < DM; i++) av[i] = LOADV(ar[i] + k);
        UNROLL for (int j = 0; j < DN; j++) bv[j] = LOADV(br[j] + k);
        UNROLL for (int i = 0; i < DM; i++)
            UNROLL for (int j = 0; j < DN; j++) acc[i][j] = av[i] * bv[j] + acc[i][j];
    }
    for (int i = 0; i < DM; i++) {
        const int m = m0 + i;
        if (m >= M) break;
        for (int j = 0; j < DN; j++) {
            const int n = n0 + j;
            if (n >= N) break;
            float lanes[VW];
            vstoreVW(acc[i][j], 0, lanes);
            float s = 0.0f;
            for (int l = 0; l < VW; l++) s += lanes[l];
            for (int kk = k; kk < K; kk++) s += ar[i][kk] * br[j][kk];
            C[m * ldc + n] = epilogue(s, alpha, beta, C + m * ldc + n, bias, bias_mode, m, n);
        }
    }
}

#define CPU_ARGS const int M, const int N, const int K, \
    __global const float* A, const int a_off, const int lda, __global const float* B, const int b_off, const int ldb, \
    __global float* C, const int c_off, const int ldc, const float alpha, const float beta, \
    const int stride_a, const int stride_b, const int stride_c, \
    __global const float* bias, const int bias_off, const int bias_mode
#define CPU_SHIFT const int z = get_global_id(2); \
    A += a_off + z * stride_a; B += b_off + z * stride_b; C += c_off + z * stride_c; bias += bias_off;

#define CPU_REST M, N, K, A, lda, B, ldb, C, ldc, alpha, beta, bias, bias_mode
__kernel void gemm_cpu_nn(CPU_ARGS) { CPU_SHIFT gemm_cpu_outer(0, 0, CPU_REST); }
__kernel void gemm_cpu_tn(CPU_ARGS) { CPU_SHIFT gemm_cpu_outer(1, 0, CPU_REST); }
__kernel void gemm_cpu_tt(CPU_ARGS) { CPU_SHIFT gemm_cpu_outer(1, 1, CPU_REST); }
__kernel void gemm_cpu_nn_lb(CPU_ARGS, __local float* Bs) { CPU_SHIFT gemm_cpu_outer_lb(0, 0, CPU_REST, Bs); }
__kernel void gemm_cpu_tn_lb(CPU_ARGS, __local float* Bs) { CPU_SHIFT gemm_cpu_outer_lb(1, 0, CPU_REST, Bs); }
__kernel void gemm_cpu_tt_lb(CPU_ARGS, __local float* Bs) { CPU_SHIFT gemm_cpu_outer_lb(1, 1, CPU_REST, Bs); }
__kernel void gemm_cpu_nt(CPU_ARGS) { CPU_SHIFT gemm_cpu_dot(CPU_REST); }
__kernel void gemm_cpu_sm_nn(CPU_ARGS) { CPU_SHIFT gemm_cpu_skinny(0, CPU_REST); }
__kernel void gemm_cpu_sm_tn(CPU_ARGS) { CPU_SHIFT gemm_cpu_skinny(1, CPU_REST); }
#endif  // FAMILY & 2

// ========================================================================= reductions
// Sums `parts` consecutive partial products (M x N each, packed) per output matrix and applies the
// epilogue: C[zo] = alpha * sum_p work[zo*parts + p] (+ beta * C[zo]) (+ bias). Used after a split-K
// GEMM (parts = ksplit) and to sum a batch of products into one C (parts = batch * ksplit: conv dW
// over the images). Fixed summation order: deterministic. Global size (N, M, outputs).
__kernel void gemm_reduce(__global const float* work, const int work_off, const int parts, const int M,
                          const int N, __global float* C, const int c_off, const int ldc, const int stride_c,
                          const float alpha, const float beta,
                          __global const float* bias, const int bias_off, const int bias_mode) {
    const int n = get_global_id(0), m = get_global_id(1), zo = get_global_id(2);
    if (n >= N || m >= M) return;
    __global const float* w = work + work_off + (zo * parts) * M * N + m * N + n;
    float s = 0.0f;
    for (int p = 0; p < parts; p++) s += w[p * M * N];
    C += c_off + zo * stride_c;
    C[m * ldc + n] = epilogue(s, alpha, beta, C + m * ldc + n, bias + bias_off, bias_mode, m, n);
}

// g (rows, cols) row-major -> s (cols,) = sum over rows: the FC bias gradient db = gy.sum(axis=0).
// One work-item per column, rows summed in order (deterministic); adjacent work-items read adjacent
// addresses, so GPUs coalesce and CPUs vectorise across work-items.
__kernel void colsum(__global const float* g, __global float* s, const int rows, const int cols) {
    const int j = get_global_id(0);
    if (j >= cols) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += g[r * cols + j];
    s[j] = acc;
}
