/*
 * realnvp_cpu.h -- the CPU's dense layers of the Real NVP nets (CPU only:
 * it builds on pfc_vmath.h and x86 intrinsics).
 *
 *  realnvp_bias_tanh_block   h = tanh(h + bias) through vm::tanh_array
 *    (<= 2.1 ulp, AVX-512 when available).  A forward pass evaluates
 *    num_masks * 2 * num_layers * units tanh per row (134M for 8 masks of
 *    2 x 64 units on 65,536 rows).  With vm::tanh's ~45 vector operations
 *    per 8 doubles (port-bound: rcp14 + Newton for its division, or four
 *    interleaved dependency chains, gained nothing) they were ~50% of a
 *    float64 forward, ~32% of a float32 one.  The AVX-512 copies now take
 *    tables held in registers (pfc_vmath.h): float piecewise polynomials
 *    (0.22 instead of 0.34 ns/element), double e^(-2|x|) through a table of
 *    2^(j/16) (0.81 instead of 1.17); on Sapphire Rapids the float32 forward
 *    went from ~72 to ~55 ms, the float64 one from ~170 to ~128 ms.
 *
 *  realnvp_gemm   C (m x n) = init + X W with X read through two strides
 *    (so X or X^T, without copies) and W row-major (K x n); init is 0, a
 *    bias row or C itself.  At the sizes of one row block (m = 64, n, K <=
 *    128) OpenBLAS spends much of its time packing operands (and a beta
 *    pass), and above m n K = 2^18 hands the call to its own thread pool,
 *    which the kernel's OpenMP team must not trigger.  The register-tiled
 *    kernel (6 rows x 4 zmm or 2 ymm of accumulators, W read straight from
 *    L1; realnvp_gemm_isa.h, one copy per ISA) needs neither packing nor a
 *    size limit.  Sums over k run in order, so results do not depend on
 *    threads, nor on the ISA.  On an AVX2-only AMD EPYC (Zen 1) the BLAS
 *    path spent ~12% of a float32 forward packing operands and ~12% more
 *    in the Cython loops around the calls, beside ~40% in sgemm's kernel;
 *    the AVX2 tiles took the forward to 0.62x (float32) / 0.79x (float64)
 *    of that path's time.
 *
 *  realnvp_col_sums, realnvp_tanh_grad_sums   the bias gradients of the
 *    backward: column sums of a block of cotangents, the latter fused with
 *    the tanh derivative d <- d (1 - h^2) that precedes every one of them.
 *    Written as Cython loops they ran scalar (acc and d may alias), one
 *    load-add-store per value: ~15% of the backward.  Rows are summed in
 *    order, so results do not depend on threads.
 *
 * realnvp_simd_level() says which copy of realnvp_gemm runs, if any; the
 * Cython kernel calls BLAS otherwise.  realnvp_tanh_row in realnvp.h stays the definition the
 * GPU uses.
 */
#ifndef PFC_REALNVP_CPU_H
#define PFC_REALNVP_CPU_H

#include "pfc_vmath.h"
#include "realnvp.h"

#if PFC_VM_DISPATCH
#define PFC_RNVP_SIMD 1
#else
#define PFC_RNVP_SIMD 0
#endif

namespace pfc {
namespace cpu {

/* The vector ISA of realnvp_gemm on this CPU (vm::LEVEL_AVX512 or
 * LEVEL_AVX2), or vm::LEVEL_BASELINE where it cannot run and the Cython
 * kernel calls BLAS instead. */
inline int realnvp_simd_level() {
#if PFC_RNVP_SIMD
    return vm::cpu_level();
#else
    return vm::LEVEL_BASELINE;
#endif
}

#if PFC_RNVP_SIMD
namespace rnvp {

namespace avx512 {
template <typename T> using V = vm::detail::Zmm<T>;
enum { PANEL_VECTORS = 4 };
#define PFC_RNVP_TARGET PFC_VM_TARGET_AVX512
#include "realnvp_gemm_isa.h"
#undef PFC_RNVP_TARGET
}  // namespace avx512

namespace avx2 {
template <typename T> using V = vm::detail::Ymm<T>;
enum { PANEL_VECTORS = 2 };
#define PFC_RNVP_TARGET PFC_VM_TARGET_AVX2
#include "realnvp_gemm_isa.h"
#undef PFC_RNVP_TARGET
}  // namespace avx2

}  // namespace rnvp
#endif  /* PFC_RNVP_SIMD */

/* h[r * ld + i] = tanh(h[r * ld + i] + bias[i]) for r < rows, i < n (no
 * bias when bias is NULL).  The kernel passes whole contiguous layers
 * (rows = 1), so vm::tanh_array's dispatch is paid once per layer. */
template <typename T>
inline void realnvp_bias_tanh_block(T* h, index_t ld, const T* bias, index_t rows, int n) {
    for (index_t r = 0; r < rows; ++r) {
        T* hr = h + r * ld;
        if (bias) {
            for (int i = 0; i < n; ++i) hr[i] += bias[i];
        }
        vm::tanh_array(hr, hr, n);
    }
}

namespace rnvp {

template <bool TANH_GRAD, typename T>
PFC_VM_INLINE void col_sums_body(T* PFC_RESTRICT d, index_t ld, const T* PFC_RESTRICT h,
                                 index_t rows, int n, T* PFC_RESTRICT sums) {
    for (index_t r = 0; r < rows; ++r) {
        T* dr = d + r * ld;
        const T* hr = h + r * ld;
        PFC_VM_PRAGMA_SIMD
        for (int j = 0; j < n; ++j) {
            T v = dr[j];
            if (TANH_GRAD) {
                v *= T(1) - hr[j] * hr[j];
                dr[j] = v;
            }
            sums[j] += v;
        }
    }
}

template <bool TANH_GRAD, typename T>
void col_sums_base(T* d, index_t ld, const T* h, index_t rows, int n, T* sums) {
    col_sums_body<TANH_GRAD>(d, ld, h, rows, n, sums);
}

#if PFC_RNVP_SIMD
template <bool TANH_GRAD, typename T>
PFC_VM_TARGET_AVX512 void col_sums_avx512(T* d, index_t ld, const T* h, index_t rows, int n,
                                          T* sums) {
    col_sums_body<TANH_GRAD>(d, ld, h, rows, n, sums);
}

template <bool TANH_GRAD, typename T>
PFC_VM_TARGET_AVX2 void col_sums_avx2(T* d, index_t ld, const T* h, index_t rows, int n,
                                      T* sums) {
    col_sums_body<TANH_GRAD>(d, ld, h, rows, n, sums);
}
#endif

template <bool TANH_GRAD, typename T>
inline void col_sums(int level, T* d, index_t ld, const T* h, index_t rows, int n, T* sums) {
#if PFC_RNVP_SIMD
    if (level == vm::LEVEL_AVX512) {
        col_sums_avx512<TANH_GRAD>(d, ld, h, rows, n, sums);
        return;
    }
    if (level == vm::LEVEL_AVX2) {
        col_sums_avx2<TANH_GRAD>(d, ld, h, rows, n, sums);
        return;
    }
#endif
    (void)level;
    col_sums_base<TANH_GRAD>(d, ld, h, rows, n, sums);
}

}  // namespace rnvp

/* sums[j] += sum_{r < rows} d[r * ld + j] for j < n (the rows in order),
 * in the copy for `level` (at most realnvp_simd_level()). */
template <typename T>
inline void realnvp_col_sums(int level, const T* d, index_t ld, index_t rows, int n, T* sums) {
    rnvp::col_sums<false>(level, const_cast<T*>(d), ld, d, rows, n, sums);
}

/* d[r * ld + j] *= 1 - h[r * ld + j]^2, the tanh derivative at the stored
 * activation h, then sums[j] += d[r * ld + j], for r < rows, j < n. */
template <typename T>
inline void realnvp_tanh_grad_sums(int level, T* d, const T* h, index_t ld, index_t rows, int n,
                                   T* sums) {
    rnvp::col_sums<true>(level, d, ld, h, rows, n, sums);
}

/* realnvp_coupling_row (realnvp.h) for every r < rows: the nc changed
 * entries of row r are in s_raw[r * nc ..] / t_raw[r * nc ..], the row at
 * x + r * ld.  The row function calls libm's exp once per entry, which cost
 * ~8% of a float32 forward (the calls, not the arithmetic); here the block's
 * exponents go through one vectorised vm::exp_array pass (<= 2 ulp)
 * between a pass for the exponents and log-determinants and one for the
 * updates, each from realnvp.h's per-entry functions.  log_det[r] += the
 * row's log-determinant (summed in the row function's order) unless
 * log_det is NULL; s_raw ends holding the exponentials, as there. */
template <typename T>
inline void realnvp_coupling_block(bool inverse, const int* changed, int nc, index_t rows,
                                   T* s_raw, const T* t_raw, const T* bias_s, const T* bias_t,
                                   T* x, index_t ld, T* log_det) {
    for (index_t r = 0; r < rows; ++r) {
        T* sr = s_raw + r * nc;
        T row_log_det = T(0);
        for (int j = 0; j < nc; ++j) {
            sr[j] = realnvp_coupling_exponent(inverse, sr[j], bias_s[j]);
            row_log_det += sr[j];
        }
        if (log_det) log_det[r] += row_log_det;
    }
    vm::exp_array(s_raw, s_raw, rows * nc);
    for (index_t r = 0; r < rows; ++r) {
        const T* er = s_raw + r * nc;
        const T* tr = t_raw + r * nc;
        T* xr = x + r * ld;
        for (int j = 0; j < nc; ++j) {
            T& xj = xr[changed[j]];
            xj = realnvp_coupling_update(inverse, xj, er[j], tr[j] + bias_t[j]);
        }
    }
}

/* C[i * ldc + j] = init_ij + sum_{k < K} X[i * xrs + k * xks] W[k * ldw + j]
 * for i < m, j < n, with init_ij = C[i * ldc + j] if acc_c, else bias[j]
 * (0 when bias is NULL), in the copy for `level`: vm::LEVEL_AVX512 or
 * LEVEL_AVX2, at most realnvp_simd_level() (callers check; both copies give
 * the same bits). */
template <typename T>
inline void realnvp_gemm(int level, index_t m, int n, index_t K, const T* x, index_t xrs,
                         index_t xks, const T* w, index_t ldw, const T* bias, bool acc_c, T* c,
                         index_t ldc) {
#if PFC_RNVP_SIMD
    if (level == vm::LEVEL_AVX512) {
        rnvp::avx512::gemm(m, n, K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc);
    } else if (level == vm::LEVEL_AVX2) {
        rnvp::avx2::gemm(m, n, K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc);
    }
#else
    (void)level; (void)m; (void)n; (void)K; (void)x; (void)xrs; (void)xks; (void)w;
    (void)ldw; (void)bias; (void)acc_c; (void)c; (void)ldc;
#endif
}

}  // namespace cpu
}  // namespace pfc

#endif  /* PFC_REALNVP_CPU_H */
