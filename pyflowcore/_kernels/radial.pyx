# distutils: language = c++
"""Kernels of the radial flow.

Design
------
The per-row math lives in ``csrc/radial.h`` (shared with CUDA and with the
fused chain kernel, in the row-wise contract); this module only schedules
it: the derived coefficients ``[alpha, s, beta, z0]`` are computed once per
call into a small per-call buffer (never shared, so concurrent calls are
safe), then one ``prange`` over the rows runs with the GIL released, fused
over float32/float64.  The inverse is closed-form (a quadratic in ``r``), so
it costs about as much as the forward.

Parameter gradients are batch sums of a per-row accumulator of length
``dim + 2`` (gradients with respect to ``alpha``, ``s = alpha + beta`` and
``z0``), summed per row chunk into a partial buffer and then added in chunk
order (see ``_parallel.pxd``), which keeps them bitwise reproducible for any
thread count; ``radial_finish_grad`` then applies the chain rule to the raw
``log_alpha`` and ``beta_raw`` once.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from pyflowcore._kernels._parallel cimport (
    MIN_ROWS_PARALLEL, chunk_start, num_chunks)


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
    void radial_finish_grad[T](const T* params, const T* work, int dim, const T* acc,
                               T* grad_params)


def forward(const floating[::1] params, const floating[:, ::1] z,
            floating[:, ::1] x, floating[::1] log_det):
    """x = f(z) and log|det df/dz|, row by row, into the given arrays."""
    cdef Py_ssize_t n = z.shape[0], i
    cdef int dim = <int>z.shape[1]
    cdef floating[::1] work = np.empty(radial_work_size(dim), dtype=np.asarray(params).dtype)
    with nogil:
        radial_prepare(&params[0], dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = radial_forward_row(&work[0], dim, &z[i, 0], &x[i, 0])


def inverse(const floating[::1] params, const floating[:, ::1] x,
            floating[:, ::1] z, floating[::1] log_det):
    """z = f^{-1}(x) and log|det df^{-1}/dx|, row by row, into the given arrays."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    cdef floating[::1] work = np.empty(radial_work_size(dim), dtype=np.asarray(params).dtype)
    with nogil:
        radial_prepare(&params[0], dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = radial_inverse_row(&work[0], dim, &x[i, 0], &z[i, 0])


def _vjp(bint inverse, const floating[::1] params, const floating[:, ::1] v,
         const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
         floating[:, ::1] grad_in, floating[::1] grad_params):
    cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j
    cdef int dim = <int>v.shape[1], acc_size = radial_grad_acc_size(dim)
    dtype = np.asarray(params).dtype
    cdef floating[::1] work = np.empty(radial_work_size(dim), dtype=dtype)
    cdef floating[:, ::1] partial = np.zeros((nc, acc_size), dtype=dtype)
    with nogil:
        radial_prepare(&params[0], dim, &work[0])
        for c in prange(nc, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                if inverse:
                    radial_inverse_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                                grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
                else:
                    radial_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                        grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
        for c in range(1, nc):
            for j in range(acc_size):
                partial[0, j] += partial[c, j]
        radial_finish_grad(&params[0], &work[0], dim, &partial[0, 0], &grad_params[0])


def backward(params, z, grad_x, grad_log_det, grad_z, grad_params):
    """VJP of z -> (x, log_det); grad_params is written (summed over rows)."""
    _vjp(False, params, z, grad_x, grad_log_det, grad_z, grad_params)


def inverse_backward(params, x, grad_z, grad_log_det, grad_x, grad_params):
    """VJP of x -> (z, log_det_inv); grad_params is written (summed over rows)."""
    _vjp(True, params, x, grad_z, grad_log_det, grad_x, grad_params)
