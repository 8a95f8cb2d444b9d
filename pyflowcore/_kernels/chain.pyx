# distutils: language = c++
"""Fused kernels for runs of row-wise flows in a ``Chain``.

Design
------
Scale, shift, planar and radial layers transform each row on its own, so a
run of them needs no trip through memory between layers: each thread takes a
row, carries it through every layer while it sits in L1 (in place in the
output array), and moves on.  A 16-layer chain thus reads the batch once and
writes it once, where layer-by-layer execution would stream it 16 times.

The per-row math comes from the family headers through the row-wise contract
(``X_prepare``, ``X_forward_row``, ``X_inverse_row``, ``X_backward_row``,
``X_inverse_backward_row``, ``X_finish_grad``, documented in
``csrc/elementwise.h``); the ``layer_*`` helpers below dispatch on the layer
kind, a branch that is perfectly predicted because every row takes the same
path.

Backward passes recompute the forward per row, keeping the K layer inputs of
that one row in a small per-chunk scratch buffer, then run the layers'
vector-Jacobian products in reverse.  Parameter gradients go to per-chunk
accumulators that are summed in chunk order (``_parallel.pxd``), so they are
bitwise reproducible for any thread count.

A layer is described by three arrays: ``kinds`` (the ``KIND_*`` codes),
``param_offsets`` (K + 1 offsets into the chain's parameter vector) and the
work and accumulator offsets that ``plan`` derives from them.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from pyflowcore._kernels._parallel cimport (
    MIN_ROWS_PARALLEL, chunk_start, num_chunks)


cdef extern from "elementwise.h" namespace "pfc" nogil:
    int scale_work_size(int dim)
    int scale_grad_acc_size(int dim)
    void scale_prepare[T](const T* params, int dim, T* work)
    T scale_forward_row[T](const T* work, int dim, const T* z, T* x)
    T scale_inverse_row[T](const T* work, int dim, const T* x, T* z)
    void scale_backward_row[T](const T* work, int dim, const T* z, const T* grad_x,
                               T grad_log_det, T* grad_z, T* acc)
    void scale_inverse_backward_row[T](const T* work, int dim, const T* x, const T* grad_z,
                                       T grad_log_det, T* grad_x, T* acc)
    void scale_finish_grad[T](const T* params, const T* work, int dim, const T* acc, T* grad)
    int shift_work_size(int dim)
    int shift_grad_acc_size(int dim)
    void shift_prepare[T](const T* params, int dim, T* work)
    T shift_forward_row[T](const T* work, int dim, const T* z, T* x)
    T shift_inverse_row[T](const T* work, int dim, const T* x, T* z)
    void shift_backward_row[T](const T* work, int dim, const T* z, const T* grad_x,
                               T grad_log_det, T* grad_z, T* acc)
    void shift_inverse_backward_row[T](const T* work, int dim, const T* x, const T* grad_z,
                                       T grad_log_det, T* grad_x, T* acc)
    void shift_finish_grad[T](const T* params, const T* work, int dim, const T* acc, T* grad)

cdef extern from "planar.h" namespace "pfc" nogil:
    int planar_work_size(int dim)
    int planar_grad_acc_size(int dim)
    void planar_prepare[T](const T* params, int dim, T* work)
    T planar_forward_row[T](const T* work, int dim, const T* z, T* x)
    T planar_inverse_row[T](const T* work, int dim, const T* x, T* z)
    void planar_backward_row[T](const T* work, int dim, const T* z, const T* grad_x,
                                T grad_log_det, T* grad_z, T* acc)
    void planar_inverse_backward_row[T](const T* work, int dim, const T* x, const T* grad_z,
                                        T grad_log_det, T* grad_x, T* acc)
    void planar_finish_grad[T](const T* params, const T* work, int dim, const T* acc, T* grad)

cdef extern from "radial.h" namespace "pfc" nogil:
    int radial_work_size(int dim)
    int radial_grad_acc_size(int dim)
    void radial_prepare[T](const T* params, int dim, T* work)
    T radial_forward_row[T](const T* work, int dim, const T* z, T* x)
    T radial_inverse_row[T](const T* work, int dim, const T* x, T* z)
    void radial_backward_row[T](const T* work, int dim, const T* z, const T* grad_x,
                                T grad_log_det, T* grad_z, T* acc)
    void radial_inverse_backward_row[T](const T* work, int dim, const T* x, const T* grad_z,
                                        T grad_log_det, T* grad_x, T* acc)
    void radial_finish_grad[T](const T* params, const T* work, int dim, const T* acc, T* grad)


cpdef enum LayerKind:
    KIND_SCALE = 0
    KIND_SHIFT = 1
    KIND_PLANAR = 2
    KIND_RADIAL = 3


# -- dispatch on the layer kind ----------------------------------------------

cdef inline int work_size(int kind, int dim) noexcept nogil:
    if kind == KIND_PLANAR:
        return planar_work_size(dim)
    if kind == KIND_RADIAL:
        return radial_work_size(dim)
    if kind == KIND_SCALE:
        return scale_work_size(dim)
    return shift_work_size(dim)


cdef inline int grad_acc_size(int kind, int dim) noexcept nogil:
    if kind == KIND_PLANAR:
        return planar_grad_acc_size(dim)
    if kind == KIND_RADIAL:
        return radial_grad_acc_size(dim)
    if kind == KIND_SCALE:
        return scale_grad_acc_size(dim)
    return shift_grad_acc_size(dim)


cdef inline void layer_prepare(int kind, const floating* params, int dim,
                               floating* work) noexcept nogil:
    if kind == KIND_PLANAR:
        planar_prepare(params, dim, work)
    elif kind == KIND_RADIAL:
        radial_prepare(params, dim, work)
    elif kind == KIND_SCALE:
        scale_prepare(params, dim, work)
    else:
        shift_prepare(params, dim, work)


cdef inline floating layer_forward_row(int kind, const floating* work, int dim,
                                       const floating* z, floating* x) noexcept nogil:
    if kind == KIND_PLANAR:
        return planar_forward_row(work, dim, z, x)
    if kind == KIND_RADIAL:
        return radial_forward_row(work, dim, z, x)
    if kind == KIND_SCALE:
        return scale_forward_row(work, dim, z, x)
    return shift_forward_row(work, dim, z, x)


cdef inline floating layer_inverse_row(int kind, const floating* work, int dim,
                                       const floating* x, floating* z) noexcept nogil:
    if kind == KIND_PLANAR:
        return planar_inverse_row(work, dim, x, z)
    if kind == KIND_RADIAL:
        return radial_inverse_row(work, dim, x, z)
    if kind == KIND_SCALE:
        return scale_inverse_row(work, dim, x, z)
    return shift_inverse_row(work, dim, x, z)


cdef inline void layer_backward_row(int kind, const floating* work, int dim, const floating* z,
                                    floating* grad, floating grad_log_det,
                                    floating* acc) noexcept nogil:
    # ``grad`` holds grad_x on entry and grad_z on return (the contract allows aliasing).
    if kind == KIND_PLANAR:
        planar_backward_row(work, dim, z, grad, grad_log_det, grad, acc)
    elif kind == KIND_RADIAL:
        radial_backward_row(work, dim, z, grad, grad_log_det, grad, acc)
    elif kind == KIND_SCALE:
        scale_backward_row(work, dim, z, grad, grad_log_det, grad, acc)
    else:
        shift_backward_row(work, dim, z, grad, grad_log_det, grad, acc)


cdef inline void layer_inverse_backward_row(int kind, const floating* work, int dim,
                                            const floating* x, floating* grad,
                                            floating grad_log_det,
                                            floating* acc) noexcept nogil:
    if kind == KIND_PLANAR:
        planar_inverse_backward_row(work, dim, x, grad, grad_log_det, grad, acc)
    elif kind == KIND_RADIAL:
        radial_inverse_backward_row(work, dim, x, grad, grad_log_det, grad, acc)
    elif kind == KIND_SCALE:
        scale_inverse_backward_row(work, dim, x, grad, grad_log_det, grad, acc)
    else:
        shift_inverse_backward_row(work, dim, x, grad, grad_log_det, grad, acc)


cdef inline void layer_finish_grad(int kind, const floating* params, const floating* work,
                                   int dim, const floating* acc,
                                   floating* grad_params) noexcept nogil:
    if kind == KIND_PLANAR:
        planar_finish_grad(params, work, dim, acc, grad_params)
    elif kind == KIND_RADIAL:
        radial_finish_grad(params, work, dim, acc, grad_params)
    elif kind == KIND_SCALE:
        scale_finish_grad(params, work, dim, acc, grad_params)
    else:
        shift_finish_grad(params, work, dim, acc, grad_params)


# -- the plan: where each layer's work and accumulator live ------------------

def plan(const int[::1] kinds, int dim):
    """Offsets of each layer's derived coefficients and gradient accumulator.

    Returns
    -------
    work_offsets, acc_offsets : ndarray of int64, shape (K + 1,)
    """
    cdef Py_ssize_t k, K = kinds.shape[0]
    work = np.zeros(K + 1, dtype=np.int64)
    acc = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        work[k + 1] = work[k] + work_size(kinds[k], dim)
        acc[k + 1] = acc[k] + grad_acc_size(kinds[k], dim)
    return work, acc


cdef inline void prepare_all(const int[::1] kinds, const floating* params,
                             const long long[::1] param_offsets,
                             const long long[::1] work_offsets, int dim,
                             floating* work) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(kinds.shape[0]):
        layer_prepare(kinds[k], params + param_offsets[k], dim, work + work_offsets[k])


# -- the four maps -------------------------------------------------------------

def forward(const int[::1] kinds, const floating[::1] params,
            const long long[::1] param_offsets, const long long[::1] work_offsets,
            const floating[:, ::1] z, floating[:, ::1] x, floating[::1] log_det):
    cdef Py_ssize_t n = z.shape[0], i, k, K = kinds.shape[0]
    cdef int dim = <int>z.shape[1]
    cdef floating[::1] work = np.empty(max(work_offsets[K], 1), dtype=np.asarray(params).dtype)
    cdef floating ld
    with nogil:
        prepare_all(kinds, &params[0], param_offsets, work_offsets, dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            ld = layer_forward_row(kinds[0], &work[work_offsets[0]], dim, &z[i, 0], &x[i, 0])
            for k in range(1, K):
                ld = ld + layer_forward_row(kinds[k], &work[work_offsets[k]], dim,
                                            &x[i, 0], &x[i, 0])
            log_det[i] = ld


def inverse(const int[::1] kinds, const floating[::1] params,
            const long long[::1] param_offsets, const long long[::1] work_offsets,
            const floating[:, ::1] x, floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i, k, K = kinds.shape[0]
    cdef int dim = <int>x.shape[1]
    cdef floating[::1] work = np.empty(max(work_offsets[K], 1), dtype=np.asarray(params).dtype)
    cdef floating ld
    with nogil:
        prepare_all(kinds, &params[0], param_offsets, work_offsets, dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            ld = layer_inverse_row(kinds[K - 1], &work[work_offsets[K - 1]], dim,
                                   &x[i, 0], &z[i, 0])
            for k in range(K - 2, -1, -1):
                ld = ld + layer_inverse_row(kinds[k], &work[work_offsets[k]], dim,
                                            &z[i, 0], &z[i, 0])
            log_det[i] = ld


def _vjp(bint inverse_map, const int[::1] kinds, const floating[::1] params,
         const long long[::1] param_offsets, const long long[::1] work_offsets,
         const long long[::1] acc_offsets, const floating[:, ::1] v,
         const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
         floating[:, ::1] grad_in, floating[::1] grad_params):
    cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, k, j, K = kinds.shape[0]
    cdef int dim = <int>v.shape[1]
    cdef Py_ssize_t acc_size = acc_offsets[K]
    dtype = np.asarray(params).dtype
    cdef floating[::1] work = np.empty(max(work_offsets[K], 1), dtype=dtype)
    cdef floating[:, ::1] partial = np.zeros((nc, max(acc_size, 1)), dtype=dtype)
    cdef floating* stack      # the K layer inputs of one row
    cdef floating* g
    cdef floating gld
    with nogil:
        prepare_all(kinds, &params[0], param_offsets, work_offsets, dim, &work[0])
        for c in prange(nc, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            stack = <floating*>malloc(K * dim * sizeof(floating))
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                g = &grad_in[i, 0]
                gld = grad_log_det[i]
                memcpy(g, &grad_out[i, 0], dim * sizeof(floating))
                memcpy(stack, &v[i, 0], dim * sizeof(floating))
                if not inverse_map:
                    # stack[k] = input of layer k; then VJPs from the last layer back.
                    for k in range(K - 1):
                        layer_forward_row(kinds[k], &work[work_offsets[k]], dim,
                                          stack + k * dim, stack + (k + 1) * dim)
                    for k in range(K - 1, -1, -1):
                        layer_backward_row(kinds[k], &work[work_offsets[k]], dim,
                                           stack + k * dim, g, gld, &partial[c, acc_offsets[k]])
                else:
                    # The inverse runs layer K-1 first: stack[j] = input of the
                    # inverse of layer K-1-j; VJPs then go from layer 0 up.
                    for j in range(K - 1):
                        layer_inverse_row(kinds[K - 1 - j], &work[work_offsets[K - 1 - j]], dim,
                                          stack + j * dim, stack + (j + 1) * dim)
                    for k in range(K):
                        layer_inverse_backward_row(kinds[k], &work[work_offsets[k]], dim,
                                                   stack + (K - 1 - k) * dim, g, gld,
                                                   &partial[c, acc_offsets[k]])
            free(stack)
        for c in range(1, nc):
            for j in range(acc_size):
                partial[0, j] += partial[c, j]
        for k in range(K):
            layer_finish_grad(kinds[k], &params[param_offsets[k]], &work[work_offsets[k]], dim,
                              &partial[0, acc_offsets[k]], &grad_params[param_offsets[k]])


def backward(kinds, params, param_offsets, work_offsets, acc_offsets,
             z, grad_x, grad_log_det, grad_z, grad_params):
    _vjp(False, kinds, params, param_offsets, work_offsets, acc_offsets,
         z, grad_x, grad_log_det, grad_z, grad_params)


def inverse_backward(kinds, params, param_offsets, work_offsets, acc_offsets,
                     x, grad_z, grad_log_det, grad_x, grad_params):
    _vjp(True, kinds, params, param_offsets, work_offsets, acc_offsets,
         x, grad_z, grad_log_det, grad_x, grad_params)
