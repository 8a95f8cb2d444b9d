/*
 * rowwise_cpu.h -- the CPU's vectorised forward pass for runs of row-wise
 * flows (CPU only: it builds on pfc_vmath.h).
 *
 * The row functions of the family headers evaluate one row at a time, with
 * scalar libm transcendentals.  That is the right shape for the GPU (one
 * thread per row) and for the rarely-hot paths, but on the CPU the forward
 * pass of a planar or radial chain is bound by its tanh, exp and log.  Here
 * a block of rows goes through every layer in turn while it stays in L1, and
 * each layer runs in three sweeps over the block:
 *
 *   1. the per-row reduction (w.z + b for planar, |z - z0|^2 for radial),
 *   2. the transcendentals for all rows of the block in one `omp simd` loop
 *      of pfc::vm functions (branch-free, <= 2 ulp), which the compiler
 *      turns into AVX2 / AVX-512 code,
 *   3. the row update x += coefficient * vector.
 *
 * The block kernel is compiled three times (baseline x86-64, AVX2+FMA,
 * AVX-512) and chain_forward_block picks the copy for the running CPU, as
 * the array helpers of pfc_vmath.h do.
 *
 * The formulas are those of planar.h and radial.h, in forms without
 * branches: t = tanh(s), hp = 1 - t^2 = 4e/(1+e)^2 with e = exp(-2|s|)
 * (relative accuracy kept for large |s|), and log D with D = 1 + hp c when
 * hp c > -1/2, else t^2 + hp sp (no cancellation near c = -1).  Radial rows
 * whose squared distance under- or overflows take the row function, which
 * rescales.
 */
#ifndef PFC_ROWWISE_CPU_H
#define PFC_ROWWISE_CPU_H

#include "pfc_vmath.h"
#include "rowwise.h"

namespace pfc {
namespace cpu {

/* Rows per block: the block's rows (and two scratch values per row) stay in
 * L1 through all layers of a chain. */
enum { BLOCK_ROWS = 128 };

template <typename T>
PFC_VM_INLINE void planar_forward_block(const T* work, int dim, index_t nrows, T* x, T* log_det,
                                        T* scratch) {
    const T* uhat = work;
    const T* w = work + dim;
    const T b = work[2 * dim], c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T* s = scratch;
    T* t = scratch + BLOCK_ROWS;
    for (index_t r = 0; r < nrows; ++r) {
        const T* xr = x + r * dim;
        T a = b;
        for (int i = 0; i < dim; ++i) a += w[i] * xr[i];
        s[r] = a;
    }
    PFC_VM_PRAGMA_SIMD
    for (index_t r = 0; r < nrows; ++r) {
        const T sr = s[r];
        const T tr = vm::tanh(sr);
        const T e = vm::exp(T(-2) * vm::detail::fabs_(sr));
        const T inv = T(1) / (T(1) + e);
        const T hp = T(4) * e * inv * inv;
        const T q = hp * c;
        const T d = vm::detail::select_(q > T(-0.5), T(1) + q, tr * tr + hp * sp);
        log_det[r] += vm::log(d);
        t[r] = tr;
    }
    for (index_t r = 0; r < nrows; ++r) {
        T* xr = x + r * dim;
        const T tr = t[r];
        for (int i = 0; i < dim; ++i) xr[i] += uhat[i] * tr;
    }
}

template <typename T>
PFC_VM_INLINE void radial_forward_block(const T* work, int dim, index_t nrows, T* x, T* log_det,
                                        T* scratch) {
    const T alpha = work[0], s = work[1];
    const T* z0 = work + 3;
    T* dist2 = scratch;
    T* g = scratch + BLOCK_ROWS;
    /* Squares of normal numbers: below `tiny` the sum loses precision, above
     * `huge` it may overflow. */
    const T tiny = T(1) / (limits<T>::max() * limits<T>::eps());
    const T huge = limits<T>::max() * limits<T>::eps();
    for (index_t r = 0; r < nrows; ++r) {
        const T* xr = x + r * dim;
        T ss = T(0);
        for (int i = 0; i < dim; ++i) {
            const T di = xr[i] - z0[i];
            ss += di * di;
        }
        dist2[r] = ss;
    }
    const T dim_minus_1 = T(dim - 1);
    PFC_VM_PRAGMA_SIMD
    for (index_t r = 0; r < nrows; ++r) {
        const T rr = pfc::sqrt(dist2[r]);
        const T inv = T(1) / (alpha + rr);
        const T u = rr * inv, v = alpha * inv;
        const T gr = s * inv + u;                 /* 1 + beta h */
        const T g2 = u * (T(1) + v) + s * inv * v; /* 1 + beta h + beta h' r */
        log_det[r] += dim_minus_1 * vm::log(gr) + vm::log(g2);
        g[r] = gr;
    }
    for (index_t r = 0; r < nrows; ++r) {
        T* xr = x + r * dim;
        const T ss = dist2[r];
        if (ss < tiny || ss > huge) {
            /* Undo this row's log_det term and take the rescaling row path
             * (rare: points within ~1e-150 of z0 or beyond ~1e150). */
            if (ss == ss) {
                const T rr = pfc::sqrt(ss);
                const T inv = T(1) / (alpha + rr);
                const T u = rr * inv, v = alpha * inv;
                log_det[r] -= dim_minus_1 * pfc::log(s * inv + u) + pfc::log(u * (T(1) + v) + s * inv * v);
                log_det[r] += radial_forward_row(work, dim, xr, xr);
                continue;
            }
        }
        const T gr = g[r];
        for (int i = 0; i < dim; ++i) xr[i] = z0[i] + gr * (xr[i] - z0[i]);
    }
}

/* One block of rows through layers [0, K): x = f(z) in place of the output
 * rows, log_det written. */
template <typename T>
PFC_VM_INLINE void chain_forward_block_impl(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, const T* z, T* x, T* log_det,
                                            T* scratch) {
    for (index_t j = 0; j < nrows * dim; ++j) x[j] = z[j];
    for (index_t r = 0; r < nrows; ++r) log_det[r] = T(0);
    for (int k = 0; k < K; ++k) {
        const T* wk = work + work_offsets[k];
        switch (kinds[k]) {
            case KIND_PLANAR:
                planar_forward_block(wk, dim, nrows, x, log_det, scratch);
                break;
            case KIND_RADIAL:
                radial_forward_block(wk, dim, nrows, x, log_det, scratch);
                break;
            default:
                for (index_t r = 0; r < nrows; ++r) {
                    log_det[r] += layer_forward_row(kinds[k], wk, dim, x + r * dim, x + r * dim);
                }
        }
    }
}

#if PFC_VM_DISPATCH
template <typename T>
void chain_forward_block_base(const int* kinds, const T* work, const long long* work_offsets,
                              int K, int dim, index_t nrows, const T* z, T* x, T* log_det,
                              T* scratch) {
    chain_forward_block_impl(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
}
template <typename T>
PFC_VM_TARGET_AVX2 void chain_forward_block_avx2(const int* kinds, const T* work,
                                                 const long long* work_offsets, int K, int dim,
                                                 index_t nrows, const T* z, T* x, T* log_det,
                                                 T* scratch) {
    chain_forward_block_impl(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
}
template <typename T>
PFC_VM_TARGET_AVX512 void chain_forward_block_avx512(const int* kinds, const T* work,
                                                     const long long* work_offsets, int K,
                                                     int dim, index_t nrows, const T* z, T* x,
                                                     T* log_det, T* scratch) {
    chain_forward_block_impl(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
}
#endif

/* The forward pass of rows [0, nrows), nrows <= BLOCK_ROWS; `scratch` holds
 * 2 * BLOCK_ROWS values.  `level` is vm::cpu_level(), read once per call. */
template <typename T>
inline void chain_forward_block(int level, const int* kinds, const T* work,
                                const long long* work_offsets, int K, int dim, index_t nrows,
                                const T* z, T* x, T* log_det, T* scratch) {
#if PFC_VM_DISPATCH
    if (level == vm::LEVEL_AVX512) {
        chain_forward_block_avx512(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
    } else if (level == vm::LEVEL_AVX2) {
        chain_forward_block_avx2(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
    } else {
        chain_forward_block_base(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
    }
#else
    (void)level;
    chain_forward_block_impl(kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch);
#endif
}

}  // namespace cpu
}  // namespace pfc

#endif  /* PFC_ROWWISE_CPU_H */
