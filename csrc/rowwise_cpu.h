/*
 * rowwise_cpu.h -- the CPU's vectorised forward and backward passes for runs
 * of row-wise flows (CPU only: it builds on pfc_vmath.h).
 *
 * The row functions of the family headers evaluate one row at a time, with
 * scalar libm transcendentals.  That is the right shape for the GPU (one
 * thread per row) and for the rarely-hot paths, but on the CPU a planar or
 * radial chain is bound by its tanh, exp, log and divisions.  Here a block
 * of rows, transposed into L1 (8 x 8 register tiles), goes through every
 * layer in turn, and each layer runs in sweeps over the block:
 *
 *   1. the per-row reduction (w.z + b for planar, |z - z0|^2 for radial),
 *   2. the transcendentals for all rows of the block in one `omp simd` loop
 *      of pfc::vm functions (branch-free, a few ulps), which the compiler
 *      turns into AVX2 / AVX-512 code,
 *   3. the row update x += coefficient * vector; for a planar layer followed
 *      by another the same pass also forms the next layer's w.x + b, and
 *      through a run of radial layers, the block kept relative to the next
 *      layer's centre, the next |x - z0'|^2, so the block is read once per
 *      layer.
 * Meanwhile the next block's rows are prefetched, a slice per layer.
 *
 * The block kernels are compiled three times (baseline x86-64, AVX2+FMA,
 * AVX-512) and chain_forward_block / chain_backward_block pick the copy for
 * the running CPU, as the array helpers of pfc_vmath.h do.
 *
 * The formulas are those of planar.h and radial.h, in forms without
 * branches, arranged so that a row-layer costs few vector operations and
 * divisions (once the sweeps are cheap, the per-row instruction count of
 * step 2 is what bounds a layer):
 *   planar: t = tanh(s) and hp = 1 - t^2 from one exponential and one
 *     division (vm::tanh_sech2, hp keeps its relative accuracy for large
 *     |s|; on AVX-512 the double pair takes its exponential from vm's
 *     tables, and a float chain's forward t from vm's tanh tables and
 *     hp = 1 - t^2, see planar_act_block); log D = log1p(hp c) where
 *     hp c > -1/2, else log(t^2 + hp sp), both through one
 *     vm::log_sum_normal (log(u) + c/u with u = fl(1 + q) and c its
 *     rounding error is log1p(q)), one more division.  In a chain
 *     with several planar or radial layers the factors are multiplied up
 *     instead and one or two logarithms per row end the block (LogProduct);
 *     where a layer's parameters bound its factors (near one, or in range:
 *     FACTORS_*), their sweep leaves out the per-row range checks.
 *   radial: log g and log g2 (each log1p(beta h) resp. log1p(beta h v) near
 *     1, as radial_eval) share the division of vm::log_sum2_normal.
 * Rows the branch-free forms do not cover are flagged in the simd loop and
 * redone by the row functions afterwards: a log argument outside
 * log_sum_normal's range (degenerate parameters, NaN rows) and, radial,
 * a squared distance that under- or overflows (the row functions rescale).
 * The backward recomputes the forward without log-determinants, which it
 * does not need, keeping t and hp of the planar layers for their VJPs.
 * The inverse of a chain runs the same way, last layer first, each planar
 * layer's root found for the whole block by a vectorised copy of
 * planar_solve (planar_solve_block), a radial layer's by its closed form;
 * and so does the inverse's VJP.
 */
#ifndef PFC_ROWWISE_CPU_H
#define PFC_ROWWISE_CPU_H

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "pfc_vmath.h"
#include "rowwise.h"

#if defined(__GNUC__) || defined(__clang__)
#define PFC_SIMD_REDUCE(...) _Pragma(PFC_STRINGIFY_(omp simd reduction(__VA_ARGS__)))
#define PFC_STRINGIFY_(x) #x
#else
#define PFC_SIMD_REDUCE(...)
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define PFC_UNROLL4 _Pragma("GCC unroll 4")
#else
#define PFC_UNROLL4
#endif

namespace pfc {
namespace cpu {

/* Rows per block: the block (transposed) and its per-row scratch stay in L1
 * through all layers of a chain.  Every sweep runs over a compile-time
 * number of rows: BLOCK_ROWS, or in the forward a quarter or half of it for
 * a short block, whose rows up to that count are zero-padded, computed and
 * discarded. */
enum { BLOCK_ROWS = 128, LANES = 16 };

/* Inside a block the rows are stored transposed, xt[i * BLOCK_ROWS + r] =
 * x[r, i], so that every sweep runs along contiguous rows. */
#define PFC_XT(xt, i, r) (xt)[(index_t)(i) * BLOCK_ROWS + (r)]

/* GCC/clang vector extensions hold the transposes' 8 x 8 register tiles,
 * a lone planar layer's row sums (lane_sums) and, with WIDE, the
 * radial sweeps' register sums; without them, or with
 * PFC_NO_VECTOR_EXT, plain loops take their place.  vec<T, N>::type is N
 * values of T, split by the compiler into the registers of the copy being
 * compiled (one zmm, two ymm or four xmm for 64 bytes). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(PFC_NO_VECTOR_EXT)
#define PFC_VECTOR_EXT 1
template <typename T, int N>
struct vec {
    typedef T type __attribute__((vector_size(N * sizeof(T))));
};
#else
#define PFC_VECTOR_EXT 0
#endif

/* WIDE, a template flag of the block kernels: true in their AVX-512 copy,
 * false in the others (PFC_DEFINE_BLOCK_DISPATCH).  The radial sweeps that
 * sum over the dimensions (block_dist2, block_dist2_dot,
 * radial_update_block) keep four 64-byte vectors of rows in registers only
 * there, whose 32 vector registers hold them.  The AVX2 copy's sixteen
 * cannot, and gcc kept the vectors on the stack: a 16-layer float32 radial
 * forward took 10 ms instead of 1.3 ms, its loss and gradient 20 instead of
 * 4.1 ms (AMD Zen 4 forced to that copy); there the sweeps run LANES rows
 * at a time. */

/* s[r] = b + sum_i w[i] xt[i, r], LANES rows at a time with the partial sums
 * held in registers. */
template <int R, typename T>
PFC_VM_INLINE void block_dot(const T* w, T b, int dim, const T* xt, T* s) {
    for (int r0 = 0; r0 < R; r0 += LANES) {
        T acc[LANES];
        for (int l = 0; l < LANES; ++l) acc[l] = b;
        for (int i = 0; i < dim; ++i) {
            const T wi = w[i];
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) acc[l] += wi * PFC_XT(xt, i, r0 + l);
        }
        for (int l = 0; l < LANES; ++l) s[r0 + l] = acc[l];
    }
}

/* The sum of a[0 .. LANES), pairwise (a is overwritten).  Sums over a
 * block's rows are kept as LANES partial sums and folded here: a plain
 * `omp simd reduction` of a float leaves gcc, which may not reassociate,
 * adding the vector's lanes one after another, a chain of LANES dependent
 * additions per sum that made the backward sweeps three times slower. */
template <int H, typename T>
PFC_VM_INLINE void lane_fold(T* a) {
    for (int l = 0; l < H; ++l) a[l] += a[l + H];
    if constexpr (H > 1) lane_fold<H / 2>(a);
}
template <typename T>
PFC_VM_INLINE T lane_sum(T* a) {
    lane_fold<LANES / 2>(a);
    return a[0];
}

/* -- transposes -------------------------------------------------------------
 *
 * Rows enter and leave a block through 8 x 8 tiles transposed in registers
 * (GCC/clang vector extensions: vpermt2pd / vshufpd and the like on AVX-512,
 * their narrower forms elsewhere), instead of one scalar load and store per
 * element with a 1 KiB stride.  Columns beyond the last multiple of 8 and a
 * short last block's rows go one element at a time. */

#if PFC_VECTOR_EXT
/* v[j] = row j of an 8 x 8 tile -> v[j] = column j. */
template <typename V>
PFC_VM_INLINE void transpose8(V* v) {
    V a[8], b[8];
    for (int j = 0; j < 8; j += 2) {
        a[j] = __builtin_shufflevector(v[j], v[j + 1], 0, 8, 2, 10, 4, 12, 6, 14);
        a[j + 1] = __builtin_shufflevector(v[j], v[j + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int j = 0; j < 8; j += 4) {
        for (int h = 0; h < 2; ++h) {
            b[j + h] = __builtin_shufflevector(a[j + h], a[j + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            b[j + h + 2] = __builtin_shufflevector(a[j + h], a[j + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    }
    for (int j = 0; j < 4; ++j) {
        v[j] = __builtin_shufflevector(b[j], b[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        v[j + 4] = __builtin_shufflevector(b[j], b[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#endif

/* xt[i, r] = z[r, i] for rows r < nrows of the row-major z, 0 beyond. */
template <int R, typename T>
PFC_VM_INLINE void load_block(const T* z, int dim, index_t nrows, T* xt) {
    index_t r0 = 0;
    int c8 = 0;
#if PFC_VECTOR_EXT
    typedef typename vec<T, 8>::type V;
    c8 = dim & ~7;
    for (; r0 + 8 <= nrows; r0 += 8) {
        for (int c0 = 0; c0 < c8; c0 += 8) {
            V v[8];
            for (int j = 0; j < 8; ++j) memcpy(&v[j], z + (r0 + j) * dim + c0, sizeof(V));
            transpose8(v);
            for (int j = 0; j < 8; ++j) memcpy(&PFC_XT(xt, c0 + j, r0), &v[j], sizeof(V));
        }
        for (int i = c8; i < dim; ++i) {
            for (int j = 0; j < 8; ++j) PFC_XT(xt, i, r0 + j) = z[(r0 + j) * dim + i];
        }
    }
#endif
    (void)c8;
    for (index_t r = r0; r < nrows; ++r) {
        for (int i = 0; i < dim; ++i) PFC_XT(xt, i, r) = z[r * dim + i];
    }
    for (index_t r = nrows; r < R; ++r) {
        for (int i = 0; i < dim; ++i) PFC_XT(xt, i, r) = T(0);
    }
}

/* x[r, i] = xt[i, r] for rows r < nrows. */
template <typename T>
PFC_VM_INLINE void store_block(const T* xt, int dim, index_t nrows, T* x) {
    index_t r0 = 0;
    int c8 = 0;
#if PFC_VECTOR_EXT
    typedef typename vec<T, 8>::type V;
    c8 = dim & ~7;
    for (; r0 + 8 <= nrows; r0 += 8) {
        for (int c0 = 0; c0 < c8; c0 += 8) {
            V v[8];
            for (int j = 0; j < 8; ++j) memcpy(&v[j], &PFC_XT(xt, c0 + j, r0), sizeof(V));
            transpose8(v);
            for (int j = 0; j < 8; ++j) memcpy(x + (r0 + j) * dim + c0, &v[j], sizeof(V));
        }
        for (int i = c8; i < dim; ++i) {
            for (int j = 0; j < 8; ++j) x[(r0 + j) * dim + i] = PFC_XT(xt, i, r0 + j);
        }
    }
#endif
    (void)c8;
    for (index_t r = r0; r < nrows; ++r) {
        for (int i = 0; i < dim; ++i) x[r * dim + i] = PFC_XT(xt, i, r);
    }
}

/* Part k of `parts` of a prefetch of the next block's rows: the block after
 * the one at p (BLOCK_ROWS rows of `width` values), for reading (RW = 0) or
 * writing (RW = 1).  A block takes tens of microseconds, long after the
 * hardware prefetchers have given up on a stream, so without this every
 * block would start with a few hundred cache misses.  The addresses are
 * formed as integers and only prefetched, never dereferenced: past the end
 * of an array they are harmless (prefetches do not fault). */
template <int RW, typename T>
PFC_VM_INLINE void prefetch_next(const T* p, int width, int k, int parts) {
#if defined(__GNUC__) || defined(__clang__)
    const uintptr_t bytes = (uintptr_t)BLOCK_ROWS * width * sizeof(T);
    const uintptr_t next = (uintptr_t)p + bytes;
    const uintptr_t lo = (bytes * k / parts) & ~(uintptr_t)63, hi = bytes * (k + 1) / parts;
    for (uintptr_t b = lo; b < hi; b += 64) __builtin_prefetch((const void*)(next + b), RW, 3);
#else
    (void)p; (void)width; (void)k; (void)parts;
#endif
}

/* Part k of `parts` of the next block's prefetch for a forward: its rows
 * of z to read, of x to write.  (A function, not a lambda in the kernel: a
 * lambda does not take its enclosing copy's target attribute, so gcc called
 * it out of line, and the 16-layer forward was 30-40% slower.) */
template <typename T>
PFC_VM_INLINE void prefetch_block_part(const T* z, const T* x, int dim, int k, int parts) {
    prefetch_next<0>(z, dim, k, parts);
    prefetch_next<1>(x, dim, k, parts);
}

/* a b + c rounded once (an FMA instruction in the AVX2 and AVX-512 copies). */
PFC_VM_INLINE double fma_(double a, double b, double c) { return __builtin_fma(a, b, c); }
PFC_VM_INLINE float fma_(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

/* The centre z0 in a radial layer's derived coefficients [alpha, s, beta, z0]
 * (radial_prepare). */
template <typename T>
PFC_VM_INLINE const T* radial_z0(const T* work) { return work + 3; }

/* Thresholds of the squared distance outside which a radial row is redone
 * by the row function (points within ~1e-146 of z0 or beyond ~1e146). */
template <typename T>
PFC_VM_INLINE T radial_tiny() { return T(1) / (limits<T>::max() * limits<T>::eps()); }
template <typename T>
PFC_VM_INLINE T radial_huge() { return limits<T>::max() * limits<T>::eps(); }

/* -- forward ---------------------------------------------------------------
 *
 * Each kernel maps the block zt to xt (xt may equal zt) and, when LD, adds
 * the layers' log-determinants to log_det. */

/* Planar layers run as: s = w.z + b for the block (block_dot, or fused
 * into the previous planar layer's update), the per-row transcendentals,
 * then the update x = z + uhat t, fused with the next planar layer's
 * w.x + b when there is one, so that the block is read once per layer. */

#if PFC_VM_DISPATCH
/* planar_act_block's float copy for AVX-512 (WIDE): t from the piecewise
 * polynomials of vm's float tanh_array (1.0 ulp, ~21 operations per 16 rows
 * instead of tanh_sech2's ~35), hp = 1 - t^2 by one FMA.  That hp is
 * accurate to ~1e-7 absolutely, not relatively where it is tiny, which the
 * forward's factor 1 + hp c and its t^2 + hp sp form (taken where hp > 1/2)
 * do not need; the backward, whose derivatives scale with hp, keeps
 * tanh_sech2.  A 16-layer float32 chain forward: -5% (paired A/B). */
template <int R>
PFC_VM_TARGET_AVX512 inline void planar_act_block_avx512(const float* s, float* t, float* hp) {
    const vm::detail::TanhTableF32 tab;
    for (int r = 0; r < R; r += 16) {
        const __m512 tr = vm::detail::tanh_zmm(tab, _mm512_loadu_ps(s + r));
        _mm512_storeu_ps(t + r, tr);
        _mm512_storeu_ps(hp + r, _mm512_fnmadd_ps(tr, tr, _mm512_set1_ps(1.0f)));
    }
}

/* The double copy: vm's tanh_sech2_zmm, tanh_sech2 with the tabled
 * exponential of the double tanh_array (hp as accurate as tanh_sech2's). */
template <int R>
PFC_VM_TARGET_AVX512 inline void planar_act_block_avx512(const double* s, double* t, double* hp) {
    const vm::detail::TanhTableF64 tab;
    for (int r = 0; r < R; r += 8) {
        __m512d tr, hr;
        vm::detail::tanh_sech2_zmm(tab, _mm512_loadu_pd(s + r), tr, hr);
        _mm512_storeu_pd(t + r, tr);
        _mm512_storeu_pd(hp + r, hr);
    }
}
#endif

/* Whether planar_act_block gives hp relatively accurate where it is tiny
 * without being asked: all but the float AVX-512 copy do. */
template <bool WIDE, typename T>
constexpr bool planar_act_relative_hp() {
    return !(PFC_VM_DISPATCH && WIDE && std::is_same<T, float>::value);
}

/* t = tanh(s), hp = 1 - t^2 for every row (s may be t).  WIDE: the AVX-512
 * copies above, except where the caller asks for RELATIVE_HP (the backward,
 * a lone layer's log_det: hp relatively accurate where it is tiny), which
 * the float copy does not give. */
template <int R = BLOCK_ROWS, bool WIDE = false, bool RELATIVE_HP = false, typename T>
PFC_VM_INLINE void planar_act_block(const T* s, T* t, T* hp) {
#if PFC_VM_DISPATCH
    if constexpr (WIDE && (planar_act_relative_hp<WIDE, T>() || !RELATIVE_HP)) {
        planar_act_block_avx512<R>(s, t, hp);
        return;
    }
#endif
    PFC_VM_PRAGMA_SIMD
    for (int r = 0; r < R; ++r) {
        T tr, hr;
        vm::tanh_sech2(s[r], tr, hr);
        t[r] = tr;
        hp[r] = hr;
    }
}

/* Log-determinant products.  In a chain with several planar or radial
 * layers the log-determinant is not taken layer by layer: per row the
 * layers' factors (D of a planar layer; g, with weight dim - 1, and g2 of a
 * radial one) are multiplied up, and one or two logarithms per row end the
 * block, instead of one or two per layer.  A product is 2^E P (1 + Q):
 *   Q collects the factors near 1 (1 + q with q > -1/2) as Q <- Q + q + Q q,
 *     so that log1p keeps its relative accuracy when the whole product is
 *     near 1 (a nearly-identity chain);
 *   P takes the factors below 1/2, given in a form without cancellation
 *     (planar t^2 + hp sp, radial (alpha + beta + r) / (alpha + r)), and Q
 *     whenever it leaves [-1/2, 1], so 1 + Q never loses digits;
 *   P is renormalised into [sqrt(1/2), sqrt(2)), its exponent moving to E,
 *     at the layers where it could otherwise leave the normal range
 *     (ChainLogDet::renormalise), so no product over- or underflows.
 * The rounding error is a few ulps relative in the product, i.e. a few ulps
 * absolute in the log-determinant, as in a sum of per-layer logarithms.
 * Rows with a factor outside log_sum_normal's range are flagged (ok false:
 * the product is left alone) and their layer's log-determinant is added by
 * the row function instead. */
template <typename T>
struct LogProduct {
    T* p;
    T* e;
    T* q;
};

template <int R, typename T>
PFC_VM_INLINE void log_product_init(LogProduct<T> a) {
    for (int r = 0; r < R; ++r) {
        a.p[r] = T(1);
        a.e[r] = a.q[r] = T(0);
    }
}

/* Row r of a times 1 + q (near_one) or d_far (otherwise), unless !ok;
 * with RENORM, P is renormalised (see ChainLogDet::renormalise).
 * SIDE is the sign of every q of the layer where it has one (-1: every
 * factor at most 1, +1: at least 1; 0: either), and Q is then tested
 * against one end of [-1/2, 1] only: with q <= 0, Q + q + Q q is at most
 * max(Q, 0) <= 1, and with q >= 0 at least (3 q - 1) / 2 >= -1/2 for
 * Q >= -1/2 (the rounded sums too, rounding being monotonic).  Each layer's
 * q has a sign (a planar layer's that of c, a radial one's that of beta),
 * and one compare less per factor is -2.4% on a 16-layer float32 radial
 * forward (-1.4% in float64). */
template <bool RENORM, int SIDE = 0, typename T>
PFC_VM_INLINE void log_product_mul(LogProduct<T> a, int r, T q, T d_far, bool near_one, bool ok) {
    using vm::detail::select_;
    const T qr = a.q[r];
    const T qn = select_(near_one & ok, (qr + q) + qr * q, qr);
    const bool fold = SIDE < 0   ? qn < T(-0.5)
                      : SIDE > 0 ? qn > T(1)
                                 : (qn > T(1)) | (qn < T(-0.5));
    const T factor = select_(fold, T(1) + qn, select_(!near_one & ok, d_far, T(1)));
    if (RENORM) {
        T k, m;
        vm::detail::log_reduce_normal(a.p[r] * factor, k, m);
        a.p[r] = m;
        a.e[r] += k;
    } else {
        a.p[r] *= factor;
    }
    a.q[r] = select_(fold, T(0), qn);
}

/* log(2^E P (1 + Q)) of row r: log(u + c) with u = P fl(1 + Q) and c the
 * rounding errors of 1 + Q and of that product (exact through an FMA), then
 * E ln 2 in two parts. */
template <typename T>
PFC_VM_INLINE T log_product_log(LogProduct<T> a, int r) {
    const T ln2_hi = sizeof(T) == 8 ? T(vm::detail::LOG_LN2_HI_D) : T(vm::detail::LOG_LN2_HI_F);
    const T ln2_lo = sizeof(T) == 8 ? T(vm::detail::LOG_LN2_LO_D) : T(vm::detail::LOG_LN2_LO_F);
    const T p = a.p[r], e = a.e[r], q = a.q[r];
    const T v = T(1) + q;
    const T cv = q - (v - T(1));        /* exact: v in [1/2, 2] */
    const T u = p * v;
    const T cu = fma_(p, v, -u) + p * cv;
    return e * ln2_hi + (e * ln2_lo + vm::log_sum_normal(u, cu));
}

/* log_det += log(ones) + weight log(weighted) for every row (the second
 * term only with `weighted_used`). */
template <int R, typename T>
PFC_VM_INLINE void log_product_flush(T* log_det, LogProduct<T> ones, LogProduct<T> weighted,
                                     T weight, bool weighted_used) {
    if (weighted_used) {
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) {
            log_det[r] += log_product_log(ones, r) + weight * log_product_log(weighted, r);
        }
    } else {
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) log_det[r] += log_product_log(ones, r);
    }
}

/* |log2 x| <= log2_magnitude(x) for a positive normal x; a bound beyond
 * any span limit for anything else (0, subnormal, inf, NaN). */
template <typename T>
PFC_VM_INLINE int log2_magnitude(T x) {
    const int mant = sizeof(T) == 8 ? 52 : 23, bias = sizeof(T) == 8 ? 1023 : 127;
    const int biased = (int)((vm::detail::bits(x) >> mant) & (2 * bias + 1));
    if (!(x > T(0)) || biased == 0 || biased == 2 * bias + 1) return 1 << 20;
    const int e = biased - bias;   /* x in [2^e, 2^(e+1)) */
    return (e < 0 ? -e : e) + 1;
}

/* How a layer's log-determinant factors go into a chain's products
 * (ChainLogDet::layer_factors): each row's checked against
 * vm::log_sum_normal's range; the same with the products renormalised at
 * this layer; or, where the layer's parameters bound its factors, with no
 * checks and no flags: in that range and at most 1, or also near one,
 * 1 + q with q > -1/2, without the choice of each factor's form either,
 * every factor at most 1 (BELOW) or at least 1 (ABOVE).  The last three
 * hold for most layers of a trained or randomly initialised flow. */
enum {
    FACTORS_CHECKED,
    FACTORS_RENORMALISE,
    FACTORS_IN_RANGE,
    FACTORS_NEAR_ONE_BELOW,
    FACTORS_NEAR_ONE_ABOVE
};

constexpr bool factors_near_one(int factors) {
    return factors == FACTORS_NEAR_ONE_BELOW || factors == FACTORS_NEAR_ONE_ABOVE;
}

/* CALL(F) with F the compile-time FACTORS_* constant equal to the run-time
 * `factors`: the kernels take the way as a template flag.  A macro, not a
 * function taking a callable: a lambda's body would not inherit the
 * AVX-512 copy's target attribute. */
#define PFC_WITH_FACTORS(factors, CALL)                                  \
    switch (factors) {                                                   \
        case FACTORS_NEAR_ONE_BELOW: CALL(FACTORS_NEAR_ONE_BELOW); break; \
        case FACTORS_NEAR_ONE_ABOVE: CALL(FACTORS_NEAR_ONE_ABOVE); break; \
        case FACTORS_IN_RANGE: CALL(FACTORS_IN_RANGE); break;             \
        case FACTORS_RENORMALISE: CALL(FACTORS_RENORMALISE); break;       \
        default: CALL(FACTORS_CHECKED); break;                            \
    }

/* log_product_mul's SIDE for a FACTORS_* way. */
constexpr int factors_side(int factors) {
    return factors == FACTORS_NEAR_ONE_ABOVE                                   ? 1
           : factors == FACTORS_IN_RANGE || factors == FACTORS_NEAR_ONE_BELOW ? -1
                                                                                : 0;
}

/* A block's log-determinants through a chain: ld summed layer by layer,
 * and, when the chain has several planar or radial layers, their factors
 * in two products (weight 1: planar D, radial g2; weight dim - 1: radial
 * g), in `space` (6 per row), logged once at the end.
 * Renormalising P is a fifth of a product's work per factor, and needed
 * only where P could leave the normal range; as scaling by a power of 2 is
 * exact, a product renormalised at some layers holds the same numbers as
 * one renormalised at every layer.  Every factor a layer multiplies into P
 * -- 1 + Q folded in, within [1/4, 2 max(1, g_max)], or a far factor,
 * within [g_min / 2, 1/2], where g_min, g_max bound the layer's factor (1
 * and sp for a planar layer, 1 and s/alpha for a radial one) -- lies within
 * [2^-n, 2^n] for n = 3 + log2_magnitude(sp or s/alpha).  Each
 * product's span adds these bounds up since its last renormalisation,
 * which happens at the layer where the sum would pass SPAN_LIMIT (|log2 P|
 * of 100 keeps float32 products, their factors and log_product_log's
 * correction terms normal).  -4 to -7% on the 16-layer float32 planar and
 * radial forwards, -2 to -10% in float64. */
template <typename T>
struct ChainLogDet {
    enum { SPAN_LIMIT = sizeof(T) == 8 ? 900 : 100 };
    LogProduct<T> ones, weighted;
    bool product, radial;
    int span_ones, span_weighted;

    /* Whether a layer whose factor lies between 1 and g_bound (sp, s/alpha)
     * renormalises the products it multiplies into: `ones` (a planar layer)
     * or, with `both`, `weighted` too (a radial layer). */
    bool renormalise(T g_bound, bool both) {
        const int n = 3 + log2_magnitude(g_bound);
        const int span = both && span_weighted > span_ones ? span_weighted : span_ones;
        const bool renorm = span + n > SPAN_LIMIT;
        /* a renormalised P lies in [sqrt(1/2), sqrt(2)) */
        span_ones = renorm ? 1 : span_ones + n;
        if (both) span_weighted = renorm ? 1 : span_weighted + n;
        return renorm;
    }

    /* The FACTORS_* way of a layer whose factors lie between 1 and
     * g_bound = 1 + q_bound, every q of the sign of q_bound (a planar
     * layer: c and sp, whose D = 1 + hp c = t^2 + hp sp for hp in [0, 1]; a
     * radial one: beta / alpha and s / alpha, as g and g2 at every r >= 0),
     * renormalise()'s decision first.  Near one where q_bound lies in
     * (-1/2, 2^60); in range where it is below -1/2 and g_bound lies in
     * range with a margin of 2^10 for the factors' rounding. */
    int layer_factors(T q_bound, T g_bound, bool both) {
        if (renormalise(g_bound, both)) return FACTORS_RENORMALISE;
        if ((q_bound > T(-0.5)) & (q_bound <= T(0))) return FACTORS_NEAR_ONE_BELOW;
        if ((q_bound > T(0)) & (q_bound < T(0x1p60))) return FACTORS_NEAR_ONE_ABOVE;
        return (q_bound <= T(-0.5)) & vm::log_sum_in_range(T(0x1p-10) * g_bound) &
                       vm::log_sum_in_range(T(0x1p10) * g_bound)
                   ? FACTORS_IN_RANGE
                   : FACTORS_CHECKED;
    }
};

template <int R, typename T>
PFC_VM_INLINE ChainLogDet<T> chain_log_det_begin(const int* kinds, int K, T* ld, T* space) {
    ChainLogDet<T> c;
    c.ones = {space, space + BLOCK_ROWS, space + 2 * BLOCK_ROWS};
    c.weighted = {space + 3 * BLOCK_ROWS, space + 4 * BLOCK_ROWS, space + 5 * BLOCK_ROWS};
    int num_planar = 0, num_radial = 0;
    for (int k = 0; k < K; ++k) {
        num_planar += kinds[k] == KIND_PLANAR;
        num_radial += kinds[k] == KIND_RADIAL;
    }
    c.product = num_planar + num_radial > 1;
    c.radial = num_radial > 0;
    c.span_ones = c.span_weighted = 0;
    for (int r = 0; r < R; ++r) ld[r] = T(0);
    if (c.product) {
        log_product_init<R>(c.ones);
        log_product_init<R>(c.weighted);
    }
    return c;
}

template <int R, typename T>
PFC_VM_INLINE void chain_log_det_end(const ChainLogDet<T>& c, int dim, T* ld) {
    if (c.product) log_product_flush<R>(ld, c.ones, c.weighted, T(dim - 1), c.radial);
}

/* log D of row r from t and hp, added to log_det[r] or, with PROD,
 * multiplied into prod; false (nothing done) where the factor is out of
 * vm::log_sum_normal's range. */
template <bool PROD, bool RENORM, typename T>
PFC_VM_INLINE bool planar_log_d_row(T c, T sp, T tr, T hp, int r, T* log_det,
                                    LogProduct<T> prod) {
    using vm::detail::select_;
    const T q = hp * c;
    const bool near_one = q > T(-0.5);
    const T u1 = T(1) + q;
    const T d_far = tr * tr + hp * sp;
    const T u = select_(near_one, u1, d_far);
    const bool ok = vm::log_sum_in_range(u);
    if (PROD) {
        log_product_mul<RENORM>(prod, r, q, d_far, near_one, ok);
    } else {
        const T cu = select_(near_one, q - (u1 - T(1)), T(0));
        log_det[r] += select_(ok, vm::log_sum_normal(u, cu), T(0));
    }
    return ok;
}

/* log_det += log D (or, with PROD, D multiplied into `prod`) for every row
 * from t and hp: log1p(q) while q = hp c > -1/2 (relative accuracy far into
 * the tails, D -> 1), the log of the sum of squares below (D -> 0 without
 * cancellation), one log_sum of the selected pair.  Rows whose factor is out
 * of vm::log_sum_normal's range (D or 1 + hp c subnormal, huge, inf or NaN:
 * degenerate parameters or a NaN row) are flagged and their log D added by
 * planar_log_d.  flag: scratch.
 * FACTORS (ChainLogDet::layer_factors; without PROD, FACTORS_CHECKED) can
 * spare the checks: in range, every row's factor goes into the products;
 * near one, it is 1 + q, without the sums of squares either: 117 -> 41
 * cycles per float32 block and layer.  (A NaN row carries its NaN through the products to
 * the logarithm, as the flagged row would through planar_log_d.)
 * This runs as a sweep of its own after planar_act_block's: fused into one
 * loop, the two kept too many values live (gcc spilled them to the stack)
 * and one long dependency chain per row; apart, a 16-layer planar forward
 * is 9-13% faster. */
template <int R, bool PROD, int FACTORS, typename T>
PFC_VM_INLINE void planar_logdet_block(const T* work, int dim, const T* t, const T* hp,
                                       T* log_det, T* flag, LogProduct<T> prod) {
    static_assert(PROD || FACTORS == FACTORS_CHECKED, "the FACTORS_* ways are the products'");
    constexpr bool RENORM = FACTORS == FACTORS_RENORMALISE;
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    constexpr int SIDE = factors_side(FACTORS);
    if constexpr (factors_near_one(FACTORS)) {
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) {
            log_product_mul<false, SIDE>(prod, r, hp[r] * c, T(1), true, true);
        }
        return;
    } else if constexpr (FACTORS == FACTORS_IN_RANGE) {
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) {
            const T q = hp[r] * c;
            log_product_mul<false, SIDE>(prod, r, q, t[r] * t[r] + hp[r] * sp, q > T(-0.5), true);
        }
        return;
    }
    int nout = 0;
    PFC_SIMD_REDUCE(+ : nout)
    for (int r = 0; r < R; ++r) {
        const bool ok = planar_log_d_row<PROD, RENORM>(c, sp, t[r], hp[r], r, log_det, prod);
        flag[r] = vm::detail::select_(ok, T(0), T(1));
        nout += !ok;
    }
    if (nout != 0) {
        for (int r = 0; r < R; ++r) {
            if (flag[r] != T(0)) log_det[r] += planar_log_d(t[r], hp[r], c, sp);
        }
    }
}

/* planar_logdet_block into a chain's ld or its products (ChainLogDet). */
template <int R, typename T>
PFC_VM_INLINE void planar_logdet_chain(ChainLogDet<T>& lds, const T* work, int dim,
                                       const T* t, const T* hp, T* ld, T* flag) {
    if (!lds.product) {
        planar_logdet_block<R, false, FACTORS_CHECKED>(work, dim, t, hp, ld, flag, lds.ones);
        return;
    }
    /* c (w.u > -0.43 makes it near one) and sp */
#define PFC_PLANAR_LOGDET(F) \
    planar_logdet_block<R, true, F>(work, dim, t, hp, ld, flag, lds.ones)
    PFC_WITH_FACTORS(lds.layer_factors(work[2 * dim + 1], work[2 * dim + 2], false),
                     PFC_PLANAR_LOGDET)
#undef PFC_PLANAR_LOGDET
}

/* xt = zt + uhat t^T, or with SUB (the inverse) zt - uhat t^T; xt may be
 * zt. */
template <int R, bool SUB = false, typename T>
PFC_VM_INLINE void planar_update_block(const T* uhat, int dim, const T* zt, T* xt, const T* t) {
    for (int i = 0; i < dim; ++i) {
        const T ui = SUB ? -uhat[i] : uhat[i];
        const T* zi = zt + (index_t)i * BLOCK_ROWS;
        T* xi = xt + (index_t)i * BLOCK_ROWS;
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) xi[r] = zi[r] + ui * t[r];
    }
}

/* The planar sweep: xt = zt + sum_{j < NU} uhat_j t_j^T, the updates of NU
 * consecutive planar layers in order (rounded as NU sweeps of one would
 * round them; with SUB, the inverse's zt - uhat_j t_j^T), and s_d = w_d.xt
 * + b_d for d < ND, the next planar layers' dot products (of zt where NU =
 * 0), LANES rows at a time with the t_j and the partial sums in registers.
 * The block is read (and written) once for all of them: one load, NU + ND
 * FMAs and one store per value, where a sweep per layer costs a load and a
 * store per FMA pair. */
template <int R, int NU, int ND, bool SUB = false, typename T>
PFC_VM_INLINE void planar_sweep(const T* const* uhat, const T* const* t, const T* const* w,
                                const T* b, T* const* s, int dim, const T* zt, T* xt) {
    static_assert(NU + ND > 0 && NU <= 2 && ND <= 2, "one or two layers each way");
    for (int r0 = 0; r0 < R; r0 += LANES) {
        T tl[NU > 0 ? NU : 1][LANES], acc[ND > 0 ? ND : 1][LANES];
        for (int l = 0; l < LANES; ++l) {
            for (int j = 0; j < NU; ++j) tl[j][l] = t[j][r0 + l];
            for (int d = 0; d < ND; ++d) acc[d][l] = b[d];
        }
        PFC_UNROLL4
        for (int i = 0; i < dim; ++i) {
            T ui[NU > 0 ? NU : 1], wi[ND > 0 ? ND : 1];
            for (int j = 0; j < NU; ++j) ui[j] = SUB ? -uhat[j][i] : uhat[j][i];
            for (int d = 0; d < ND; ++d) wi[d] = w[d][i];
            const T* zi = zt + (index_t)i * BLOCK_ROWS + r0;
            T* xi = xt + (index_t)i * BLOCK_ROWS + r0;
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                T xv = zi[l];
                for (int j = 0; j < NU; ++j) xv += ui[j] * tl[j][l];
                if (NU > 0) xi[l] = xv;
                for (int d = 0; d < ND; ++d) acc[d][l] += wi[d] * xv;
            }
        }
        for (int d = 0; d < ND; ++d) {
            for (int l = 0; l < LANES; ++l) s[d][r0 + l] = acc[d][l];
        }
    }
}

/* The update of planar layer `work` (with SUB, the inverse's), fused with
 * the next layer's w.x + b into s when that layer (next_kind, next_work) is
 * planar; returns whether it was. */
template <int R, bool SUB = false, typename T>
PFC_VM_INLINE bool planar_update_next(const T* work, int dim, const T* zt, T* xt, const T* t,
                                      int next_kind, const T* next_work, T* s) {
    if (next_kind == KIND_PLANAR) {
        const T* w = next_work + dim;
        planar_sweep<R, 1, 1, SUB>(&work, &t, &w, &next_work[2 * dim], &s, dim, zt, xt);
        return true;
    }
    planar_update_block<R, SUB>(work, dim, zt, xt, t);
    return false;
}

/* dist2[r] = |xt[:, r] - z0|^2.  A row's sum is a chain of dim dependent
 * FMAs.  With WIDE four 64-byte vectors of rows are summed at a time,
 * their sums in registers: four chains in flight (-6% on a 16-layer float32
 * radial forward, -11% on its loss and gradient, where block_dist2_dot's
 * per-dimension loads and stores of both sums go too); otherwise LANES rows
 * at a time, out-of-order execution overlapping the next rows' chains. */
template <bool WIDE, int R, typename T>
PFC_VM_INLINE void block_dist2(const T* z0, int dim, const T* xt, T* dist2) {
#if PFC_VECTOR_EXT
    if constexpr (WIDE) {
        enum { VL = 64 / sizeof(T), G = R >= 4 * VL ? 4 : R / VL };
        typedef typename vec<T, VL>::type V;
        for (int r0 = 0; r0 < R; r0 += G * VL) {
            V acc[G];
            for (int g = 0; g < G; ++g) acc[g] = V{};
            for (int i = 0; i < dim; ++i) {
                const T* xi = xt + (index_t)i * BLOCK_ROWS + r0;
                const T z0i = z0[i];
                for (int g = 0; g < G; ++g) {
                    V x;
                    memcpy(&x, xi + g * VL, sizeof(V));
                    const V d = x - z0i;
                    acc[g] += d * d;
                }
            }
            memcpy(dist2 + r0, acc, sizeof(acc));
        }
        return;
    }
#endif
    for (int r0 = 0; r0 < R; r0 += LANES) {
        T acc[LANES];
        for (int l = 0; l < LANES; ++l) acc[l] = T(0);
        PFC_UNROLL4
        for (int i = 0; i < dim; ++i) {
            const T z0i = z0[i];
            const T* xi = xt + (index_t)i * BLOCK_ROWS + r0;
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const T di = xi[l] - z0i;
                acc[l] += di * di;
            }
        }
        for (int l = 0; l < LANES; ++l) dist2[r0 + l] = acc[l];
    }
}

/* dist2[r] = |vt[:, r] - z0|^2 and dot[r] = gt[:, r].(vt[:, r] - z0), the
 * squared distance and the projection a radial layer's VJPs need (summed
 * as in block_dist2). */
template <bool WIDE, typename T>
PFC_VM_INLINE void block_dist2_dot(const T* z0, int dim, const T* vt, const T* gt, T* dist2,
                                   T* dot) {
#if PFC_VECTOR_EXT
    if constexpr (WIDE) {
        enum { VL = 64 / sizeof(T), G = 4 };
        typedef typename vec<T, VL>::type V;
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += G * VL) {
            V d2[G], pr[G];
            for (int g = 0; g < G; ++g) d2[g] = pr[g] = V{};
            for (int i = 0; i < dim; ++i) {
                const T* vi = vt + (index_t)i * BLOCK_ROWS + r0;
                const T* gi = gt + (index_t)i * BLOCK_ROWS + r0;
                const T z0i = z0[i];
                for (int g = 0; g < G; ++g) {
                    V v, gv;
                    memcpy(&v, vi + g * VL, sizeof(V));
                    memcpy(&gv, gi + g * VL, sizeof(V));
                    const V d = v - z0i;
                    d2[g] += d * d;
                    pr[g] += gv * d;
                }
            }
            memcpy(dist2 + r0, d2, sizeof(d2));
            memcpy(dot + r0, pr, sizeof(pr));
        }
        return;
    }
#endif
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
        T d2[LANES], pr[LANES];
        for (int l = 0; l < LANES; ++l) d2[l] = pr[l] = T(0);
        PFC_UNROLL4
        for (int i = 0; i < dim; ++i) {
            const T z0i = z0[i];
            const T* vi = vt + (index_t)i * BLOCK_ROWS + r0;
            const T* gi = gt + (index_t)i * BLOCK_ROWS + r0;
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const T di = vi[l] - z0i;
                d2[l] += di * di;
                pr[l] += gi[l] * di;
            }
        }
        for (int l = 0; l < LANES; ++l) {
            dist2[r0 + l] = d2[l];
            dot[r0 + l] = pr[l];
        }
    }
}

/* The log-determinant of a radial layer at one row, from inv = 1/(alpha + r),
 * u = r inv, v = alpha inv and g = 1 + beta inv: (dim - 1) log g + log g2,
 * each log1p(beta h) resp. log1p(beta h v) near 1 (as radial_eval), the
 * two sharing the division of vm::log_sum2_normal; or, with PROD, g and g2
 * multiplied into prod_g, prod_g2 and 0 returned.  Where FACTORS (the
 * products' way, ChainLogDet::layer_factors) checks them, sets bad where a
 * factor leaves vm::log_sum_normal's range (nothing is multiplied in then);
 * in range needs no check, and near one no choice between 1 + q and the
 * factor itself either. */
template <bool PROD, int FACTORS, typename T>
PFC_VM_INLINE T radial_log_det_row(T s, T beta, T inv, T u, T v, T gr, T dim_minus_1, bool& bad,
                                   int r, LogProduct<T> prod_g, LogProduct<T> prod_g2) {
    using vm::detail::select_;
    static_assert(PROD || FACTORS == FACTORS_CHECKED, "the FACTORS_* ways are the products'");
    constexpr bool RENORM = FACTORS == FACTORS_RENORMALISE;
    constexpr int SIDE = factors_side(FACTORS);
    const T q = beta * inv, q2 = q * v;         /* g - 1, g2 - 1 */
    if constexpr (factors_near_one(FACTORS)) {
        log_product_mul<false, SIDE>(prod_g, r, q, T(1), true, !bad);
        log_product_mul<false, SIDE>(prod_g2, r, q2, T(1), true, !bad);
        return T(0);
    }
    const T g2 = u * (T(1) + v) + s * inv * v;  /* 1 + beta h + beta h' r */
    const bool n1 = q > T(-0.5), n2 = q2 > T(-0.5);
    const T u1 = T(1) + q, u2 = T(1) + q2;
    const T a1 = select_(n1, u1, gr), a2 = select_(n2, u2, g2);
    if (FACTORS == FACTORS_CHECKED || RENORM) {
        bad = bad | !(vm::log_sum_in_range(a1) & vm::log_sum_in_range(a2));
    }
    /* For dim = 1, g's factor or logarithm is multiplied by dim - 1 = 0
     * (the products' flush weighs prod_g by it); both are finite where the
     * row is not flagged.  (Masking with a separate `dim > 1` flag made
     * gcc move the vector masks through general registers.) */
    if (PROD) {
        log_product_mul<RENORM, SIDE>(prod_g, r, q, gr, n1, !bad);
        log_product_mul<RENORM, SIDE>(prod_g2, r, q2, g2, n2, !bad);
        return T(0);
    }
    T l1, l2;
    vm::log_sum2_normal(a1, select_(n1, q - (u1 - T(1)), T(0)),
                        a2, select_(n2, q2 - (u2 - T(1)), T(0)), l1, l2);
    return dim_minus_1 * l1 + l2;
}

/* The non-negative root r of r^2 + (s - rho) r - alpha rho = 0 for rho > 0
 * (radial_solve_r without branches; sqrt_alpha = sqrt(alpha)). */
template <typename T>
PFC_VM_INLINE T radial_root_row(T sqrt_alpha, T s, T rho) {
    using vm::detail::select_;
    const T b = s - rho;
    const T tq = T(2) * sqrt_alpha * pfc::sqrt(rho);
    const T ab = vm::detail::fabs_(b);
    const T hi = select_(ab > tq, ab, tq), lo = select_(ab > tq, tq, ab);
    const T ratio = lo / hi;
    const T disc = hi * pfc::sqrt(T(1) + ratio * ratio);
    const T den = T(0.5) * b + T(0.5) * disc;
    return select_(b <= T(0), T(0.5) * disc - T(0.5) * b, (T(0.25) * tq) * (tq / den));
}

/* The update of a radial layer for the block's rows: out = z0 + f (in - z0)
 * or, with CENTRED (`in` holds z - z0, see radial_map_chain), z0 + f in.
 * With NEXT (a radial layer with centre next_z0 follows) the rows are left
 * centred on next_z0 -- the shift z0 - next_z0 takes z0's place -- and
 * dist2 = |out|^2, the next layer's squared distances: the block is read
 * once for both, LANES rows at a time with their factors and sums in
 * registers, and through a run of radial layers a row-layer costs two FMAs
 * per dimension instead of two subtractions and two FMAs (with the
 * near-one products of ChainLogDet::layer_factors, a 16-layer radial
 * forward of 65,536 rows went from 1.05 to 0.89 ms in float32 and from 2.18
 * to 2.03 ms in float64), with WIDE four vectors of rows at a time.
 * With FLAGGED, rows with flag[r] != 0 keep their input, made absolute, for
 * the row function (their dist2 is left to it); every other row gets the
 * same numbers with or without flagged rows beside it. */
template <bool WIDE, bool FLAGGED, bool CENTRED, bool NEXT, int R, typename T>
PFC_VM_INLINE void radial_update_block(const T* z0, int dim, const T* in, T* out, const T* f,
                                       const T* flag, const T* next_z0, T* dist2) {
    using vm::detail::select_;
#if PFC_VECTOR_EXT
    if constexpr (WIDE) {
        enum { VL = 64 / sizeof(T), G = R >= 4 * VL ? 4 : R / VL };
        typedef typename vec<T, VL>::type V;
        for (int r0 = 0; r0 < R; r0 += G * VL) {
            V fv[G], flv[G], acc[G];
            for (int g = 0; g < G; ++g) {
                memcpy(&fv[g], f + r0 + g * VL, sizeof(V));
                if (FLAGGED) memcpy(&flv[g], flag + r0 + g * VL, sizeof(V));
                acc[g] = V{};
            }
            for (int i = 0; i < dim; ++i) {
                const T* vi = in + (index_t)i * BLOCK_ROWS + r0;
                T* oi = out + (index_t)i * BLOCK_ROWS + r0;
                const T z0i = z0[i], shift = NEXT ? z0[i] - next_z0[i] : z0[i];
                for (int g = 0; g < G; ++g) {
                    V v;
                    memcpy(&v, vi + g * VL, sizeof(V));
                    V y = shift + fv[g] * (CENTRED ? v : v - z0i);
                    if (NEXT) acc[g] += y * y;
                    if (FLAGGED) y = flv[g] != T(0) ? (CENTRED ? v + z0i : v) : y;
                    memcpy(oi + g * VL, &y, sizeof(V));
                }
            }
            if (NEXT) memcpy(dist2 + r0, acc, sizeof(acc));
        }
        return;
    }
#endif
    for (int r0 = 0; r0 < R; r0 += LANES) {
        T fl[LANES], acc[LANES];
        for (int l = 0; l < LANES; ++l) {
            fl[l] = f[r0 + l];
            acc[l] = T(0);
        }
        PFC_UNROLL4
        for (int i = 0; i < dim; ++i) {
            const T z0i = z0[i], shift = NEXT ? z0[i] - next_z0[i] : z0[i];
            const T* vi = in + (index_t)i * BLOCK_ROWS + r0;
            T* oi = out + (index_t)i * BLOCK_ROWS + r0;
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const T y = shift + fl[l] * (CENTRED ? vi[l] : vi[l] - z0i);
                if (NEXT) acc[l] += y * y;
                oi[l] = FLAGGED ? select_(flag[r0 + l] != T(0), CENTRED ? vi[l] + z0i : vi[l], y)
                                : y;
            }
        }
        if (NEXT) {
            for (int l = 0; l < LANES; ++l) dist2[r0 + l] = acc[l];
        }
    }
}

/* radial_update_block with the template flags from run-time ones (only
 * the forward centres its blocks: RUNS). */
template <bool WIDE, bool FLAGGED, bool RUNS, int R, typename T>
PFC_VM_INLINE void radial_update(bool centred, const T* z0, int dim, const T* in, T* out,
                                 const T* f, const T* flag, const T* next_z0, T* dist2) {
    if (!RUNS) {
        radial_update_block<WIDE, FLAGGED, false, false, R>(z0, dim, in, out, f, flag, next_z0,
                                                       dist2);
    } else if (centred && next_z0) {
        radial_update_block<WIDE, FLAGGED, true, true, R>(z0, dim, in, out, f, flag, next_z0,
                                                       dist2);
    } else if (centred) {
        radial_update_block<WIDE, FLAGGED, true, false, R>(z0, dim, in, out, f, flag, next_z0,
                                                       dist2);
    } else if (next_z0) {
        radial_update_block<WIDE, FLAGGED, false, true, R>(z0, dim, in, out, f, flag, next_z0,
                                                       dist2);
    } else {
        radial_update_block<WIDE, FLAGGED, false, false, R>(z0, dim, in, out, f, flag, next_z0,
                                                       dist2);
    }
}

#if PFC_VM_DISPATCH
/* r = sqrt(ss) and 1 / (alpha + r) for every row, in the AVX-512 copy of
 * the forward (WIDE): from the 2^-14 estimates of vrsqrt14 and vrcp14,
 * refined by correction steps whose residuals are single FMAs,
 *   r = r0 + (ss - r0^2) h,          r0 ~ sqrt(ss), h ~ 1 / (2 r0),
 *   1/d = y + y (1 - d y),           y ~ 1/d,
 * once each in float32 (from r0 = ss y, h = y / 2 with y ~ 1/sqrt(ss)),
 * in float64 after one coupled step r0 <- r0 + r0 e, h <- h + h e with
 * e = 1/2 - r0 h for r0 and h, and twice for 1/d: faithful (measured over
 * 2^-60 < ss < 2^60 and 2^-300 < ss < 2^300 against wider precision:
 * float32 r 0.56 ulp, 1/d 0.53 ulp; float64 0.76 and 0.54 ulp).
 * vsqrt and vdiv hold the one port that runs them for ~20 (float32) or
 * ~40 (float64) cycles per vector, the estimates and corrections for a few
 * (a pass of their own: the factor sweep is gcc-vectorised scalar code):
 * a 16-layer radial forward is -6% in float32, -11% in float64 (paired
 * A/B on one thread).
 * Rows with ss = 0 or inf get NaN; they are flagged as out of range
 * (ss < tiny or > huge) and redone by the row function, as NaN rows carry
 * their NaN.  (The pragmas: gcc 12's estimate intrinsics, see
 * pfc_vmath.h's tanh.) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int R, typename T>
PFC_VM_TARGET_AVX512 inline void radial_root_recip_avx512(T alpha, const T* dist2, T* root,
                                                          T* recip) {
    using Z = vm::detail::Zmm<T>;
    using V = typename Z::v;
    constexpr bool F64 = sizeof(T) == 8;
    const typename Z::m all = Z::tail(Z::L);
    const V a = Z::set1(alpha), one = Z::set1(T(1)), half = Z::set1(T(0.5));
    for (int r = 0; r < R; r += Z::L) {
        const V ss = Z::load(dist2 + r, all);
        const V y = Z::rsqrt14(ss);
        V r0 = Z::mul(ss, y), h = Z::mul(half, y);
        if constexpr (F64) {
            const V e = Z::fnma(r0, h, half);
            r0 = Z::fma(r0, e, r0);
            h = Z::fma(h, e, h);
        }
        const V rr = Z::fma(Z::fnma(r0, r0, ss), h, r0);
        const V d = Z::add(a, rr);
        V yd = Z::rcp14(d);
        if constexpr (F64) yd = Z::fma(Z::fnma(d, yd, one), yd, yd);
        Z::store(root + r, rr, all);
        Z::store(recip + r, Z::fma(Z::fnma(d, yd, one), yd, yd), all);
    }
}
#pragma GCC diagnostic pop
#endif

/* The per-row half of a radial layer on a block, from the squared distances
 * dist2 = |z - z0|^2 (or |x - z0|^2 with INVERSE): the distance r = |z - z0|
 * -- for the inverse the root of r^2 + (s - rho) r - alpha rho = 0 with
 * rho = |x - z0| (radial_solve_r without branches) -- and the factor
 * f = g = 1 + beta h at r (1 / g for the inverse); with LD the forward
 * log-determinant at r in ldk, or with PROD its factors multiplied into
 * prod_g, prod_g2 (as FACTORS says: radial_log_det_row).  Rows
 * whose squared distance under- or overflows, or whose log arguments leave
 * vm::log_sum_normal's range (degenerate parameters, NaN rows, an inverse
 * at x = z0), get flag = 1 and are counted in the result.  With GIVEN, r
 * and 1 / (alpha + r) are read from root and recip
 * (radial_root_recip_avx512). */
template <bool INVERSE, bool LD, int R, bool PROD, int FACTORS, bool GIVEN, typename T>
PFC_VM_INLINE int radial_factors_block(const T* work, const T* dist2, const T* root,
                                       const T* recip, int dim, T* f, T* ldk, T* flag,
                                       LogProduct<T> prod_g, LogProduct<T> prod_g2) {
    using vm::detail::select_;
    const T alpha = work[0], s = work[1], beta = work[2];
    const T tiny = radial_tiny<T>(), huge = radial_huge<T>();
    const T dim_minus_1 = T(dim - 1);
    const T sqrt_alpha = INVERSE ? pfc::sqrt(alpha) : T(0);
    int nbad = 0;
    PFC_SIMD_REDUCE(+ : nbad)
    for (int r = 0; r < R; ++r) {
        const T ss = dist2[r];
        const T rr = GIVEN     ? root[r]
                     : INVERSE ? radial_root_row(sqrt_alpha, s, pfc::sqrt(ss))
                               : pfc::sqrt(ss);
        const T inv = GIVEN ? recip[r] : T(1) / (alpha + rr);
        const T u = rr * inv, v = alpha * inv;
        const T gr = s * inv + u;                   /* 1 + beta h */
        bool bad = (ss < tiny) | (ss > huge);
        if (LD) {
            const T l = radial_log_det_row<PROD, FACTORS>(s, beta, inv, u, v, gr, dim_minus_1,
                                                          bad, r, prod_g, prod_g2);
            if (!PROD) ldk[r] = l;
        }
        f[r] = INVERSE ? T(1) / gr : gr;
        nbad += bad;
        flag[r] = select_(bad, T(1), T(0));
    }
    return nbad;
}

/* radial_factors_block in the variant lds asks for: without
 * log-determinants (lds NULL), each layer's own, or the chain's products
 * (ChainLogDet::layer_factors).  GIVEN: see there. */
template <bool INVERSE, bool GIVEN, int R, typename T>
PFC_VM_INLINE int radial_factors(ChainLogDet<T>* lds, const T* work, const T* dist2,
                                 const T* root, const T* recip, int dim, T* f, T* ldk, T* flag) {
    const LogProduct<T> none = {};
    if (!lds) {
        return radial_factors_block<INVERSE, false, R, false, FACTORS_CHECKED, GIVEN>(
            work, dist2, root, recip, dim, f, ldk, flag, none, none);
    }
    if (!lds->product) {
        return radial_factors_block<INVERSE, true, R, false, FACTORS_CHECKED, GIVEN>(
            work, dist2, root, recip, dim, f, ldk, flag, none, none);
    }
    const LogProduct<T> g = lds->weighted, g2 = lds->ones;
    int nbad = 0;
    /* beta / alpha (its sign exactly beta's) and s / alpha */
#define PFC_RADIAL_FACTORS(F) \
    nbad = radial_factors_block<INVERSE, true, R, true, F, GIVEN>( \
        work, dist2, root, recip, dim, f, ldk, flag, g, g2)
    PFC_WITH_FACTORS(lds->layer_factors(work[2] / work[0], work[1] / work[0], true),
                     PFC_RADIAL_FACTORS)
#undef PFC_RADIAL_FACTORS
    return nbad;
}

/* A radial layer on a block (radial_forward_row, or with INVERSE
 * radial_inverse_row), `in` to `out` (which may be `in`): the factors of
 * radial_factors_block, then x = z0 + g (z - z0), resp. z = z0 + (x - z0) / g,
 * with the forward log-determinant added to the chain's ld, or multiplied
 * into its products when it keeps them (ChainLogDet *lds); without
 * log-determinants when lds is NULL.  Flagged rows keep their input through
 * the sweep and take the row function after it.
 * The factors' variants (which log-determinant, and how) and the update's
 * (centred or not, flagged or not) are chosen apart, so each is compiled
 * once per caller rather than once per pair of them.
 * Centred blocks (the forward only): with `centred`, `in` holds z - z0
 * instead of z (the rows relative to this layer's centre) and scratch[0, R)
 * their squared norms; with next_z0 (the centre of a radial layer that
 * follows) `out` is left centred on next_z0, scratch holding the squared
 * norms, and true returned; otherwise `out` holds the rows themselves.
 * Scratch: 6 R + dim. */
template <bool WIDE, bool INVERSE, int R, typename T>
PFC_VM_INLINE bool radial_map_chain(ChainLogDet<T>* lds, const T* work, int dim, const T* in,
                                    T* out, T* ld, T* scratch, bool centred = false,
                                    const T* next_z0 = nullptr) {
    const T* z0 = radial_z0(work);
    T* dist2 = scratch;
    T* f = scratch + BLOCK_ROWS;
    T* ldk = scratch + 2 * BLOCK_ROWS;
    T* flag = scratch + 3 * BLOCK_ROWS;
    T* root = scratch + 4 * BLOCK_ROWS;
    T* recip = scratch + 5 * BLOCK_ROWS;
    T* row = scratch + 6 * BLOCK_ROWS;
    if (!centred) block_dist2<WIDE, R>(z0, dim, in, dist2);
#if PFC_VM_DISPATCH
    constexpr bool GIVEN = WIDE && !INVERSE;
    if constexpr (GIVEN) radial_root_recip_avx512<R>(work[0], dist2, root, recip);
#else
    constexpr bool GIVEN = false;
#endif
    const int nbad = radial_factors<INVERSE, GIVEN, R>(lds, work, dist2, root, recip, dim, f,
                                                        ldk, flag);
    if (nbad == 0) {
        radial_update<WIDE, false, !INVERSE, R>(centred, z0, dim, in, out, f, flag, next_z0, dist2);
    } else {
        radial_update<WIDE, true, !INVERSE, R>(centred, z0, dim, in, out, f, flag, next_z0, dist2);
        for (int r = 0; r < R; ++r) {
            if (flag[r] == T(0)) continue;
            for (int i = 0; i < dim; ++i) row[i] = PFC_XT(out, i, r);
            /* radial_inverse_row returns log_det_inv, minus the forward's */
            const T l = INVERSE ? -radial_inverse_row(work, dim, row, row)
                                : radial_forward_row(work, dim, row, row);
            if (lds && lds->product) {
                ld[r] += l;
            } else {
                ldk[r] = l;
            }
            T ss = T(0);
            for (int i = 0; i < dim; ++i) {
                const T y = next_z0 ? row[i] - next_z0[i] : row[i];
                PFC_XT(out, i, r) = y;
                ss += y * y;
            }
            dist2[r] = ss;
        }
    }
    if (lds && !lds->product) {
        for (int r = 0; r < R; ++r) ld[r] += ldk[r];
    }
    return next_z0 != nullptr;
}

/* A scale (x = a z) or shift (x = z + b) layer on a block, or with INVERSE
 * its inverse (z = x / a -- the row function divides too -- resp. x - b).
 * log_det (if not NULL) gets a scale layer's forward log-determinant,
 * work[dim] = sum log|a_i|, in either direction. */
template <bool INVERSE, int R, typename T>
PFC_VM_INLINE void elementwise_map_block(int kind, const T* work, int dim, const T* in, T* out,
                                         T* log_det) {
    const bool scale = kind == KIND_SCALE;
    for (int i = 0; i < dim; ++i) {
        const T p = work[i];
        const T* vi = in + (index_t)i * BLOCK_ROWS;
        T* oi = out + (index_t)i * BLOCK_ROWS;
        if (scale) {
            PFC_VM_PRAGMA_SIMD
            for (int r = 0; r < R; ++r) oi[r] = INVERSE ? vi[r] / p : vi[r] * p;
        } else {
            PFC_VM_PRAGMA_SIMD
            for (int r = 0; r < R; ++r) oi[r] = INVERSE ? vi[r] - p : vi[r] + p;
        }
    }
    if (scale && log_det) {
        for (int r = 0; r < R; ++r) log_det[r] += work[dim];
    }
}

/* Scratch values one block of the forward or inverse needs: the transposed
 * rows, the block's log_det and its log-determinant products (6 per row),
 * and up to 9 more per row (the inverse's solve) and one row. */
PFC_HOSTDEVICE PFC_INLINE int chain_block_scratch_size(int dim) {
    return (dim + 16) * BLOCK_ROWS + dim;
}

/* At least nbytes of scratch aligned to `align` (a power of two: the
 * callers' SCRATCH_ALIGN) owned by the calling thread, or NULL, for the
 * block kernels run on the calling thread (batches below the parallel
 * threshold): an aligned_alloc and free per call cost a 64-row lone layer
 * 2-4% of its time.  Grown as needed, released when the thread exits.  A
 * kernel never calls back into Python or into another kernel, so a
 * thread's buffer is never in use twice at once. */
inline void* thread_scratch(size_t align, size_t nbytes) {
    struct Buffer {
        void* data = nullptr;
        size_t size = 0;
        ~Buffer() { std::free(data); }
    };
    thread_local Buffer buffer;
    if (nbytes > buffer.size || reinterpret_cast<std::uintptr_t>(buffer.data) % align != 0) {
        const size_t size = (nbytes + align - 1) / align * align;
        void* data = std::aligned_alloc(align, size);
        if (data == nullptr) return nullptr;
        std::free(buffer.data);
        buffer.data = data;
        buffer.size = size;
    }
    return buffer.data;
}

/* A lone planar layer (the flow on its own, as an MCMC step or a small
 * batch calls it) skips the transposes, which cost it more than its
 * arithmetic (37% of a 64-row float64 block): w.z + b comes from the
 * row-major rows, a vector register's lanes of rows at a time, each row's
 * partial sums folded across the rows by shuffles (lane_sums), and
 * x = z + uhat t is a row-major sweep. */
#if PFC_VECTOR_EXT
/* Lane j of sums: the sum of the lanes of a[j] (a is NL vectors of NL
 * lanes, NL = 4 or 8), pairwise by shuffles. */
template <typename V>
PFC_VM_INLINE void lane_sums(const V (&a)[4], V& sums) {
    const V b0 = __builtin_shufflevector(a[0], a[1], 0, 4, 2, 6) +
                 __builtin_shufflevector(a[0], a[1], 1, 5, 3, 7);
    const V b1 = __builtin_shufflevector(a[2], a[3], 0, 4, 2, 6) +
                 __builtin_shufflevector(a[2], a[3], 1, 5, 3, 7);
    sums = __builtin_shufflevector(b0, b1, 0, 1, 4, 5) + __builtin_shufflevector(b0, b1, 2, 3, 6, 7);
}
template <typename V>
PFC_VM_INLINE void lane_sums(const V (&a)[8], V& sums) {
    V b[4], c[2];
    for (int j = 0; j < 4; ++j) {
        b[j] = __builtin_shufflevector(a[2 * j], a[2 * j + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(a[2 * j], a[2 * j + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int j = 0; j < 2; ++j) {
        c[j] = __builtin_shufflevector(b[2 * j], b[2 * j + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(b[2 * j], b[2 * j + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    sums = __builtin_shufflevector(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
#endif

/* s[r] = w.z[r] + b for the rows [0, nrows) of the row-major z, 0 up to R.
 * NL rows at a time, in vectors of NL lanes: one register in the copy being
 * compiled (8 floats or doubles with WIDE, else 8 floats or 4 doubles).  A
 * shuffle across two ymm registers -- 8 doubles in the AVX2 copy -- went
 * through general registers and the stack: 38% of a 64-row float64 lone
 * layer on AMD Zen 1. */
template <bool WIDE, int R, typename T>
PFC_VM_INLINE void rows_dot(const T* w, T b, int dim, index_t nrows, const T* z, T* s) {
    index_t r0 = 0;
#if PFC_VECTOR_EXT
    constexpr int NL = (WIDE || sizeof(T) == 4) ? 8 : 4;
    typedef typename vec<T, NL>::type V;
    const int cv = dim & ~(NL - 1);
    for (; cv > 0 && r0 + NL <= nrows; r0 += NL) {
        V acc[NL];
        for (int j = 0; j < NL; ++j) {
            acc[j] = V{};
            for (int c0 = 0; c0 < cv; c0 += NL) {
                V zv, wv;
                memcpy(&zv, z + (r0 + j) * dim + c0, sizeof(V));
                memcpy(&wv, w + c0, sizeof(V));
                acc[j] += zv * wv;
            }
        }
        V sums;
        lane_sums(acc, sums);
        sums += b;
        memcpy(s + r0, &sums, sizeof(V));
        for (int j = 0; j < NL; ++j) {
            for (int i = cv; i < dim; ++i) s[r0 + j] += w[i] * z[(r0 + j) * dim + i];
        }
    }
#endif
    for (index_t r = r0; r < nrows; ++r) {
        T sr = b;
        for (int i = 0; i < dim; ++i) sr += w[i] * z[r * dim + i];
        s[r] = sr;
    }
    for (index_t r = nrows; r < R; ++r) s[r] = T(0);
}

/* x[r] = z[r] + uhat t[r] for the rows [0, nrows) of the row-major z and x
 * (x may be z).  Rows of one 64-byte vector (dim 16 floats or 8 doubles) go
 * with uhat in a register and no loop over the dimensions: a 64-row
 * float32 lone layer 0.86-0.89x the time (paired A/B through Python, AMD
 * Zen 4).  The same for rows of two vectors (16 doubles) was 1.02-1.07x. */
template <typename T>
PFC_VM_INLINE void rows_update(const T* uhat, int dim, index_t nrows, const T* t, const T* z,
                               T* x) {
#if PFC_VECTOR_EXT
    enum { VL = 64 / (int)sizeof(T) };
    if (dim == VL) {
        typedef typename vec<T, VL>::type V;
        V u;
        memcpy(&u, uhat, sizeof(V));
        for (index_t r = 0; r < nrows; ++r) {
            V row;
            memcpy(&row, z + r * VL, sizeof(V));
            row += u * t[r];
            memcpy(x + r * VL, &row, sizeof(V));
        }
        return;
    }
#endif
    for (index_t r = 0; r < nrows; ++r) {
        const T tr = t[r];
        PFC_VM_PRAGMA_SIMD
        for (int i = 0; i < dim; ++i) x[r * dim + i] = z[r * dim + i] + uhat[i] * tr;
    }
}

/* x = z + uhat tanh(w.z + b) and log_det for the rows [0, nrows) of the
 * row-major z and x (x may be z), a lone planar layer `work`; scratch: 5
 * BLOCK_ROWS. */
template <bool WIDE, int R, typename T>
PFC_VM_INLINE void planar_forward_rows(const T* work, int dim, index_t nrows, const T* z, T* x,
                                       T* log_det, T* scratch) {
    T* s = scratch;
    T* t = s + BLOCK_ROWS;
    T* hp = t + BLOCK_ROWS;
    T* ld = hp + BLOCK_ROWS;
    T* flag = ld + BLOCK_ROWS;
    rows_dot<WIDE, R>(work + dim, work[2 * dim], dim, nrows, z, s);
    /* a lone layer's log_det is hp c: relatively accurate in the tails */
    planar_act_block<R, WIDE, true>(s, t, hp);
    for (int r = 0; r < R; ++r) ld[r] = T(0);
    planar_logdet_block<R, false, FACTORS_CHECKED>(work, dim, t, hp, ld, flag, LogProduct<T>{});
    rows_update(work, dim, nrows, t, z, x);
    for (index_t r = 0; r < nrows; ++r) log_det[r] = ld[r];
}

/* The forward takes a run of planar layers two at a time.  With x the
 * pair's input, layer k + 1's pre-activation is
 *   w'.(x + uhat t) + b' = (w'.x + b') + (w'.uhat) t,
 * so both layers' dot products come from x, in the sweep that wrote it, and
 * one sweep applies both updates (planar_sweep): the block is read and
 * written once per pair instead of once per layer, and the sweep runs at
 * its FMA bound (AMD Zen 4: a 16-layer forward -6% in float32 and float64,
 * paired A/B on one thread).  x comes out rounded exactly as layer by
 * layer; s' differs from w'.x' by a rounding of the same order as x'
 * itself carries (tests: as accurate as the layers against the formula in
 * wider precision).  Layers are paired from the start of a run, an odd one
 * left last: planar_group is the number of planar layers from layer k on
 * that go together. */
PFC_VM_INLINE int planar_group(const int* kinds, int K, int k) {
    if (k >= K || kinds[k] != KIND_PLANAR) return 0;
    return k + 1 < K && kinds[k + 1] == KIND_PLANAR ? 2 : 1;
}

/* One block of rows through layers [0, K): x = f(z) for rows [0, nrows) of
 * z and x (row-major, nrows <= BLOCK_ROWS), log_det written.  With
 * `prefetch` another block follows and its rows are prefetched meanwhile
 * (without it, prefetches past the end of a small batch cost it ~1 us). */
template <bool WIDE, int R, typename T>
PFC_VM_INLINE void chain_forward_block_rows(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, bool prefetch, const T* z, T* x,
                                            T* log_det, T* scratch) {
    if (K == 1 && kinds[0] == KIND_PLANAR) {
        planar_forward_rows<WIDE, R>(work, dim, nrows, z, x, log_det, scratch);
        return;
    }
    T* xt = scratch;
    T* ld = scratch + (index_t)dim * BLOCK_ROWS;
    T* rest = ld + 7 * BLOCK_ROWS;
    load_block<R>(z, dim, nrows, xt);
    ChainLogDet<T> lds = chain_log_det_begin<R>(kinds, K, ld, ld + BLOCK_ROWS);
    /* s, t, hp of a planar group's two layers */
    T* s[2] = {rest, rest + BLOCK_ROWS};
    T* t[2] = {rest + 2 * BLOCK_ROWS, rest + 3 * BLOCK_ROWS};
    T* hp[2] = {rest + 4 * BLOCK_ROWS, rest + 5 * BLOCK_ROWS};
    T* flag = rest + 6 * BLOCK_ROWS;
    bool have_s = false;       /* s holds w.z + b of this planar group's layers */
    bool centred = false;      /* xt holds z - z0 of this (radial) layer, rest |z - z0|^2 */
    for (int k = 0; k < K; ++k) {
        const T* wk = work + work_offsets[k];
        if (prefetch) prefetch_block_part(z, x, dim, k, K);
        switch (kinds[k]) {
            case KIND_PLANAR: {
                const int group = planar_group(kinds, K, k);
                const T* wg[2] = {wk + dim, work + work_offsets[k + group - 1] + dim};
                const T bg[2] = {wg[0][dim], wg[1][dim]};
                if (!have_s) {
                    if (group == 2) {
                        planar_sweep<R, 0, 2, false, T>(nullptr, nullptr, wg, bg, s, dim, xt, xt);
                    } else {
                        block_dot<R>(wg[0], bg[0], dim, xt, s[0]);
                    }
                }
                planar_act_block<R, WIDE>(s[0], t[0], hp[0]);
                planar_logdet_chain<R>(lds, wk, dim, t[0], hp[0], ld, flag);
                if (group == 1) {
                    /* a run's last layer: no planar layer follows */
                    planar_update_block<R>(wk, dim, xt, xt, t[0]);
                    have_s = false;
                    break;
                }
                const T* uhat[2] = {wk, work + work_offsets[k + 1]};
                T m = T(0);
                for (int i = 0; i < dim; ++i) m += wg[1][i] * uhat[0][i];
                PFC_VM_PRAGMA_SIMD
                for (int r = 0; r < R; ++r) s[1][r] += m * t[0][r];
                planar_act_block<R, WIDE>(s[1], t[1], hp[1]);
                planar_logdet_chain<R>(lds, uhat[1], dim, t[1], hp[1], ld, flag);
                ++k;
                if (prefetch) prefetch_block_part(z, x, dim, k, K);
                const int next = planar_group(kinds, K, k + 1);
                const T* wn[2] = {};
                T bn[2] = {};
                for (int j = 0; j < next; ++j) {
                    wn[j] = work + work_offsets[k + 1 + j] + dim;
                    bn[j] = wn[j][dim];
                }
                const T* const* tc = t;
                if (next == 2) planar_sweep<R, 2, 2>(uhat, tc, wn, bn, s, dim, xt, xt);
                else if (next == 1) planar_sweep<R, 2, 1>(uhat, tc, wn, bn, s, dim, xt, xt);
                else planar_sweep<R, 2, 0>(uhat, tc, wn, bn, s, dim, xt, xt);
                have_s = next > 0;
                break;
            }
            case KIND_RADIAL: {
                const bool next_radial = k + 1 < K && kinds[k + 1] == KIND_RADIAL;
                centred = radial_map_chain<WIDE, false, R>(
                    &lds, wk, dim, xt, xt, ld, rest, centred,
                    next_radial ? radial_z0(work + work_offsets[k + 1]) : nullptr);
                break;
            }
            default: elementwise_map_block<false, R>(kinds[k], wk, dim, xt, xt, ld);
        }
        if (kinds[k] != KIND_RADIAL) centred = false;
    }
    chain_log_det_end<R>(lds, dim, ld);
    store_block(xt, dim, nrows, x);
    for (index_t r = 0; r < nrows; ++r) log_det[r] = ld[r];
}

/* Per-lane parameter sums across blocks.  A planar layer's VJP sums 2 dim
 * products over the rows of every block (a radial layer's dim, a scale
 * layer's dim + 1, a shift layer's dim); folding each sum's LANES partial
 * sums to one number per block (lane_sum) took ~20% of the planar backward.
 * They are added, still per lane, to the layer's slice of `lanes`
 * (2 dim x LANES values, layer_vjp_lanes) instead, and folded into the
 * gradient accumulator once per chunk of rows (chain_vjp_lanes_flush:
 * planar dL/duhat, dL/dw at acc[0, 2 dim), radial dL/dz0 at acc[2, 2 + dim),
 * scale and shift at acc[0, dim + 1) resp. acc[0, dim)), which also zeroes
 * them for the next chunk. */
PFC_HOSTDEVICE PFC_INLINE long long chain_vjp_lanes_size(int K, int dim) {
    return (long long)K * 2 * dim * LANES;
}

template <typename T>
PFC_VM_INLINE T* layer_vjp_lanes(T* lanes, int k, int dim) {
    return lanes + (index_t)k * 2 * dim * LANES;
}

template <typename T>
inline void chain_vjp_lanes_flush(const int* kinds, int K, int dim,
                                  const long long* acc_offsets, T* lanes, T* acc) {
    for (int k = 0; k < K; ++k) {
        const int n = kinds[k] == KIND_PLANAR ? 2 * dim : kinds[k] == KIND_SCALE ? dim + 1 : dim;
        T* lk = layer_vjp_lanes(lanes, k, dim);
        T* acc_k = acc + acc_offsets[k] + (kinds[k] == KIND_RADIAL ? 2 : 0);
        for (int j = 0; j < n; ++j) {
            acc_k[j] += lane_sum(lk + (index_t)j * LANES);
            for (int l = 0; l < LANES; ++l) lk[(index_t)j * LANES + l] = T(0);
        }
    }
}

/* The per-dimension part of a planar layer's VJP for a block: with coef =
 * dL/ds per row, g <- g + coef w, and the parameter sums
 *   dL/duhat_i += sign sum_r t g_i,   dL/dw_i += sum_r coef z_i,
 * per lane into `lanes` (layer_vjp_lanes); g_i taken before the update
 * (forward VJP, sign +1) or after it (inverse VJP, sign -1, coef = -d). */
template <bool AFTER, typename T>
PFC_VM_INLINE void planar_vjp_dims(const T* work, int dim, const T* zt, T* gt, const T* t,
                                   const T* coef, T sign, T* lanes) {
    const T* w = work + dim;
    for (int i = 0; i < dim; ++i) {
        T* gi = gt + (index_t)i * BLOCK_ROWS;
        const T* zi = zt + (index_t)i * BLOCK_ROWS;
        const T wi = w[i];
        T au[LANES] = {}, aw[LANES] = {};
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const int r = r0 + l;
                const T g = gi[r];
                const T g_new = g + coef[r] * wi;
                au[l] += t[r] * (AFTER ? g_new : g);
                aw[l] += coef[r] * zi[r];
                gi[r] = g_new;
            }
        }
        T* lu = lanes + (index_t)i * LANES;
        T* lw = lanes + (index_t)(dim + i) * LANES;
        PFC_VM_PRAGMA_SIMD
        for (int l = 0; l < LANES; ++l) {
            lu[l] += sign * au[l];
            lw[l] += aw[l];
        }
    }
}

/* -- inverse ----------------------------------------------------------------
 *
 * A chain's inverse runs last layer first.  A planar layer: Y = w.x + b
 * (block_dot), the root s of s + c tanh(s) = Y for all rows at once, then
 * z = x - uhat t and the log-determinant.  planar_solve_block is
 * planar_solve (planar.h) with every branch a select and every row's
 * iteration state in scratch: the same start, bracket, safeguarded Newton
 * steps and stopping rules, t and hp from planar_act_block (vm::tanh_sech2,
 * or with WIDE its AVX-512 copies).  The
 * sweep stops when every row has; rows still running after
 * SOLVE_BLOCK_ITER evaluations, and rows with Y = 0 or non-finite (which
 * planar_solve treats apart), are flagged and solved by planar_solve. */
enum { SOLVE_BLOCK_ITER = 40 };

/* Layer k's inverse update, out = in - uhat t^T, in one sweep with layer
 * k - 1's w.out + b into y when that layer is planar (the chain's inverse
 * runs last layer first); returns whether it was. */
template <int R, typename T>
PFC_VM_INLINE bool planar_inverse_update(const int* kinds, const T* work,
                                         const long long* work_offsets, int k, int dim,
                                         const T* in, T* out, const T* t, T* y) {
    const T* wk = work + work_offsets[k];
    if (k > 0) {
        return planar_update_next<R, true>(wk, dim, in, out, t, kinds[k - 1],
                                           work + work_offsets[k - 1], y);
    }
    planar_update_block<R, true>(wk, dim, in, out, t);
    return false;
}

/* t = tanh(s), hp = 1 - t^2 at the root s of s + c tanh(s) = Y[r].  The
 * Newton steps and the inverse's log-determinant factors need hp only to
 * ~1e-7 absolutely, as the forward's do, so the iteration takes
 * planar_act_block's cheaper float copy.  The VJP's recomputation, whose
 * derivatives scale with hp, asks for RELATIVE_HP: hp is then taken again
 * at the roots, and t left as it was, so that the recomputed inverse is
 * the inverse's own bit for bit (z = x - uhat t amplifies an ulp of t by
 * |uhat|, 5e4 in the tests' expanding layers). */
template <bool WIDE, int R, bool RELATIVE_HP, typename T>
PFC_VM_INLINE void planar_solve_block(const T* work, int dim, const T* Y, T* t, T* hp,
                                      T* scratch) {
    using vm::detail::select_;
    using vm::detail::fabs_;
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    const T ac = pfc::fabs(c), big = pfc::limits<T>::max();
    if (!(ac <= big) || c == T(0)) {
        for (int r = 0; r < R; ++r) planar_solve(Y[r], c, sp, t[r], hp[r]);
        return;
    }
    const T eps = pfc::limits<T>::eps(), tiny = T(4) / big;
    T* lo = scratch;
    T* hi = lo + BLOCK_ROWS;
    T* s = hi + BLOCK_ROWS;
    T* dx_old = s + BLOCK_ROWS;
    T* dx = dx_old + BLOCK_ROWS;
    T* done = dx + BLOCK_ROWS;      /* 0: running, 1: converged, 2: for planar_solve */
    /* The start of planar_solve.  The branches on the sign of c are selects
     * (select_, not ?:, which gcc's vectorizer reads as control flow) and
     * the cubic model has a pass of its own: with either inside, gcc left
     * this loop scalar (a fifth of W6's time). */
    const bool contracting = c < T(0);
    PFC_VM_PRAGMA_SIMD
    for (int r = 0; r < R; ++r) {
        const T ya = fabs_(Y[r]);
        const T lin = ya / sp;
        const T l = select_(contracting, ya, select_(ya - c > lin, ya - c, lin));
        const T h = select_(contracting, ya + ac, ya);
        const T s0 = select_(contracting, select_((sp > T(0)) & (lin < h), lin, h), l);
        lo[r] = l;
        hi[r] = h;
        s[r] = select_(s0 >= l, s0, l);
        dx_old[r] = dx[r] = h - l;
        done[r] = select_((ya == T(0)) | !(ya <= big), T(2), T(0));
    }
    if (contracting & (sp < T(0.25))) {
        PFC_VM_PRAGMA_SIMD
        for (int r = 0; r < R; ++r) {
            const T ya = fabs_(Y[r]);
            const T cub = vm::exp(vm::log(T(3) * ya / ac) * T(1.0 / 3.0));
            const T s0 = select_((ya < ac) & (cub < s[r]), cub, s[r]);
            s[r] = select_(s0 >= lo[r], s0, lo[r]);
        }
    }
    for (int it = 0; it < SOLVE_BLOCK_ITER; ++it) {
        /* t and hp at every row's s, in a pass of their own so that WIDE
         * takes the AVX-512 copies; a stopped row's s no longer moves, so
         * its t and hp are recomputed unchanged. */
        planar_act_block<R, WIDE>(s, t, hp);
        int running = 0;
        PFC_SIMD_REDUCE(+ : running)
        for (int r = 0; r < R; ++r) {
            const bool live = done[r] == T(0);
            const T ya = fabs_(Y[r]), sr = s[r], tr = t[r], hr = hp[r];
            const T ct = c * tr, sy = sr - ya;
            const T g = sy + ct;
            const bool conv = !(fabs_(g) > eps * (T(4) * fabs_(ct) + fabs_(sy)));
            const T l = select_(g < T(0), sr, lo[r]);
            const T h = select_(g < T(0), hi[r], sr);
            const T inv_gp = T(1) / (tr * tr + hr * sp);
            const T q = g * inv_gp;
            const T step = q - q * q * (ct * hr * inv_gp);
            const T newton = sr - step;
            const bool bisect = !((newton >= l) & (newton <= h)) |
                                !(fabs_(T(2) * step) <= fabs_(dx_old[r]));
            const T half = T(0.5) * (h - l);
            const T next = select_(bisect, l + half, newton);
            const bool stop = conv |
                              (fabs_(next - sr) <= T(2) * eps * select_(sr > tiny, sr, tiny)) |
                              !(h - l > T(2) * eps * select_(h > tiny, h, tiny));
            const bool go = live & !stop;
            lo[r] = select_(go, l, lo[r]);
            hi[r] = select_(go, h, hi[r]);
            dx_old[r] = select_(go, dx[r], dx_old[r]);
            dx[r] = select_(go, select_(bisect, half, step), dx[r]);
            s[r] = select_(go, next, sr);
            done[r] = select_(live & stop, T(1), done[r]);
            running += go;
        }
        if (running == 0) break;
    }
    if constexpr (RELATIVE_HP && !planar_act_relative_hp<WIDE, T>()) {
        planar_act_block<R, WIDE, true>(s, dx, hp);   /* t kept; dx is free now */
    }
    /* The sign of Y back on t, as a select: a branch on it mispredicts
     * half the time (a sixth of W6's time). */
    int unsolved = 0;
    PFC_SIMD_REDUCE(+ : unsolved)
    for (int r = 0; r < R; ++r) {
        t[r] = select_(Y[r] < T(0), -t[r], t[r]);
        unsolved += done[r] != T(1);
    }
    if (unsolved) {
        for (int r = 0; r < R; ++r) {
            if (done[r] != T(1)) planar_solve(Y[r], c, sp, t[r], hp[r]);
        }
    }
}

/* One block of rows of a chain through the inverses of layers K-1 .. 0:
 * z = f^{-1}(x) for rows [0, nrows), log_det = log|det df^{-1}/dx| = minus
 * the forward log-determinants at the points found.  Scratch as
 * chain_block_scratch_size. */
template <bool WIDE, int R, typename T>
PFC_VM_INLINE void chain_inverse_block_rows(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, const T* x, T* z, T* log_det,
                                            T* scratch) {
    T* xt = scratch;
    T* ld = scratch + (index_t)dim * BLOCK_ROWS;
    T* y = ld + 7 * BLOCK_ROWS;
    T* t = y + BLOCK_ROWS;
    T* hp = t + BLOCK_ROWS;
    T* solve = hp + BLOCK_ROWS;     /* 6 * BLOCK_ROWS, or a radial layer's 6 + a row */
    load_block<R>(x, dim, nrows, xt);
    ChainLogDet<T> lds = chain_log_det_begin<R>(kinds, K, ld, ld + BLOCK_ROWS);
    bool have_dot = false;   /* y already holds layer k's w.x + b */
    for (int k = K - 1; k >= 0; --k) {
        const T* wk = work + work_offsets[k];
        if (kinds[k] == KIND_RADIAL) {
            radial_map_chain<WIDE, true, R>(&lds, wk, dim, xt, xt, ld, solve);
            continue;
        }
        if (kinds[k] != KIND_PLANAR) {
            elementwise_map_block<true, R>(kinds[k], wk, dim, xt, xt, ld);
            continue;
        }
        if (!have_dot) block_dot<R>(wk + dim, wk[2 * dim], dim, xt, y);
        planar_solve_block<WIDE, R, false>(wk, dim, y, t, hp, solve);
        planar_logdet_chain<R>(lds, wk, dim, t, hp, ld, y);
        have_dot = planar_inverse_update<R>(kinds, work, work_offsets, k, dim, xt, xt, t, y);
    }
    chain_log_det_end<R>(lds, dim, ld);
    store_block(xt, dim, nrows, z);
    for (index_t r = 0; r < nrows; ++r) log_det[r] = -ld[r];
}

template <bool WIDE, bool INVERSE, int R, typename T>
PFC_VM_INLINE void chain_map_block_rows(const int* kinds, const T* work,
                                        const long long* work_offsets, int K, int dim,
                                        index_t nrows, bool prefetch, const T* v, T* out,
                                        T* log_det, T* scratch) {
    if constexpr (INVERSE) {
        chain_inverse_block_rows<WIDE, R>(kinds, work, work_offsets, K, dim, nrows, v, out,
                                          log_det, scratch);
    } else {
        chain_forward_block_rows<WIDE, R>(kinds, work, work_offsets, K, dim, nrows, prefetch, v,
                                          out, log_det, scratch);
    }
}

/* The forward or inverse of one block.  A short block (a small batch, or a
 * batch's last rows) sweeps only the rows it has, rounded up to a
 * compile-time count, and prefetches nothing. */
template <bool WIDE, bool INVERSE, typename T>
PFC_VM_INLINE void chain_map_block(const int* kinds, const T* work,
                                   const long long* work_offsets, int K, int dim, index_t nrows,
                                   bool prefetch, const T* v, T* out, T* log_det, T* scratch) {
    if (nrows <= BLOCK_ROWS / 4) {
        chain_map_block_rows<WIDE, INVERSE, BLOCK_ROWS / 4>(kinds, work, work_offsets, K, dim,
                                                            nrows, false, v, out, log_det, scratch);
    } else if (nrows <= BLOCK_ROWS / 2) {
        chain_map_block_rows<WIDE, INVERSE, BLOCK_ROWS / 2>(kinds, work, work_offsets, K, dim,
                                                            nrows, false, v, out, log_det, scratch);
    } else {
        chain_map_block_rows<WIDE, INVERSE, BLOCK_ROWS>(kinds, work, work_offsets, K, dim, nrows,
                                                        prefetch, v, out, log_det, scratch);
    }
}

template <bool WIDE, typename T>
PFC_VM_INLINE void chain_forward_block_impl(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, bool prefetch, const T* z, T* x,
                                            T* log_det, T* scratch) {
    chain_map_block<WIDE, false>(kinds, work, work_offsets, K, dim, nrows, prefetch, z, x,
                                 log_det, scratch);
}

template <bool WIDE, typename T>
PFC_VM_INLINE void chain_inverse_block_impl(const int* kinds, const T* work,
                                            const long long* work_offsets, int K, int dim,
                                            index_t nrows, const T* x, T* z, T* log_det,
                                            T* scratch) {
    chain_map_block<WIDE, true>(kinds, work, work_offsets, K, dim, nrows, false, x, z, log_det,
                                scratch);
}

/* The VJP of a scale (x = a z) or shift (x = z + b) layer for a block, or
 * with INVERSE of its inverse (z = x / a, z = x - b); zt holds z (the
 * forward's input, the inverse's output) and gt the output's cotangent,
 * replaced by the input's.  As the row functions of elementwise.h:
 *   forward  g_z = a g_x, dL/da += sum g_x z, acc[dim] += sum gld
 *            (the log-det's), resp. g_z = g_x, dL/db += sum g_x;
 *   inverse  g_x = g_z / a, dL/da -= sum g_x z, acc[dim] -= sum gld,
 *            resp. g_x = g_z, dL/db -= sum g_z.
 * The sums run per lane into `lanes` (layer_vjp_lanes; dim + 1 of its
 * 2 dim slots), folded once per chunk by chain_vjp_lanes_flush.  Walking
 * the rows one by one instead, each row's add to the chunk's accumulator
 * waited for the previous row's: a single scale or shift layer's backward
 * took 5-10x its forward. */
template <bool INVERSE, typename T>
PFC_VM_INLINE void elementwise_vjp_block(int kind, const T* work, int dim, const T* zt, T* gt,
                                         const T* gld, T* lanes) {
    const bool scale = kind == KIND_SCALE;
    const T sign = INVERSE ? T(-1) : T(1);
    for (int i = 0; i < dim; ++i) {
        T* gi = gt + (index_t)i * BLOCK_ROWS;
        const T* zi = zt + (index_t)i * BLOCK_ROWS;
        const T ai = scale ? work[i] : T(1);
        T part[LANES] = {};
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const int r = r0 + l;
                const T g_out = gi[r];
                const T g_in = !scale ? g_out : INVERSE ? g_out / ai : g_out * ai;
                part[l] += scale ? (INVERSE ? g_in : g_out) * zi[r] : g_out;
                gi[r] = g_in;
            }
        }
        T* li = lanes + (index_t)i * LANES;
        for (int l = 0; l < LANES; ++l) li[l] += sign * part[l];
    }
    if (scale) {
        T part[LANES] = {};
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
            for (int l = 0; l < LANES; ++l) part[l] += gld[r0 + l];
        }
        T* ld = lanes + (index_t)dim * LANES;
        for (int l = 0; l < LANES; ++l) ld[l] += sign * part[l];
    }
}

/* The per-dimension part of a radial layer's VJP for a block: g <- m g +
 * cr (v - z0) row by row (v the points the layer's map is evaluated at) and
 * dL/dz0_i += sum (g_old - g_new), per lane into `lanes` (layer_vjp_lanes);
 * rows with flag[r] != 0 keep g (the row function redoes them); without
 * FLAGGED no row is flagged and the select is left out (a quarter of the
 * sweep's instructions). */
template <bool FLAGGED, typename T>
PFC_VM_INLINE void radial_vjp_dims_sweep(const T* z0, int dim, const T* vt, T* gt, const T* m,
                                         const T* cr, const T* flag, T* lanes) {
    using vm::detail::select_;
    for (int i = 0; i < dim; ++i) {
        const T z0i = z0[i];
        const T* vi = vt + (index_t)i * BLOCK_ROWS;
        T* gi = gt + (index_t)i * BLOCK_ROWS;
        T a[LANES] = {};
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const int r = r0 + l;
                const T g = gi[r];
                const T g_map = m[r] * g + cr[r] * (vi[r] - z0i);
                const T g_new = FLAGGED ? select_(flag[r] != T(0), g, g_map) : g_map;
                a[l] += g - g_new;
                gi[r] = g_new;
            }
        }
        T* li = lanes + (index_t)i * LANES;
        PFC_VM_PRAGMA_SIMD
        for (int l = 0; l < LANES; ++l) li[l] += a[l];
    }
}

template <typename T>
PFC_VM_INLINE void radial_vjp_dims(bool flagged, const T* z0, int dim, const T* vt, T* gt,
                                   const T* m, const T* cr, const T* flag, T* lanes) {
    if (flagged) {
        radial_vjp_dims_sweep<true>(z0, dim, vt, gt, m, cr, flag, lanes);
    } else {
        radial_vjp_dims_sweep<false>(z0, dim, vt, gt, m, cr, flag, lanes);
    }
}

/* The flagged rows (flag[r] != 0) of a block through a row VJP function
 * row_vjp(v, g, gld, acc), v and g copied out of the block and g back. */
template <typename T, typename RowVjp>
PFC_VM_INLINE void radial_vjp_flagged_rows(int dim, const T* vt, T* gt, const T* gld,
                                           const T* flag, index_t nrows, T* row,
                                           RowVjp row_vjp) {
    T* vr = row;
    T* gr = row + dim;
    for (index_t r = 0; r < nrows; ++r) {
        if (flag[r] == T(0)) continue;
        for (int i = 0; i < dim; ++i) {
            vr[i] = PFC_XT(vt, i, r);
            gr[i] = PFC_XT(gt, i, r);
        }
        row_vjp(vr, gr, gld[r]);
        for (int i = 0; i < dim; ++i) PFC_XT(gt, i, r) = gr[i];
    }
}

/* The inverse VJP of a radial layer for a block (radial_inverse_backward_row),
 * xt = the layer's input x: the root r, the factors and m = 1/g recomputed
 * as in radial_map_chain<true>, P = g_z.(x - z0), then with
 * a1 = -(m P + (dim-1) gld), a2 = -gld:
 *   l_r = -beta h (a1/(s+r) + 2 a2 alpha h^2/g2), rho_bar = l_r / g2,
 *   g_x = m g_z + (rho_bar / rho) (x - z0),   dL/dz0 += g_z - g_x,
 *   dL/dalpha += l_alpha + rho_bar u g,       dL/ds += l_s - rho_bar u.
 * Rows whose squared distance under- or overflows (and x = z0) take the row
 * function; padding rows have zero cotangents and add nothing. */
template <bool WIDE, typename T>
PFC_VM_INLINE void radial_inverse_vjp_block(const T* work, int dim, const T* xt, T* gt,
                                            const T* gld, index_t nrows, T* acc, T* lanes,
                                            T* scratch) {
    using vm::detail::select_;
    const T alpha = work[0], s = work[1], beta = work[2];
    const T* z0 = radial_z0(work);
    T* dist2 = scratch;                 /* then the row's flag */
    T* mg = scratch + BLOCK_ROWS;       /* m = 1/g */
    T* cr = scratch + 2 * BLOCK_ROWS;   /* rho_bar / rho */
    T* pp = scratch + 3 * BLOCK_ROWS;   /* P */
    T* row = scratch + 4 * BLOCK_ROWS;  /* 2 * dim */
    block_dist2_dot<WIDE>(z0, dim, xt, gt, dist2, pp);
    const T tiny = radial_tiny<T>(), huge = radial_huge<T>();
    const T dim_minus_1 = T(dim - 1);
    const T sqrt_alpha = pfc::sqrt(alpha);
    T sum_a[LANES] = {}, sum_s[LANES] = {};
    int nbad = 0;
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
      PFC_SIMD_REDUCE(+ : nbad)
      for (int l = 0; l < LANES; ++l) {
        const int r = r0 + l;
        const T ss = dist2[r];
        const T rho = pfc::sqrt(ss);
        const T rr = radial_root_row(sqrt_alpha, s, rho);
        const T inv = T(1) / (alpha + rr);
        const T u = rr * inv, v = alpha * inv;
        const T g = s * inv + u;
        const T g2 = u * (T(1) + v) + s * inv * v;
        const T m = T(1) / g;
        const T inv_sr = T(1) / (s + rr);
        const T a1 = -(m * pp[r] + dim_minus_1 * gld[r]);
        const T a2 = -gld[r];
        const T vh_g2 = v * inv / g2;
        const T l_r = -beta * inv * (a1 * inv_sr + T(2) * a2 * vh_g2);
        const T l_alpha = -a1 * inv + a2 * ((T(2) * u + s * inv) * (inv / g2) - T(2) * inv);
        const T l_s = a1 * inv_sr + a2 * vh_g2;
        const T rho_bar = l_r / g2;
        const bool bad = (ss < tiny) | (ss > huge);
        sum_a[l] += select_(bad, T(0), l_alpha + rho_bar * u * g);
        sum_s[l] += select_(bad, T(0), l_s - rho_bar * u);
        nbad += bad;
        mg[r] = m;
        cr[r] = rho_bar / rho;
        dist2[r] = select_(bad, T(1), T(0));
      }
    }
    acc[0] += lane_sum(sum_a);
    acc[1] += lane_sum(sum_s);
    radial_vjp_dims(nbad != 0, z0, dim, xt, gt, mg, cr, dist2, lanes);
    if (nbad != 0) {
        radial_vjp_flagged_rows(dim, xt, gt, gld, dist2, nrows, row, [&](T* v, T* g, T gl) {
            radial_inverse_backward_row(work, dim, v, g, gl, g, acc);
        });
    }
}

/* A planar layer's VJP for a block, t and hp its activations at the rows
 * zt (its input; for the inverse, the output z of its inverse).  With
 * L = g_x.x + g_ld log D (planar.h):
 *   dL/ds = hp (g_x.uhat - 2 g_ld c t / D),  dL/dc = g_ld hp / D,
 *   grad_z = g_x + dL/ds w,  dL/duhat = t g_x,  dL/dw = dL/ds z,
 *   dL/db = dL/ds (planar.h's accumulator: dL/dc apart from dL/duhat).
 * The inverse's VJP (INVERSE; gt holds g_z, gld the cotangent of log_det_inv)
 * is the same with coef = -d, d = hp (g_z.uhat - 2 g_c c t) / D, taken
 * after the update, and the sums' signs flipped (planar_vjp_dims).
 * scratch: BLOCK_ROWS values. */
template <bool INVERSE, typename T>
PFC_VM_INLINE void planar_vjp_block(const T* work, int dim, const T* zt, T* gt, const T* gld,
                                    const T* t, const T* hp, T* acc, T* lanes, T* scratch) {
    const T c = work[2 * dim + 1], sp = work[2 * dim + 2];
    T* coef = scratch;
    block_dot<BLOCK_ROWS>(work, T(0), dim, gt, coef);     /* g.uhat, for now */
    T sum_gc[LANES] = {}, sum_coef[LANES] = {};
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
        PFC_VM_PRAGMA_SIMD
        for (int l = 0; l < LANES; ++l) {
            const int r = r0 + l;
            const T tr = t[r], hr = hp[r];
            const T inv_d = T(1) / (tr * tr + hr * sp);
            const T g_c = gld[r] * hr * inv_d;                        /* dL/dc */
            const T q = hr * coef[r] - T(2) * g_c * c * tr;
            const T cr = INVERSE ? -(inv_d * q) : q;                  /* dL/ds, -d */
            coef[r] = cr;
            sum_gc[l] += g_c;
            sum_coef[l] += cr;
        }
    }
    const T sign = INVERSE ? T(-1) : T(1);
    planar_vjp_dims<INVERSE>(work, dim, zt, gt, t, coef, sign, lanes);
    acc[2 * dim] += lane_sum(sum_coef);
    acc[2 * dim + 1] += sign * lane_sum(sum_gc);
}

/* The quadratic loss sum_r (a/2 |y_r|^2 + b ld_r) of a block's output y
 * (transposed in yt) and log-determinants ld: adds sum |y_r|^2 and sum ld_r
 * over the real rows to sums[0], sums[1], and turns yt into the cotangent
 * a y and gld into b (both 0 in the padding rows, whose ld is zeroed). */
template <typename T>
PFC_VM_INLINE void quadratic_cotangent_block(int dim, index_t nrows, T a, T b, T* ld, T* yt,
                                             T* gld, double* sums) {
    for (index_t r = nrows; r < BLOCK_ROWS; ++r) {   /* padding rows add nothing */
        ld[r] = T(0);
        for (int i = 0; i < dim; ++i) yt[(index_t)i * BLOCK_ROWS + r] = T(0);
    }
    /* Per-lane float64 partial sums: one serial accumulator would be a
     * latency-bound chain of 2048 dependent additions per block. */
    double part_sq[LANES] = {}, part_ld[LANES] = {};
    for (int i = 0; i < dim; ++i) {
        T* yi = yt + (index_t)i * BLOCK_ROWS;
        for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
            PFC_VM_PRAGMA_SIMD
            for (int l = 0; l < LANES; ++l) {
                const double y = yi[r0 + l];
                part_sq[l] += y * y;
                yi[r0 + l] *= a;
            }
        }
    }
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
        PFC_VM_PRAGMA_SIMD
        for (int l = 0; l < LANES; ++l) part_ld[l] += ld[r0 + l];
    }
    for (index_t r = 0; r < BLOCK_ROWS; ++r) gld[r] = r < nrows ? b : T(0);
    sums[0] += lane_sum(part_sq);
    sums[1] += lane_sum(part_ld);
}

/* The VJP of a chain's inverse for one block: the inverse is recomputed
 * layer by layer (K-1 first), keeping each layer's output v_k and a planar
 * layer's t, hp (so no planar layer is solved twice), then the cotangent
 * runs from z = v_0 back to x = v_K through layers 0 .. K-1; for a planar
 * one (planar_inverse_backward_row):
 *   d = hp/D (uhat.g_z - 2 g c t / D),  g_x = g_z - d w,
 *   acc: dL/duhat -= t g_x + (g hp / D) w,  dL/dw -= d v_k + (g hp / D) uhat,
 *   dL/db -= d,
 * g being the cotangent of log_det_inv.  Padding rows have zero
 * cotangents and add nothing. */
PFC_HOSTDEVICE PFC_INLINE long long chain_inverse_backward_scratch_size(int K, int dim) {
    return ((long long)K + 2) * dim * BLOCK_ROWS + (2LL * K + 17) * BLOCK_ROWS + 2LL * dim;
}

/* Without grad_z (NULL) the cotangents are those of the quadratic loss
 * sum_r (a/2 |z_r|^2 + b log_det_inv_r): the recomputed inverse then takes
 * the log-determinants too (quadratic_cotangent_block). */
template <bool WIDE, typename T>
PFC_VM_INLINE void chain_inverse_backward_block_impl(const int* kinds, const T* work,
                                                     const long long* work_offsets,
                                                     const long long* acc_offsets, int K,
                                                     int dim, index_t nrows, const T* x,
                                                     const T* grad_z, const T* grad_log_det,
                                                     T a, T b, double* sums, T* grad_x, T* acc,
                                                     T* lanes, T* scratch) {
    const index_t stride = (index_t)dim * BLOCK_ROWS;
    const bool quadratic = grad_z == nullptr;
    T* stack = scratch;                      /* v_0 .. v_{K-1}, and v_K = x */
    T* gt = stack + (K + 1) * stride;        /* the cotangent */
    T* act = gt + stride;                    /* t and hp of each planar layer */
    T* gld = act + 2 * (index_t)K * BLOCK_ROWS;
    T* y = gld + BLOCK_ROWS;
    T* ld = y + BLOCK_ROWS;                  /* and 6 * BLOCK_ROWS of products */
    T* tmp = ld + 7 * BLOCK_ROWS;            /* 6 * BLOCK_ROWS + 2 * dim */
    load_block<BLOCK_ROWS>(x, dim, nrows, stack + K * stride);
    ChainLogDet<T> lds = {};
    if (quadratic) {
        lds = chain_log_det_begin<BLOCK_ROWS>(kinds, K, ld, ld + BLOCK_ROWS);
    } else {
        for (index_t r = 0; r < BLOCK_ROWS; ++r) gld[r] = r < nrows ? grad_log_det[r] : T(0);
    }
    bool have_dot = false;   /* y already holds layer k's w.v_{k+1} + b */
    for (int k = K - 1; k >= 0; --k) {
        const T* wk = work + work_offsets[k];
        const T* in = stack + (k + 1) * stride;
        T* t = act + 2 * (index_t)k * BLOCK_ROWS;
        if (kinds[k] == KIND_RADIAL) {
            radial_map_chain<WIDE, true, BLOCK_ROWS>(quadratic ? &lds : nullptr, wk, dim, in,
                                                     stack + k * stride, ld, tmp);
            continue;
        }
        if (kinds[k] != KIND_PLANAR) {
            elementwise_map_block<true, BLOCK_ROWS>(kinds[k], wk, dim, in, stack + k * stride,
                                                    quadratic ? ld : (T*)0);
            continue;
        }
        if (!have_dot) block_dot<BLOCK_ROWS>(wk + dim, wk[2 * dim], dim, in, y);
        planar_solve_block<WIDE, BLOCK_ROWS, true>(wk, dim, y, t, t + BLOCK_ROWS, tmp);
        if (quadratic) planar_logdet_chain<BLOCK_ROWS>(lds, wk, dim, t, t + BLOCK_ROWS, ld, y);
        have_dot = planar_inverse_update<BLOCK_ROWS>(kinds, work, work_offsets, k, dim, in,
                                                     stack + k * stride, t, y);
    }
    if (quadratic) {
        /* ld holds the forward log-determinants: log_det_inv = -ld. */
        chain_log_det_end<BLOCK_ROWS>(lds, dim, ld);
        for (int r = 0; r < BLOCK_ROWS; ++r) ld[r] = -ld[r];
        memcpy(gt, stack, stride * sizeof(T));   /* z = v_0, the loss's cotangent below */
        quadratic_cotangent_block(dim, nrows, a, b, ld, gt, gld, sums);
    } else {
        load_block<BLOCK_ROWS>(grad_z, dim, nrows, gt);
    }
    for (int k = 0; k < K; ++k) {
        const T* wk = work + work_offsets[k];
        if (kinds[k] == KIND_RADIAL) {
            radial_inverse_vjp_block<WIDE>(wk, dim, stack + (k + 1) * stride, gt, gld, nrows,
                                           acc + acc_offsets[k], layer_vjp_lanes(lanes, k, dim),
                                           tmp);
            continue;
        }
        if (kinds[k] != KIND_PLANAR) {
            elementwise_vjp_block<true>(kinds[k], wk, dim, stack + k * stride, gt, gld,
                                        layer_vjp_lanes(lanes, k, dim));
            continue;
        }
        const T* t = act + 2 * (index_t)k * BLOCK_ROWS;
        planar_vjp_block<true>(wk, dim, stack + k * stride, gt, gld, t, t + BLOCK_ROWS,
                               acc + acc_offsets[k], layer_vjp_lanes(lanes, k, dim), y);
    }
    store_block(gt, dim, nrows, grad_x);
}

/* -- backward ---------------------------------------------------------------
 *
 * The VJP of a block through layers K-1 .. 0.  The forward is recomputed
 * block by block without log-determinants, keeping every layer's
 * (transposed) input and, for planar layers, t and hp; the gradient block gt
 * then runs back through the layers.  Planar and radial layers are
 * vectorised like their forward (the per-row scalars in simd lanes, the
 * parameter sums as contiguous reductions); scale and shift take the row
 * functions.  Padding rows have zero cotangents and so add nothing to the
 * sums. */


/* radial_backward_row for the block, with P = g_x.(z - z0):
 *   grad_z = g g_x + (c / r) (z - z0),
 *     c = -beta h [P h + gld ((dim-1)/(s+r) + 2 alpha h^2 / g2)]
 *   dL/dalpha = -g h P + gld [(2 r + s) h^2 / g2 - (dim+1) h]
 *   dL/ds = h P + gld [(dim-1)/(s+r) + alpha h^2 / g2],  dL/dz0 = g_x - grad_z.
 * Rows whose squared distance under- or overflows contribute nothing here
 * and take the row function afterwards (real rows only: the padding rows'
 * contributions are 0). */
template <bool WIDE, typename T>
PFC_VM_INLINE void radial_backward_block(const T* work, int dim, const T* zt, T* gt,
                                         const T* gld, index_t nrows, T* acc, T* lanes,
                                         T* scratch) {
    const T alpha = work[0], s = work[1], beta = work[2];
    const T* z0 = radial_z0(work);
    T* dist2 = scratch;
    T* pg = scratch + BLOCK_ROWS;            /* P, then g */
    T* cr = scratch + 2 * BLOCK_ROWS;
    T* row = scratch + 3 * BLOCK_ROWS;       /* 2 * dim */
    block_dist2_dot<WIDE>(z0, dim, zt, gt, dist2, pg);
    const T tiny = radial_tiny<T>(), huge = radial_huge<T>();
    const T dim_minus_1 = T(dim - 1), dim_plus_1 = T(dim + 1);
    T sum_a[LANES] = {}, sum_s[LANES] = {};
    int nbad = 0;
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += LANES) {
      PFC_SIMD_REDUCE(+ : nbad)
      for (int l = 0; l < LANES; ++l) {
        const int r = r0 + l;
        const T ss = dist2[r], P = pg[r], gl = gld[r];
        const T rr = pfc::sqrt(ss);
        const T inv = T(1) / (alpha + rr);
        const T u = rr * inv, v = alpha * inv;
        const T g = s * inv + u;
        const T ig2 = T(1) / (u * (T(1) + v) + s * inv * v);
        const T w1 = dim_minus_1 / (s + rr);
        const T vh_g2 = v * inv * ig2;                       /* alpha h^2 / g2 */
        const T c = -beta * inv * (P * inv + gl * (w1 + T(2) * vh_g2));
        const T d_alpha = -g * inv * P
                          + gl * ((T(2) * u + s * inv) * (inv * ig2) - dim_plus_1 * inv);
        const T d_s = inv * P + gl * (w1 + vh_g2);
        const bool bad = (ss < tiny) | (ss > huge);
        sum_a[l] += vm::detail::select_(bad, T(0), d_alpha);
        sum_s[l] += vm::detail::select_(bad, T(0), d_s);
        nbad += bad;
        pg[r] = g;
        cr[r] = c / rr;
        dist2[r] = vm::detail::select_(bad, T(1), T(0));
      }
    }
    acc[0] += lane_sum(sum_a);
    acc[1] += lane_sum(sum_s);
    radial_vjp_dims(nbad != 0, z0, dim, zt, gt, pg, cr, dist2, lanes);
    if (nbad != 0) {
        radial_vjp_flagged_rows(dim, zt, gt, gld, dist2, nrows, row, [&](T* v, T* g, T gl) {
            radial_backward_row(work, dim, v, g, gl, g, acc);
        });
    }
}

/* Scratch values the backward of one block needs: K layer inputs, the
 * gradient block, t and hp of K layers, the block's log-determinants and
 * their products (quadratic loss), and per-row and per-row scratch. */
PFC_HOSTDEVICE PFC_INLINE long long chain_backward_scratch_size(int K, int dim) {
    return ((long long)K + 1) * dim * BLOCK_ROWS + (2LL * K + 14) * BLOCK_ROWS + 3LL * dim;
}

/* Rows [0, nrows) (nrows <= BLOCK_ROWS) of z, grad_x, grad_log_det: writes
 * grad_z and adds the rows' parameter-gradient contributions to acc (laid
 * out by acc_offsets); `prefetch` as in the forward.  Without grad_x
 * (NULL), the cotangents are those of the quadratic loss
 * sum_r (a/2 |x_r|^2 + b ld_r): the recomputed forward then runs through the
 * last layer with log-determinants (quadratic_cotangent_block). */
template <bool WIDE, typename T>
PFC_VM_INLINE void chain_backward_block_impl(const int* kinds, const T* work,
                                             const long long* work_offsets,
                                             const long long* acc_offsets, int K, int dim,
                                             index_t nrows, bool prefetch, const T* z,
                                             const T* grad_x, const T* grad_log_det, T a, T b,
                                             double* sums, T* grad_z, T* acc, T* lanes,
                                             T* scratch) {
    const index_t stride = (index_t)dim * BLOCK_ROWS;
    const bool quadratic = grad_x == nullptr;
    T* stack = scratch;                      /* K transposed layer inputs */
    T* gt = stack + K * stride;              /* the gradient block */
    T* act = gt + stride;                    /* t and hp of each planar layer */
    T* gld = act + 2 * (index_t)K * BLOCK_ROWS;
    T* ld = gld + BLOCK_ROWS;                /* and 6 * BLOCK_ROWS of products */
    T* tmp = ld + 7 * BLOCK_ROWS;            /* 6 * BLOCK_ROWS + 3 * dim */
    load_block<BLOCK_ROWS>(z, dim, nrows, stack);
    ChainLogDet<T> lds = {};
    if (quadratic) {
        lds = chain_log_det_begin<BLOCK_ROWS>(kinds, K, ld, ld + BLOCK_ROWS);
    } else {
        load_block<BLOCK_ROWS>(grad_x, dim, nrows, gt);
        for (index_t r = 0; r < BLOCK_ROWS; ++r) gld[r] = r < nrows ? grad_log_det[r] : T(0);
    }
    bool have_s = false;   /* act[k] holds layer k's w.z + b */
    for (int k = 0; k < K; ++k) {
        const T* wk = work + work_offsets[k];
        T* in = stack + k * stride;
        T* t = act + 2 * (index_t)k * BLOCK_ROWS;
        if (kinds[k] == KIND_PLANAR) {
            if (!have_s) block_dot<BLOCK_ROWS>(wk + dim, wk[2 * dim], dim, in, t);
            planar_act_block<BLOCK_ROWS, WIDE, true>(t, t, t + BLOCK_ROWS);
            if (quadratic) {
                planar_logdet_chain<BLOCK_ROWS>(lds, wk, dim, t, t + BLOCK_ROWS, ld, tmp);
            }
        }
        have_s = false;
        if (k + 1 == K && !quadratic) break;
        T* out = k + 1 < K ? in + stride : gt;
        T* ldk = quadratic ? ld : (T*)0;
        switch (kinds[k]) {
            case KIND_PLANAR:
                have_s = planar_update_next<BLOCK_ROWS>(wk, dim, in, out, t,
                                                        k + 1 < K ? kinds[k + 1] : -1,
                                                        work + work_offsets[k + 1],
                                                        t + 2 * BLOCK_ROWS);
                break;
            case KIND_RADIAL:
                radial_map_chain<WIDE, false, BLOCK_ROWS>(quadratic ? &lds : nullptr, wk, dim,
                                                          in, out, ld, tmp);
                break;
            default: elementwise_map_block<false, BLOCK_ROWS>(kinds[k], wk, dim, in, out, ldk);
        }
    }
    if (quadratic) {
        chain_log_det_end<BLOCK_ROWS>(lds, dim, ld);
        quadratic_cotangent_block(dim, nrows, a, b, ld, gt, gld, sums);
    }
    for (int k = K - 1; k >= 0; --k) {
        const T* wk = work + work_offsets[k];
        const T* zt = stack + k * stride;
        T* acc_k = acc + acc_offsets[k];
        if (prefetch) {
            prefetch_next<0>(z, dim, K - 1 - k, K);
            prefetch_next<0>(grad_x, dim, K - 1 - k, K);
            prefetch_next<1>(grad_z, dim, K - 1 - k, K);
        }
        if (kinds[k] == KIND_PLANAR) {
            const T* t = act + 2 * (index_t)k * BLOCK_ROWS;
            planar_vjp_block<false>(wk, dim, zt, gt, gld, t, t + BLOCK_ROWS, acc_k,
                                    layer_vjp_lanes(lanes, k, dim), tmp);
            continue;
        }
        if (kinds[k] == KIND_RADIAL) {
            radial_backward_block<WIDE>(wk, dim, zt, gt, gld, nrows, acc_k,
                                        layer_vjp_lanes(lanes, k, dim), tmp);
            continue;
        }
        elementwise_vjp_block<false>(kinds[k], wk, dim, zt, gt, gld,
                                     layer_vjp_lanes(lanes, k, dim));
    }
    store_block(gt, dim, nrows, grad_z);
}

#undef PFC_XT

/* Each block kernel is compiled for the baseline ISA, AVX2+FMA and AVX-512
 * (the last with WIDE), and the dispatcher picks the copy for `level`
 * (vm::cpu_level(), read once per call by the caller). */
#if PFC_VM_DISPATCH
#define PFC_DEFINE_BLOCK_DISPATCH(name, PARAMS, ARGS)                        \
    template <typename T> void name##_base PARAMS { name##_impl<false> ARGS; } \
    template <typename T> PFC_VM_TARGET_AVX2 void name##_avx2 PARAMS {        \
        name##_impl<false> ARGS;                                              \
    }                                                                         \
    template <typename T> PFC_VM_TARGET_AVX512 void name##_avx512 PARAMS {    \
        name##_impl<true> ARGS;                                               \
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
        name##_impl<false> ARGS;                                              \
    }
#endif
#define PFC_UNPAREN(...) __VA_ARGS__

PFC_DEFINE_BLOCK_DISPATCH(chain_forward_block,
    (const int* kinds, const T* work, const long long* work_offsets, int K, int dim,
     index_t nrows, bool prefetch, const T* z, T* x, T* log_det, T* scratch),
    (kinds, work, work_offsets, K, dim, nrows, prefetch, z, x, log_det, scratch))

PFC_DEFINE_BLOCK_DISPATCH(chain_inverse_block,
    (const int* kinds, const T* work, const long long* work_offsets, int K, int dim,
     index_t nrows, const T* x, T* z, T* log_det, T* scratch),
    (kinds, work, work_offsets, K, dim, nrows, x, z, log_det, scratch))

PFC_DEFINE_BLOCK_DISPATCH(chain_inverse_backward_block,
    (const int* kinds, const T* work, const long long* work_offsets,
     const long long* acc_offsets, int K, int dim, index_t nrows, const T* x,
     const T* grad_z, const T* grad_log_det, T a, T b, double* sums, T* grad_x, T* acc,
     T* lanes, T* scratch),
    (kinds, work, work_offsets, acc_offsets, K, dim, nrows, x, grad_z, grad_log_det, a, b,
     sums, grad_x, acc, lanes, scratch))

PFC_DEFINE_BLOCK_DISPATCH(chain_backward_block,
    (const int* kinds, const T* work, const long long* work_offsets,
     const long long* acc_offsets, int K, int dim, index_t nrows, bool prefetch,
     const T* z, const T* grad_x, const T* grad_log_det, T a, T b, double* sums, T* grad_z,
     T* acc, T* lanes, T* scratch),
    (kinds, work, work_offsets, acc_offsets, K, dim, nrows, prefetch, z, grad_x,
     grad_log_det, a, b, sums, grad_z, acc, lanes, scratch))

#undef PFC_DEFINE_BLOCK_DISPATCH
#undef PFC_UNPAREN
#undef PFC_SIMD_REDUCE
#undef PFC_STRINGIFY_
#undef PFC_VECTOR_EXT

}  // namespace cpu
}  // namespace pfc

#endif  /* PFC_ROWWISE_CPU_H */
