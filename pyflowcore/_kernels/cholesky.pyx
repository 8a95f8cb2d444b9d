# distutils: language = c++
"""Kernels of the Cholesky product flow.

Design
------
The per-row math lives in ``csrc/cholesky.h`` (shared with CUDA); this
module only schedules it: one ``prange`` over the rows with the GIL
released, fused over float32/float64.  The flow has no parameters, so there
are no batch reductions and no chunked partial buffers: every row is
independent and results do not depend on the thread count.

Work per row is O(n^3) in the matrix order ``n`` (O(dim^1.5)) for all four
maps; forward, inverse and backward run in the output row itself (the header
orders its loops so that an output may overwrite its input).  The inverse
VJP needs the Cholesky factor next to the cotangent it sweeps, so each
thread mallocs one ``n(n+1)/2`` scratch row inside the parallel block (the
thread-local-buffer idiom of Cython's ``parallel()``); the scratch size does
not grow with the batch.

A row whose matrix is not positive definite (or holds NaN/inf) gets NaN in
its own outputs only, like a ufunc's domain error; see ``cholesky.h``.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

from pyflowcore._kernels._parallel cimport MIN_ROWS_PARALLEL


cdef extern from "cholesky.h" namespace "pfc" nogil:
    int cholesky_scratch_size(int n)
    T cholesky_forward_row[T](int n, const T* z, T* x)
    T cholesky_inverse_row[T](int n, const T* x, T* z)
    void cholesky_backward_row[T](int n, const T* z, const T* grad_x, T grad_log_det,
                                  T* grad_z)
    void cholesky_inverse_backward_row[T](int n, const T* x, const T* grad_z,
                                          T grad_log_det, T* grad_x, T* scratch)


def forward(int order, const floating[:, ::1] z, floating[:, ::1] x, floating[::1] log_det):
    """x = lower triangle of L L^T and log|det df/dz|, row by row."""
    cdef Py_ssize_t n = z.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = cholesky_forward_row(order, &z[i, 0], &x[i, 0])


def inverse(int order, const floating[:, ::1] x, floating[:, ::1] z, floating[::1] log_det):
    """z = f^{-1}(x) (Cholesky factor, log diagonal) and log|det df^{-1}/dx|."""
    cdef Py_ssize_t n = x.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = cholesky_inverse_row(order, &x[i, 0], &z[i, 0])


def backward(int order, const floating[:, ::1] z, const floating[:, ::1] grad_x,
             const floating[::1] grad_log_det, floating[:, ::1] grad_z):
    """Vector-Jacobian product of z -> (x, log_det), row by row."""
    cdef Py_ssize_t n = z.shape[0], i
    with nogil:
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            cholesky_backward_row(order, &z[i, 0], &grad_x[i, 0], grad_log_det[i], &grad_z[i, 0])


def inverse_backward(int order, const floating[:, ::1] x, const floating[:, ::1] grad_z,
                     const floating[::1] grad_log_det, floating[:, ::1] grad_x):
    """Vector-Jacobian product of x -> (z, log_det_inv), row by row."""
    cdef Py_ssize_t n = x.shape[0], i
    if n == 0:
        return
    cdef Py_ssize_t scratch = cholesky_scratch_size(order)
    cdef int[::1] failed = np.zeros(1, dtype=np.intc)
    # Set per thread inside the parallel block; initialised so that the
    # firstprivate copy OpenMP makes of it is defined.
    cdef floating* buf = NULL
    with nogil, parallel(use_threads_if=n >= MIN_ROWS_PARALLEL):
        buf = <floating*>malloc(scratch * sizeof(floating))
        if buf == NULL:
            failed[0] = 1
        for i in prange(n, schedule="static"):
            if buf == NULL:
                continue
            cholesky_inverse_backward_row(order, &x[i, 0], &grad_z[i, 0], grad_log_det[i],
                                          &grad_x[i, 0], buf)
        free(buf)
    if failed[0]:
        raise MemoryError("cholesky inverse_backward: could not allocate the per-thread scratch row")
