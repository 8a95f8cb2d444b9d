/*
 * realnvp.h -- per-element math of the Real NVP coupling layers, shared by
 * the Cython kernels (pyflowcore/_kernels/realnvp.pyx) and, later, CUDA.
 *
 * One coupling with binary mask b maps a row y to
 *
 *   x_P = y_P                                   (passed entries, b = 1)
 *   x_C = y_C * exp(s_C) + t_C                  (changed entries, b = 0)
 *   log_det = sum_{j in C} s_j
 *
 * where s, t are tanh MLPs of the passed entries.  The matrix products of
 * the nets are left to BLAS (on the CPU) or to the device code; what is here
 * is everything elementwise around them:
 *
 *   realnvp_tanh_row          h = tanh(a + bias), in place
 *   realnvp_tanh_grad_row     d <- d * (1 - h^2), the tanh derivative
 *   realnvp_coupling_*        the masked affine update of the changed
 *                             entries, its log-determinant and their VJPs
 *
 * The coupling functions see only the changed entries: `changed` lists their
 * `nc` column indices, and s_raw / t_raw hold the output layers' values for
 * exactly those entries (without the output bias, which is added here), so no
 * arithmetic is ever spent on mask zeros.
 */
#ifndef PFC_REALNVP_H
#define PFC_REALNVP_H

#include "pfc_config.h"

namespace pfc {

/* h_i = tanh(h_i + bias_i) for i < n. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void realnvp_tanh_row(T* h, const T* bias, int n) {
    for (int i = 0; i < n; ++i) h[i] = pfc::tanh(h[i] + bias[i]);
}

/* d_i <- d_i * (1 - h_i^2): back through h = tanh(a), reusing the stored h
 * instead of evaluating tanh again. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void realnvp_tanh_grad_row(T* d, const T* h, int n) {
    for (int i = 0; i < n; ++i) d[i] *= T(1) - h[i] * h[i];
}

/* The two elementwise steps of a coupling, around exp: the exponent of a
 * changed entry, s = s_raw + bias_s (negated for the inverse), and the
 * update of the entry from e = exp(that exponent) and t = t_raw + bias_t:
 * x e + t, or for the inverse (x - t) e.  The row functions below compose
 * them; the CPU's block kernel (realnvp_coupling_block in realnvp_cpu.h)
 * runs them in separate passes around one vectorised exp. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T realnvp_coupling_exponent(bool inverse, T s_raw, T bias_s) {
    const T s = s_raw + bias_s;
    return inverse ? -s : s;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T realnvp_coupling_update(bool inverse, T x, T e, T t) {
    return inverse ? (x - t) * e : x * e + t;
}

/* Forward coupling of one row, in place on `x` (which holds y on entry):
 *   s_j = s_raw_j + bias_s_j,  t_j = t_raw_j + bias_t_j,
 *   x[changed_j] = x[changed_j] * exp(s_j) + t_j,
 * or with `inverse` the inverse coupling, in place on x (which holds the
 * coupling's output on entry):
 *   x[changed_j] = (x[changed_j] - t_j) * exp(-s_j).
 * On return s_raw_j holds exp(s_j) (exp(-s_j)), which the backward pass
 * needs.  Returns the row's log-determinant sum_j s_j (-sum_j s_j). */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE T realnvp_coupling_row(bool inverse, const int* changed, int nc,
                                                 T* s_raw, const T* t_raw, const T* bias_s,
                                                 const T* bias_t, T* x) {
    T log_det = T(0);
    for (int j = 0; j < nc; ++j) {
        const T s = realnvp_coupling_exponent(inverse, s_raw[j], bias_s[j]);
        const T e = pfc::exp(s);
        const int col = changed[j];
        x[col] = realnvp_coupling_update(inverse, x[col], e, t_raw[j] + bias_t[j]);
        s_raw[j] = e;
        log_det += s;
    }
    return log_det;
}

/* VJP of the forward coupling of one row.  `e` = exp(s) from
 * realnvp_coupling_row, `y` the coupling's input row, `g` the
 * cotangent of its output row on entry.  Writes the cotangents of s and t
 * (ds, dt, one per changed entry) and updates the changed entries of `g` to
 * the cotangent of y; the passed entries of `g` are left for the caller,
 * who adds the nets' contribution to them:
 *   ds_j = g_j y_j e_j + grad_log_det,  dt_j = g_j,  g_j <- g_j e_j. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void realnvp_coupling_backward_row(const int* changed, int nc,
                                                             const T* e, const T* y,
                                                             T grad_log_det, T* g,
                                                             T* ds, T* dt) {
    for (int j = 0; j < nc; ++j) {
        const int col = changed[j];
        const T gj = g[col];
        ds[j] = gj * y[col] * e[j] + grad_log_det;
        dt[j] = gj;
        g[col] = gj * e[j];
    }
}

/* VJP of the inverse coupling of one row.  `r` = exp(-s) from
 * realnvp_coupling_row (inverse), `z` the inverse coupling's OUTPUT row,
 * `g` the cotangent of that output on entry.  With z_j = (x_j - t_j) r_j and
 * log_det_inv = -sum s_j:
 *   ds_j = -g_j z_j - grad_log_det,  dt_j = -g_j r_j,  g_j <- g_j r_j. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void realnvp_coupling_inverse_backward_row(const int* changed, int nc,
                                                                     const T* r, const T* z,
                                                                     T grad_log_det, T* g,
                                                                     T* ds, T* dt) {
    for (int j = 0; j < nc; ++j) {
        const int col = changed[j];
        const T gr = g[col] * r[j];
        ds[j] = -g[col] * z[col] - grad_log_det;
        dt[j] = -gr;
        g[col] = gr;
    }
}

}  // namespace pfc

#endif  /* PFC_REALNVP_H */
