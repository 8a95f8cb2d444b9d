/*
 * realnvp_gemm_isa.h -- the register-tiled GEMM of realnvp_cpu.h, written
 * once for every vector ISA.  No include guard, on purpose: realnvp_cpu.h
 * includes it once per ISA, inside a namespace that defines
 *
 *   V<T>            the register traits (vm::detail::Zmm or Ymm: L lanes,
 *                   tail masks, loads, stores, set1, zero, fma),
 *   PANEL_VECTORS   the widest panel, in vectors: accumulators for 6 rows of
 *                   it, one row of W and one broadcast of X must fit in the
 *                   register file (4 of 32 zmm, 2 of 16 ymm),
 *
 * and with PFC_RNVP_TARGET set to that ISA's target attribute.  A function
 * template cannot take its target attribute from a template parameter, and
 * a target-less template calling the traits' always_inline intrinsics
 * would not compile, hence the textual copy.
 *
 * Every copy runs the same FMAs in the same order (one per k, k ascending,
 * starting from the bias, zero or C), so the AVX2 and AVX-512 products are
 * bitwise identical.
 */

/* One tile: R rows x NV vectors of C; with TAIL the last vector is masked
 * by `last` (a panel whose width is not a multiple of L). */
template <typename T, int R, int NV, bool TAIL>
PFC_RNVP_TARGET void gemm_tile(index_t K, const T* x, index_t xrs, index_t xks, const T* w,
                               index_t ldw, const T* bias, bool acc_c, T* c, index_t ldc,
                               typename V<T>::m last) {
    typedef V<T> S;
    typename S::v acc[R][NV];
#define PFC_RNVP_LOAD(p, v) ((TAIL && (v) == NV - 1) ? S::load((p), last) : S::loadu(p))
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
            acc[r][v] = acc_c ? PFC_RNVP_LOAD(c + r * ldc + v * S::L, v)
                      : bias ? PFC_RNVP_LOAD(bias + v * S::L, v) : S::zero();
        }
    }
    for (index_t k = 0; k < K; ++k) {
        typename S::v wv[NV];
        const T* wk = w + k * ldw;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) wv[v] = PFC_RNVP_LOAD(wk + v * S::L, v);
        const T* xk = x + k * xks;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const typename S::v xb = S::set1(xk[r * xrs]);
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(xb, wv[v], acc[r][v]);
        }
    }
#undef PFC_RNVP_LOAD
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
            T* cv = c + r * ldc + v * S::L;
            if (TAIL && v == NV - 1) S::store(cv, acc[r][v], last);
            else S::storeu(cv, acc[r][v]);
        }
    }
}

/* Rows of one column panel of NV vectors, in tiles of 6 (12 for a single
 * vector, whose tiles would otherwise leave most registers idle). */
template <typename T, int NV, bool TAIL>
PFC_RNVP_TARGET void gemm_panel(index_t m, index_t K, const T* x, index_t xrs, index_t xks,
                                const T* w, index_t ldw, const T* bias, bool acc_c, T* c,
                                index_t ldc, typename V<T>::m last) {
    constexpr int R = NV == 1 ? 12 : 6;
    index_t i = 0;
    for (; i + R <= m; i += R) {
        gemm_tile<T, R, NV, TAIL>(K, x + i * xrs, xrs, xks, w, ldw, bias, acc_c, c + i * ldc,
                                  ldc, last);
    }
    const index_t rem = m - i;
    x += i * xrs;
    c += i * ldc;
#define PFC_RNVP_TILE(r)                                                                  \
    case r:                                                                               \
        if constexpr (r < R) {                                                            \
            gemm_tile<T, r, NV, TAIL>(K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc, last); \
        }                                                                                 \
        break;
    switch (rem) {
        PFC_RNVP_TILE(1) PFC_RNVP_TILE(2) PFC_RNVP_TILE(3) PFC_RNVP_TILE(4)
        PFC_RNVP_TILE(5) PFC_RNVP_TILE(6) PFC_RNVP_TILE(7) PFC_RNVP_TILE(8)
        PFC_RNVP_TILE(9) PFC_RNVP_TILE(10) PFC_RNVP_TILE(11)
        default: break;
    }
#undef PFC_RNVP_TILE
}

/* A panel of nv <= NV vectors (NV counting down to the one nv asks for). */
template <typename T, int NV>
PFC_RNVP_TARGET void gemm_panel_of(int nv, bool tail, index_t m, index_t K, const T* x,
                                   index_t xrs, index_t xks, const T* w, index_t ldw,
                                   const T* bias, bool acc_c, T* c, index_t ldc,
                                   typename V<T>::m last) {
    if constexpr (NV > 1) {
        if (nv < NV) {
            gemm_panel_of<T, NV - 1>(nv, tail, m, K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc,
                                     last);
            return;
        }
    }
    if (tail) gemm_panel<T, NV, true>(m, K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc, last);
    else gemm_panel<T, NV, false>(m, K, x, xrs, xks, w, ldw, bias, acc_c, c, ldc, last);
}

template <typename T>
PFC_RNVP_TARGET void gemm(index_t m, int n, index_t K, const T* x, index_t xrs, index_t xks,
                          const T* w, index_t ldw, const T* bias, bool acc_c, T* c,
                          index_t ldc) {
    typedef V<T> S;
    constexpr int PANEL = PANEL_VECTORS * S::L;
    for (int j = 0; j < n; j += PANEL) {
        const int nj = (n - j < PANEL) ? n - j : PANEL;
        const int nv = (nj + S::L - 1) / S::L;
        const int in_last = nj - (nv - 1) * S::L;
        gemm_panel_of<T, PANEL_VECTORS>(nv, in_last < S::L, m, K, x, xrs, xks, w + j, ldw,
                                        bias ? bias + j : bias, acc_c, c + j, ldc,
                                        S::tail(in_last));
    }
}
