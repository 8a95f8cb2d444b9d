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
 * (relative accuracy kept for large |s|), and log D as log1p(hp c) when
 * hp c > -1/2, else log(t^2 + hp sp) (no cancellation near c = -1).  Radial rows
 * whose squared distance under- or overflows take the row function, which
 * rescales.
 */
#ifndef PFC_ROWWISE_CPU_H
#define PFC_ROWWISE_CPU_H

#include "pfc_vmath.h"
#include "rowwise.h"

namespace pfc {
namespace cpu {

/* Rows per block: the block (transposed) and its per-row scratch stay in L1
 * through all layers of a chain.  Every sweep runs over all BLOCK_ROWS rows,
 * a compile-time trip count; a short last block is zero-padded and its
 * padding rows are computed and discarded. */
enum { BLOCK_ROWS = 128, LANES = 16 };

/* Inside a block the rows are stored transposed, xt[i * BLOCK_ROWS + r] =
 * x[r, i], so that every sweep runs along contiguous rows. */
#define PFC_XT(i, r) xt[(index_t)(i) * BLOCK_ROWS + (r)]

/* s[r] = b + sum_i w[i] (xt[i, r] - shift[i]) (shift may be null), LANES rows
 * at a time with the partial sums held in registers. */
template <typename T>
PFC_VM_INLINE void block_dot(const T* w, T b, int dim, const T* xt, T* s) {
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
        T acc[LANES];
        for (int l = 0; l < LANES; ++l) acc[l] = b;
        for (int i = 0; i < dim; ++i) {
            const T wi = w[i];
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) acc[l] += wi * PFC_XT(i, r0 + l);
        }
        for (int l = 0; l < LANES; ++l) s[r0 + l] = acc[l];
    }
}

template <typename T>
PFC_VM_INLINE void planar_forward_block(const T* work, int dim, T* xt, T* log_det, T* s) {
    const T* uhat = work;
    const T* w = work + dim;
    const T b = work[2 * dim], c = work[2 * dim + 1], sp = work[2 * dim + 2];
    block_dot(w, b, dim, xt, s);
    PFC_VM_PRAGMA_SIMD
    for (int r = 0; r < BLOCK_ROWS; ++r) {
        const T sr = s[r];
        const T tr = vm::tanh(sr);
        const T e = vm::exp(T(-2) * vm::detail::fabs_(sr));
        const T inv = T(1) / (T(1) + e);
        const T hp = T(4) * e * inv * inv;
        const T q = hp * c;
        /* Both forms, then a select: log1p keeps log D's relative accuracy
         * far into the tails (D -> 1), the sum of squares near D -> 0. */
        const T near_one = vm::log1p(q), near_zero = vm::log(tr * tr + hp * sp);
        log_det[r] += vm::detail::select_(q > T(-0.5), near_one, near_zero);
        s[r] = tr;
    }
    for (int i = 0; i < dim; ++i) {
        const T ui = uhat[i];
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) PFC_XT(i, r) += ui * s[r];
    }
}

template <typename T>
PFC_VM_INLINE void radial_forward_block(const T* work, int dim, T* xt, T* log_det, T* scratch) {
    const T alpha = work[0], s = work[1];
    const T* z0 = work + 3;
    T* dist2 = scratch;
    T* g = scratch + BLOCK_ROWS;
    T* row = scratch + 2 * BLOCK_ROWS;
    for (int r = 0; r < BLOCK_ROWS; ++r) dist2[r] = T(0);
    for (int i = 0; i < dim; ++i) {
        const T z0i = z0[i];
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) {
            const T di = PFC_XT(i, r) - z0i;
            dist2[r] += di * di;
        }
    }
    const T dim_minus_1 = T(dim - 1);
    PFC_VM_PRAGMA_SIMD
    for (int r = 0; r < BLOCK_ROWS; ++r) {
        const T rr = pfc::sqrt(dist2[r]);
        const T inv = T(1) / (alpha + rr);
        const T u = rr * inv, v = alpha * inv;
        const T gr = s * inv + u;                   /* 1 + beta h */
        const T g2 = u * (T(1) + v) + s * inv * v;  /* 1 + beta h + beta h' r */
        log_det[r] += dim_minus_1 * vm::log(gr) + vm::log(g2);
        g[r] = gr;
    }
    /* Rows whose squared distance under- or overflows (points within ~1e-150
     * of z0 or beyond ~1e150) are redone by the row function, which rescales. */
    const T tiny = T(1) / (limits<T>::max() * limits<T>::eps());
    const T huge = limits<T>::max() * limits<T>::eps();
    for (int r = 0; r < BLOCK_ROWS; ++r) {
        const T ss = dist2[r];
        if (ss < tiny || ss > huge) {
            const T rr = pfc::sqrt(ss);
            const T inv = T(1) / (alpha + rr);
            const T u = rr * inv, v = alpha * inv;
            log_det[r] -= dim_minus_1 * pfc::log(s * inv + u) + pfc::log(u * (T(1) + v) + s * inv * v);
            for (int i = 0; i < dim; ++i) row[i] = PFC_XT(i, r);
            log_det[r] += radial_forward_row(work, dim, row, row);
            for (int i = 0; i < dim; ++i) PFC_XT(i, r) = row[i];
            g[r] = T(1);  /* the update below then leaves the row as it is */
        }
    }
    for (int i = 0; i < dim; ++i) {
        const T z0i = z0[i];
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) PFC_XT(i, r) = z0i + g[r] * (PFC_XT(i, r) - z0i);
    }
}

template <typename T>
PFC_VM_INLINE void scale_forward_block(const T* work, int dim, T* xt, T* log_det) {
    for (int i = 0; i < dim; ++i) {
        const T ai = work[i];
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) PFC_XT(i, r) *= ai;
    }
    for (int r = 0; r < BLOCK_ROWS; ++r) log_det[r] += work[dim];
}

template <typename T>
PFC_VM_INLINE void shift_forward_block(const T* work, int dim, T* xt) {
    for (int i = 0; i < dim; ++i) {
        const T bi = work[i];
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) PFC_XT(i, r) += bi;
    }
}

/* Scratch values one block needs: the transposed rows, the block's log_det,
 * two per-row values and one row. */
PFC_HOSTDEVICE PFC_INLINE int chain_block_scratch_size(int dim) {
    return (dim + 3) * BLOCK_ROWS + dim;
}

/* One block of rows through layers [0, K): x = f(z) for rows [0, nrows) of
 * z and x (row-major, nrows <= BLOCK_ROWS), log_det written. */
template <typename T>
PFC_VM_INLINE void chain_forward_block_impl(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, const T* z, T* x, T* log_det,
                                            T* scratch) {
    T* xt = scratch;
    T* ld = scratch + (index_t)dim * BLOCK_ROWS;
    T* rest = ld + BLOCK_ROWS;
    for (index_t r = 0; r < nrows; ++r) {
        for (int i = 0; i < dim; ++i) PFC_XT(i, r) = z[r * dim + i];
    }
    for (index_t r = nrows; r < BLOCK_ROWS; ++r) {
        for (int i = 0; i < dim; ++i) PFC_XT(i, r) = T(0);
    }
    for (int r = 0; r < BLOCK_ROWS; ++r) ld[r] = T(0);
    for (int k = 0; k < K; ++k) {
        const T* wk = work + work_offsets[k];
        switch (kinds[k]) {
            case KIND_PLANAR: planar_forward_block(wk, dim, xt, ld, rest); break;
            case KIND_RADIAL: radial_forward_block(wk, dim, xt, ld, rest); break;
            case KIND_SCALE: scale_forward_block(wk, dim, xt, ld); break;
            default: shift_forward_block(wk, dim, xt);
        }
    }
    for (index_t r = 0; r < nrows; ++r) {
        for (int i = 0; i < dim; ++i) x[r * dim + i] = PFC_XT(i, r);
        log_det[r] = ld[r];
    }
}

#undef PFC_XT

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

/* The forward pass of one block (see chain_forward_block_impl); `level` is
 * vm::cpu_level(), read once per call. */
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
