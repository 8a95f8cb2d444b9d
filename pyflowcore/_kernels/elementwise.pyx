# distutils: language = c++
"""Kernels of the elementwise flows, ElementwiseScale and Shift.

Design
------
The per-row math lives in ``csrc/elementwise.h`` (shared with CUDA); this
module only schedules it: one ``prange`` over the rows, GIL released, fused
over float32/float64.  Parameter gradients are batch sums, accumulated per
row chunk into a partial buffer and then added in chunk order (see
``_parallel.pxd``), which keeps them reproducible for any thread count.
Shift's kernels are plain additions; its gradient is a column sum.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from pyflowcore._kernels._parallel cimport (
    MIN_ROWS_PARALLEL, chunk_start, num_chunks)


cdef extern from "elementwise.h" namespace "pfc" nogil:
    T scale_log_det[T](const T* a, int dim)
    void scale_forward_row[T](const T* a, int dim, const T* z, T* x)
    void scale_inverse_row[T](const T* a, int dim, const T* x, T* z)
    void scale_backward_row[T](const T* a, int dim, const T* z, const T* grad_x,
                               T* grad_z, T* grad_a)
    void scale_inverse_backward_row[T](const T* a, int dim, const T* x, const T* grad_z,
                                       T* grad_x, T* grad_a)
    void shift_forward_row[T](const T* b, int dim, const T* z, T* x)
    void shift_inverse_row[T](const T* b, int dim, const T* x, T* z)


def scale_forward(const floating[::1] a, const floating[:, ::1] z,
                  floating[:, ::1] x, floating[::1] log_det):
    cdef Py_ssize_t n = z.shape[0], i
    cdef int dim = <int>z.shape[1]
    cdef floating ld
    with nogil:
        ld = scale_log_det(&a[0], dim)
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            scale_forward_row(&a[0], dim, &z[i, 0], &x[i, 0])
            log_det[i] = ld


def scale_inverse(const floating[::1] a, const floating[:, ::1] x,
                  floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    cdef floating ld
    with nogil:
        ld = -scale_log_det(&a[0], dim)
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            scale_inverse_row(&a[0], dim, &x[i, 0], &z[i, 0])
            log_det[i] = ld


def _scale_vjp(bint inverse, const floating[::1] a, const floating[:, ::1] v,
               const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
               floating[:, ::1] grad_in, floating[::1] grad_a):
    cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j
    cdef int dim = <int>v.shape[1]
    cdef floating[:, ::1] partial = np.zeros((nc, dim), dtype=np.asarray(a).dtype)
    cdef floating gld_sum = 0
    with nogil:
        for c in prange(nc, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                if inverse:
                    scale_inverse_backward_row(&a[0], dim, &v[i, 0], &grad_out[i, 0],
                                               &grad_in[i, 0], &partial[c, 0])
                else:
                    scale_backward_row(&a[0], dim, &v[i, 0], &grad_out[i, 0],
                                       &grad_in[i, 0], &partial[c, 0])
        for i in range(n):
            gld_sum = gld_sum + grad_log_det[i]
        if inverse:
            gld_sum = -gld_sum
        for j in range(dim):
            grad_a[j] = gld_sum / a[j]
        for c in range(nc):
            for j in range(dim):
                grad_a[j] += partial[c, j]


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
            shift_forward_row(&b[0], dim, &z[i, 0], &x[i, 0])
            log_det[i] = 0


def shift_inverse(const floating[::1] b, const floating[:, ::1] x,
                  floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            shift_inverse_row(&b[0], dim, &x[i, 0], &z[i, 0])
            log_det[i] = 0


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
