# distutils: language = c++
"""Kernels of the elementwise flows, ElementwiseScale and Shift.

Design
------
The per-row math lives in ``csrc/elementwise.h`` (shared with CUDA, in the
row-wise contract that the fused chain kernel also uses); this module only
schedules it: one ``prange`` over the rows, GIL released, fused over
float32/float64.  Parameter gradients are batch sums, accumulated per row
chunk into a partial buffer and then added in chunk order (see
``_parallel.pxd``), which keeps them reproducible for any thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange

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
    void scale_finish_grad[T](const T* params, const T* work, int dim, const T* acc,
                              T* grad_params)
    T shift_forward_row[T](const T* work, int dim, const T* z, T* x)
    T shift_inverse_row[T](const T* work, int dim, const T* x, T* z)


def scale_forward(const floating[::1] a, const floating[:, ::1] z,
                  floating[:, ::1] x, floating[::1] log_det):
    cdef Py_ssize_t n = z.shape[0], i
    cdef int dim = <int>z.shape[1]
    cdef floating[::1] work = np.empty(scale_work_size(dim), dtype=np.asarray(a).dtype)
    with nogil:
        scale_prepare(&a[0], dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = scale_forward_row(&work[0], dim, &z[i, 0], &x[i, 0])


def scale_inverse(const floating[::1] a, const floating[:, ::1] x,
                  floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    cdef floating[::1] work = np.empty(scale_work_size(dim), dtype=np.asarray(a).dtype)
    with nogil:
        scale_prepare(&a[0], dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = scale_inverse_row(&work[0], dim, &x[i, 0], &z[i, 0])


def _scale_vjp(bint inverse, const floating[::1] a, const floating[:, ::1] v,
               const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
               floating[:, ::1] grad_in, floating[::1] grad_a):
    cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j
    cdef int dim = <int>v.shape[1], acc_size = scale_grad_acc_size(dim)
    dtype = np.asarray(a).dtype
    cdef floating[::1] work = np.empty(scale_work_size(dim), dtype=dtype)
    cdef floating[:, ::1] partial = np.zeros((nc, acc_size), dtype=dtype)
    with nogil:
        scale_prepare(&a[0], dim, &work[0])
        for c in prange(nc, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                if inverse:
                    scale_inverse_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                               grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
                else:
                    scale_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                       grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
        for c in range(1, nc):
            for j in range(acc_size):
                partial[0, j] += partial[c, j]
        scale_finish_grad(&a[0], &work[0], dim, &partial[0, 0], &grad_a[0])


def scale_backward(a, z, grad_x, grad_log_det, grad_z, grad_a):
    _scale_vjp(False, a, z, grad_x, grad_log_det, grad_z, grad_a)


def scale_inverse_backward(a, x, grad_z, grad_log_det, grad_x, grad_a):
    _scale_vjp(True, a, x, grad_z, grad_log_det, grad_x, grad_a)


def shift_forward(const floating[::1] b, const floating[:, ::1] z,
                  floating[:, ::1] x, floating[::1] log_det):
    cdef Py_ssize_t n = z.shape[0], i
    cdef int dim = <int>z.shape[1]
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = shift_forward_row(&b[0], dim, &z[i, 0], &x[i, 0])


def shift_inverse(const floating[::1] b, const floating[:, ::1] x,
                  floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = shift_inverse_row(&b[0], dim, &x[i, 0], &z[i, 0])


def column_sum(const floating[:, ::1] g, floating[::1] out, floating sign):
    """out = sign * g.sum(axis=0), chunked for reproducibility."""
    cdef Py_ssize_t n = g.shape[0], nc = num_chunks(n), c, i, j
    cdef int dim = <int>g.shape[1]
    cdef floating[:, ::1] partial = np.zeros((nc, dim), dtype=np.asarray(out).dtype)
    with nogil:
        for c in prange(nc, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                for j in range(dim):
                    partial[c, j] += g[i, j]
        for j in range(dim):
            out[j] = 0
        for c in range(nc):
            for j in range(dim):
                out[j] += partial[c, j]
        for j in range(dim):
            out[j] = sign * out[j]
