/*
 * elementwise.h -- per-row math of the elementwise flows.
 *
 *   ElementwiseScale:  x = a (.) z,   log_det = sum_i log|a_i|
 *   Shift:             x = z + b,     log_det = 0
 *
 * The log-determinant of both is the same for every row, so it is computed
 * once per call (scale_log_det) rather than per row.  Row functions may be
 * called with x == z (in place): each entry is read before it is written.
 * Gradient accumulators (grad_a, grad_b) are added to, never overwritten, so
 * a caller can sum rows into per-thread partial buffers.
 */
#ifndef PFC_ELEMENTWISE_H
#define PFC_ELEMENTWISE_H

#include "pfc_config.h"

namespace pfc {

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T scale_log_det(const T* a, int dim) {
    T s = T(0);
    for (int i = 0; i < dim; ++i) s += pfc::log(pfc::fabs(a[i]));
    return s;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_forward_row(const T* a, int dim, const T* z, T* x) {
    for (int i = 0; i < dim; ++i) x[i] = a[i] * z[i];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_inverse_row(const T* a, int dim, const T* x, T* z) {
    for (int i = 0; i < dim; ++i) z[i] = x[i] / a[i];
}

/* Vector-Jacobian product of z -> (a z, sum log|a|):
 *   grad_z = a (.) grad_x,   grad_a += grad_x (.) z   (+ grad_log_det / a, added once per
 *   call by the caller with the batch sum of grad_log_det). */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_backward_row(const T* a, int dim, const T* z,
                                                  const T* grad_x, T* grad_z, T* grad_a) {
    for (int i = 0; i < dim; ++i) {
        const T g = grad_x[i];
        grad_a[i] += g * z[i];
        grad_z[i] = a[i] * g;
    }
}

/* Vector-Jacobian product of x -> (x / a, -sum log|a|):
 *   grad_x = grad_z / a,  grad_a += -grad_z (.) x / a^2   (- grad_log_det / a by the caller). */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_inverse_backward_row(const T* a, int dim, const T* x,
                                                          const T* grad_z, T* grad_x, T* grad_a) {
    for (int i = 0; i < dim; ++i) {
        const T gx = grad_z[i] / a[i];
        grad_a[i] -= gx * x[i] / a[i];
        grad_x[i] = gx;
    }
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_forward_row(const T* b, int dim, const T* z, T* x) {
    for (int i = 0; i < dim; ++i) x[i] = z[i] + b[i];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_inverse_row(const T* b, int dim, const T* x, T* z) {
    for (int i = 0; i < dim; ++i) z[i] = x[i] - b[i];
}

}  // namespace pfc

#endif  /* PFC_ELEMENTWISE_H */
