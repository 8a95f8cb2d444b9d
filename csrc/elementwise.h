/*
 * elementwise.h -- per-row math of the elementwise flows, in the row-wise
 * contract shared with planar.h and radial.h (see chain.pyx):
 *
 *   X_prepare(params, dim, work)            derived coefficients, once per call
 *   X_forward_row(work, dim, z, x)          -> log_det         (x may alias z)
 *   X_inverse_row(work, dim, x, z)          -> log_det_inv     (z may alias x)
 *   X_backward_row(work, dim, z, gx, gld, gz, acc)             (gz may alias gx)
 *   X_inverse_backward_row(work, dim, x, gz, gld, gx, acc)     (gx may alias gz)
 *   X_finish_grad(params, work, dim, acc, grad_params)
 *
 * ElementwiseScale:  x = a (.) z,   log_det = sum_i log|a_i|
 *   work = [a_1..a_dim, sum_i log|a_i|]: the log-determinant is the same for
 *   every row, so it is computed once per call.
 *   acc  = [sum_rows grad_x (.) z, sum_rows grad_log_det]; the raw gradient is
 *   grad_a = acc[:dim] + acc[dim] / a (d log|a| / da = 1/a).
 * Shift:             x = z + b,     log_det = 0
 *   work = b, acc = sum_rows grad_x.
 */
#ifndef PFC_ELEMENTWISE_H
#define PFC_ELEMENTWISE_H

#include "pfc_config.h"

namespace pfc {

PFC_HOSTDEVICE PFC_INLINE int scale_work_size(int dim) { return dim + 1; }
PFC_HOSTDEVICE PFC_INLINE int scale_grad_acc_size(int dim) { return dim + 1; }

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_prepare(const T* params, int dim, T* work) {
    T log_det = T(0);
    for (int i = 0; i < dim; ++i) {
        work[i] = params[i];
        log_det += pfc::log(pfc::fabs(params[i]));
    }
    work[dim] = log_det;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T scale_forward_row(const T* work, int dim, const T* z, T* x) {
    for (int i = 0; i < dim; ++i) x[i] = work[i] * z[i];
    return work[dim];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T scale_inverse_row(const T* work, int dim, const T* x, T* z) {
    for (int i = 0; i < dim; ++i) z[i] = x[i] / work[i];
    return -work[dim];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_backward_row(const T* work, int dim, const T* z,
                                                  const T* grad_x, T grad_log_det,
                                                  T* grad_z, T* acc) {
    for (int i = 0; i < dim; ++i) {
        const T g = grad_x[i];
        acc[i] += g * z[i];
        grad_z[i] = work[i] * g;
    }
    acc[dim] += grad_log_det;
}

/* x -> (x / a, -sum log|a|):  d(x_i / a_i)/da_i = -x_i / a_i^2 = -z_i / a_i. */
template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_inverse_backward_row(const T* work, int dim, const T* x,
                                                          const T* grad_z, T grad_log_det,
                                                          T* grad_x, T* acc) {
    for (int i = 0; i < dim; ++i) {
        const T gx = grad_z[i] / work[i];
        acc[i] -= gx * (x[i] / work[i]);
        grad_x[i] = gx;
    }
    acc[dim] -= grad_log_det;
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void scale_finish_grad(const T* params, const T* work, int dim,
                                                 const T* acc, T* grad_params) {
    (void)work;
    for (int i = 0; i < dim; ++i) grad_params[i] = acc[i] + acc[dim] / params[i];
}

PFC_HOSTDEVICE PFC_INLINE int shift_work_size(int dim) { return dim; }
PFC_HOSTDEVICE PFC_INLINE int shift_grad_acc_size(int dim) { return dim; }

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_prepare(const T* params, int dim, T* work) {
    for (int i = 0; i < dim; ++i) work[i] = params[i];
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T shift_forward_row(const T* work, int dim, const T* z, T* x) {
    for (int i = 0; i < dim; ++i) x[i] = z[i] + work[i];
    return T(0);
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T shift_inverse_row(const T* work, int dim, const T* x, T* z) {
    for (int i = 0; i < dim; ++i) z[i] = x[i] - work[i];
    return T(0);
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_backward_row(const T* work, int dim, const T* z,
                                                  const T* grad_x, T grad_log_det,
                                                  T* grad_z, T* acc) {
    (void)work; (void)z; (void)grad_log_det;
    for (int i = 0; i < dim; ++i) {
        acc[i] += grad_x[i];
        grad_z[i] = grad_x[i];
    }
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_inverse_backward_row(const T* work, int dim, const T* x,
                                                          const T* grad_z, T grad_log_det,
                                                          T* grad_x, T* acc) {
    (void)work; (void)x; (void)grad_log_det;
    for (int i = 0; i < dim; ++i) {
        acc[i] -= grad_z[i];
        grad_x[i] = grad_z[i];
    }
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void shift_finish_grad(const T* params, const T* work, int dim,
                                                 const T* acc, T* grad_params) {
    (void)params; (void)work;
    for (int i = 0; i < dim; ++i) grad_params[i] = acc[i];
}

}  // namespace pfc

#endif  /* PFC_ELEMENTWISE_H */
