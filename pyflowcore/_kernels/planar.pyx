# distutils: language = c++
"""Kernels of the planar flow.

Design
------
The per-row math lives in ``csrc/planar.h`` (shared with CUDA and with the
fused chain kernel, in the row-wise contract); this module only schedules it:
``planar_prepare`` derives ``uhat``, ``w.uhat`` and ``softplus(w.u)`` once
per call into a small ``work`` vector allocated per call (so concurrent calls
share no mutable state), then one ``prange`` over the rows, GIL released,
fused over float32/float64.  A forward row is one pass for ``w.z`` and one
for ``x``; the inverse adds a scalar safeguarded-Newton solve per row, whose
iteration count varies by row, hence ``schedule="dynamic"`` there.

Parameter gradients are batch sums: each row chunk accumulates
``dL/duhat``, ``dL/dw`` (``uhat`` fixed) and ``dL/db`` into its own slice of
a partial buffer, the partials are added in chunk order (``_parallel.pxd``),
which keeps them bitwise reproducible for any thread count, and
``planar_finish_grad`` applies the chain rule through ``uhat(u, w)`` once.

The inverse VJP is implicit differentiation.  With ``J = I + hp uhat w^T``
(``hp = 1 - tanh^2(s)``, ``s = w.z + b``), ``D = det J = 1 + hp w.uhat`` and
``g`` the cotangent of ``log_det_inv = -log D``, the loss
``L = g_z.z(x) + g log_det_inv`` has explicit ``z``-gradient
``q = g_z + g grad_z log D`` and ``grad_x = J^{-T} q``; Sherman-Morrison gives
``J^{-T} = I - hp w uhat^T / D``.  As ``dz/dtheta = -J^{-1} df/dtheta``,
``grad_params = -(grad_x^T df/dtheta + g dlog D/dtheta)``: minus the forward
VJP's parameter part at ``z`` with cotangents ``(grad_x, g)``.  Both share
the scalar ``d = hp/D (uhat.g_z - 2 g (w.uhat) tanh(s) / D)``:
``grad_x = g_z - d w`` and the forward ``dL/ds`` at ``grad_x`` equals ``d``.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from pyflowcore._kernels._parallel cimport (
    MIN_ROWS_PARALLEL, chunk_start, num_chunks)


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
    void planar_finish_grad[T](const T* params, const T* work, int dim, const T* acc,
                               T* grad_params)


def planar_work(const floating[::1] params, int dim):
    """The derived coefficients ``[uhat (dim), w (dim), b, w.uhat, softplus(w.u)]``."""
    cdef floating[::1] work = np.empty(planar_work_size(dim), dtype=np.asarray(params).dtype)
    with nogil:
        planar_prepare(&params[0], dim, &work[0])
    return np.asarray(work)


def planar_forward(const floating[::1] params, const floating[:, ::1] z,
                   floating[:, ::1] x, floating[::1] log_det):
    cdef Py_ssize_t n = z.shape[0], i
    cdef int dim = <int>z.shape[1]
    cdef floating[::1] work = np.empty(planar_work_size(dim), dtype=np.asarray(params).dtype)
    with nogil:
        planar_prepare(&params[0], dim, &work[0])
        for i in prange(n, schedule="static", use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = planar_forward_row(&work[0], dim, &z[i, 0], &x[i, 0])


def planar_inverse(const floating[::1] params, const floating[:, ::1] x,
                   floating[:, ::1] z, floating[::1] log_det):
    cdef Py_ssize_t n = x.shape[0], i
    cdef int dim = <int>x.shape[1]
    cdef floating[::1] work = np.empty(planar_work_size(dim), dtype=np.asarray(params).dtype)
    with nogil:
        planar_prepare(&params[0], dim, &work[0])
        for i in prange(n, schedule="dynamic", chunksize=64,
                        use_threads_if=n >= MIN_ROWS_PARALLEL):
            log_det[i] = planar_inverse_row(&work[0], dim, &x[i, 0], &z[i, 0])


def _planar_vjp(bint inverse, const floating[::1] params, const floating[:, ::1] v,
                const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
                floating[:, ::1] grad_in, floating[::1] grad_params):
    cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j
    cdef int dim = <int>v.shape[1], acc_size = planar_grad_acc_size(dim)
    dtype = np.asarray(params).dtype
    cdef floating[::1] work = np.empty(planar_work_size(dim), dtype=dtype)
    cdef floating[:, ::1] partial = np.zeros((nc, acc_size), dtype=dtype)
    with nogil:
        planar_prepare(&params[0], dim, &work[0])
        # One chunk per iteration: which thread runs it does not change the sums.
        for c in prange(nc, schedule="dynamic", use_threads_if=n >= MIN_ROWS_PARALLEL):
            for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                if inverse:
                    planar_inverse_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                                grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
                else:
                    planar_backward_row(&work[0], dim, &v[i, 0], &grad_out[i, 0],
                                        grad_log_det[i], &grad_in[i, 0], &partial[c, 0])
        for c in range(1, nc):
            for j in range(acc_size):
                partial[0, j] += partial[c, j]
        planar_finish_grad(&params[0], &work[0], dim, &partial[0, 0], &grad_params[0])


def planar_backward(params, z, grad_x, grad_log_det, grad_z, grad_params):
    _planar_vjp(False, params, z, grad_x, grad_log_det, grad_z, grad_params)


def planar_inverse_backward(params, x, grad_z, grad_log_det, grad_x, grad_params):
    _planar_vjp(True, params, x, grad_z, grad_log_det, grad_x, grad_params)
