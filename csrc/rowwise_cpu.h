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

/* s[r] = b + sum_i w[i] xt[i, r], LANES rows at a time with the partial sums
 * held in registers. */
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

/* -- backward ---------------------------------------------------------------
 *
 * The VJP of a block through layers K-1 .. 0.  The forward is recomputed
 * block by block, keeping every layer's (transposed) input; the gradient
 * block gt then runs back through the layers.  Planar layers are vectorised
 * like their forward (the one transcendental pair per row in simd lanes, the
 * parameter sums as contiguous reductions); the other kinds have no
 * transcendental in their VJP and take the row functions.  Padding rows have
 * zero cotangents and so add nothing to the sums. */

template <typename T>
PFC_VM_INLINE void planar_backward_block(const T* work, int dim, const T* zt, T* xt_grad,
                                         const T* gld, T* acc, T* scratch) {
    const T* uhat = work;
    const T* w = work + dim;
    const T b = work[2 * dim], c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T* t = scratch;
    T* ds = scratch + BLOCK_ROWS;
    T* gc = scratch + 2 * BLOCK_ROWS;
    block_dot(w, b, dim, zt, t);                 /* s = w.z + b */
    block_dot(uhat, T(0), dim, xt_grad, ds);     /* g.uhat, for now */
    T sum_gc = T(0), sum_ds = T(0);
    PFC_VM_PRAGMA_SIMD
    for (int r = 0; r < BLOCK_ROWS; ++r) {
        const T sr = t[r];
        const T tr = vm::tanh(sr);
        const T e = vm::exp(T(-2) * vm::detail::fabs_(sr));
        const T inv = T(1) / (T(1) + e);
        const T hp = T(4) * e * inv * inv;
        const T g_c = gld[r] * hp / (tr * tr + hp * sp);    /* dL/dc */
        const T d_s = hp * ds[r] - T(2) * g_c * c * tr;      /* dL/ds */
        t[r] = tr;
        ds[r] = d_s;
        gc[r] = g_c;
    }
    for (int r = 0; r < BLOCK_ROWS; ++r) {
        sum_gc += gc[r];
        sum_ds += ds[r];
    }
    T* acc_u = acc;
    T* acc_w = acc + dim;
    for (int i = 0; i < dim; ++i) {
        T* gi = xt_grad + (index_t)i * BLOCK_ROWS;
        const T* zi = zt + (index_t)i * BLOCK_ROWS;
        const T wi = w[i];
        T au = T(0), aw = T(0);
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < BLOCK_ROWS; ++r) {
            au += t[r] * gi[r];
            aw += ds[r] * zi[r];
            gi[r] += ds[r] * wi;
        }
        acc_u[i] += au + sum_gc * wi;
        acc_w[i] += aw + sum_gc * uhat[i];
    }
    acc[2 * dim] += sum_ds;
}

/* Scratch values the backward of one block needs. */
PFC_HOSTDEVICE PFC_INLINE long long chain_backward_scratch_size(int K, int dim) {
    return ((long long)K + 1) * dim * BLOCK_ROWS + 5LL * BLOCK_ROWS + 3LL * dim;
}

/* Rows [0, nrows) (nrows <= BLOCK_ROWS) of z, grad_x, grad_log_det: writes
 * grad_z and adds the rows' parameter-gradient contributions to acc (laid
 * out by acc_offsets). */
template <typename T>
PFC_VM_INLINE void chain_backward_block_impl(const int* kinds, const T* work,
                                             const long long* work_offsets,
                                             const long long* acc_offsets, int K, int dim,
                                             index_t nrows, const T* z, const T* grad_x,
                                             const T* grad_log_det, T* grad_z, T* acc,
                                             T* scratch) {
    const index_t stride = (index_t)dim * BLOCK_ROWS;
    T* stack = scratch;                      /* K transposed layer inputs */
    T* xt = stack + K * stride;              /* the gradient block */
    T* gld = xt + stride;
    T* tmp = gld + BLOCK_ROWS;               /* 3 * BLOCK_ROWS */
    T* ld = tmp + 3 * BLOCK_ROWS;            /* unused log-determinants */
    T* row = ld + BLOCK_ROWS;                /* 3 * dim */
    for (index_t r = 0; r < BLOCK_ROWS; ++r) {
        const bool real = r < nrows;
        for (int i = 0; i < dim; ++i) {
            stack[(index_t)i * BLOCK_ROWS + r] = real ? z[r * dim + i] : T(0);
            xt[(index_t)i * BLOCK_ROWS + r] = real ? grad_x[r * dim + i] : T(0);
        }
        gld[r] = real ? grad_log_det[r] : T(0);
    }
    for (int k = 0; k + 1 < K; ++k) {
        T* next = stack + (k + 1) * stride;
        for (index_t j = 0; j < stride; ++j) next[j] = stack[k * stride + j];
        const T* wk = work + work_offsets[k];
        switch (kinds[k]) {
            case KIND_PLANAR: planar_forward_block(wk, dim, next, ld, tmp); break;
            case KIND_RADIAL: radial_forward_block(wk, dim, next, ld, tmp); break;
            case KIND_SCALE: scale_forward_block(wk, dim, next, ld); break;
            default: shift_forward_block(wk, dim, next);
        }
    }
    for (int k = K - 1; k >= 0; --k) {
        const T* wk = work + work_offsets[k];
        const T* zt = stack + k * stride;
        T* acc_k = acc + acc_offsets[k];
        if (kinds[k] == KIND_PLANAR) {
            planar_backward_block(wk, dim, zt, xt, gld, acc_k, tmp);
            continue;
        }
        T* zr = row;
        T* gr = row + dim;
        for (index_t r = 0; r < nrows; ++r) {
            for (int i = 0; i < dim; ++i) {
                zr[i] = zt[(index_t)i * BLOCK_ROWS + r];
                gr[i] = xt[(index_t)i * BLOCK_ROWS + r];
            }
            layer_backward_row(kinds[k], wk, dim, zr, gr, gld[r], gr, acc_k);
            for (int i = 0; i < dim; ++i) xt[(index_t)i * BLOCK_ROWS + r] = gr[i];
        }
    }
    for (index_t r = 0; r < nrows; ++r) {
        for (int i = 0; i < dim; ++i) grad_z[r * dim + i] = xt[(index_t)i * BLOCK_ROWS + r];
    }
}

#undef PFC_XT

/* Each block kernel is compiled for the baseline ISA, AVX2+FMA and AVX-512,
 * and the dispatcher picks the copy for `level` (vm::cpu_level(), read once
 * per call by the caller). */
#if PFC_VM_DISPATCH
#define PFC_DEFINE_BLOCK_DISPATCH(name, PARAMS, ARGS)                        \
    template <typename T> void name##_base PARAMS { name##_impl ARGS; }       \
    template <typename T> PFC_VM_TARGET_AVX2 void name##_avx2 PARAMS {        \
        name##_impl ARGS;                                                     \
    }                                                                         \
    template <typename T> PFC_VM_TARGET_AVX512 void name##_avx512 PARAMS {    \
        name##_impl ARGS;                                                     \
    }                                                                         \
    template <typename T> inline void name(int level, PFC_UNPAREN PARAMS) {   \
        if (level == vm::LEVEL_AVX512) name##_avx512 ARGS;                    \
        else if (level == vm::LEVEL_AVX2) name##_avx2 ARGS;                   \
        else name##_base ARGS;                                                \
    }
#else
#define PFC_DEFINE_BLOCK_DISPATCH(name, PARAMS, ARGS)                        \
    template <typename T> inline void name(int level, PFC_UNPAREN PARAMS) {   \
        (void)level;                                                          \
        name##_impl ARGS;                                                     \
    }
#endif
#define PFC_UNPAREN(...) __VA_ARGS__

PFC_DEFINE_BLOCK_DISPATCH(chain_forward_block,
    (const int* kinds, const T* work, const long long* work_offsets, int K, int dim,
     index_t nrows, const T* z, T* x, T* log_det, T* scratch),
    (kinds, work, work_offsets, K, dim, nrows, z, x, log_det, scratch))

PFC_DEFINE_BLOCK_DISPATCH(chain_backward_block,
    (const int* kinds, const T* work, const long long* work_offsets,
     const long long* acc_offsets, int K, int dim, index_t nrows, const T* z,
     const T* grad_x, const T* grad_log_det, T* grad_z, T* acc, T* scratch),
    (kinds, work, work_offsets, acc_offsets, K, dim, nrows, z, grad_x, grad_log_det,
     grad_z, acc, scratch))

#undef PFC_DEFINE_BLOCK_DISPATCH
#undef PFC_UNPAREN

}  // namespace cpu
}  // namespace pfc

#endif  /* PFC_ROWWISE_CPU_H */
