/*
 * rowwise.h -- one interface over the row-wise flows (scale, shift, planar,
 * radial), for kernels that run a sequence of them: the fused chain kernels
 * of the CPU (pyflowcore/_kernels/chain.pyx) and of the GPU.
 *
 * Each family header implements the same row contract (see elementwise.h);
 * the functions below dispatch on the layer kind.  In a chain every row
 * takes the same path through the switch, so the branch costs nothing.
 */
#ifndef PFC_ROWWISE_H
#define PFC_ROWWISE_H

#include "pfc_config.h"
#include "elementwise.h"
#include "planar.h"
#include "radial.h"

namespace pfc {

enum LayerKind { KIND_SCALE = 0, KIND_SHIFT = 1, KIND_PLANAR = 2, KIND_RADIAL = 3 };

#define PFC_ROWWISE_DISPATCH(kind, call)            \
    switch (kind) {                                 \
        case KIND_PLANAR: return planar_##call;     \
        case KIND_RADIAL: return radial_##call;     \
        case KIND_SCALE: return scale_##call;       \
        default: return shift_##call;               \
    }

PFC_HOSTDEVICE PFC_INLINE int layer_work_size(int kind, int dim) {
    PFC_ROWWISE_DISPATCH(kind, work_size(dim))
}

PFC_HOSTDEVICE PFC_INLINE int layer_grad_acc_size(int kind, int dim) {
    PFC_ROWWISE_DISPATCH(kind, grad_acc_size(dim))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void layer_prepare(int kind, const T* params, int dim, T* work) {
    PFC_ROWWISE_DISPATCH(kind, prepare(params, dim, work))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T layer_forward_row(int kind, const T* work, int dim, const T* z, T* x) {
    PFC_ROWWISE_DISPATCH(kind, forward_row(work, dim, z, x))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE T layer_inverse_row(int kind, const T* work, int dim, const T* x, T* z) {
    PFC_ROWWISE_DISPATCH(kind, inverse_row(work, dim, x, z))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void layer_backward_row(int kind, const T* work, int dim, const T* z,
                                                  const T* grad_x, T grad_log_det, T* grad_z,
                                                  T* acc) {
    PFC_ROWWISE_DISPATCH(kind, backward_row(work, dim, z, grad_x, grad_log_det, grad_z, acc))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void layer_inverse_backward_row(int kind, const T* work, int dim,
                                                          const T* x, const T* grad_z,
                                                          T grad_log_det, T* grad_x, T* acc) {
    PFC_ROWWISE_DISPATCH(kind, inverse_backward_row(work, dim, x, grad_z, grad_log_det, grad_x, acc))
}

template <typename T>
PFC_HOSTDEVICE PFC_INLINE void layer_finish_grad(int kind, const T* params, const T* work, int dim,
                                                 const T* acc, T* grad_params) {
    PFC_ROWWISE_DISPATCH(kind, finish_grad(params, work, dim, acc, grad_params))
}

#undef PFC_ROWWISE_DISPATCH

}  // namespace pfc

#endif  /* PFC_ROWWISE_H */
