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


cdef extern from "rowwise.h" namespace "pfc" nogil:
    cpdef enum LayerKind:
        KIND_SCALE
        KIND_SHIFT
        KIND_PLANAR
        KIND_RADIAL
    int layer_work_size(int kind, int dim)
    int layer_grad_acc_size(int kind, int dim)
    void layer_prepare[T](int kind, const T* params, int dim, T* work)
    T layer_forward_row[T](int kind, const T* work, int dim, const T* z, T* x)
    T layer_inverse_row[T](int kind, const T* work, int dim, const T* x, T* z)
    void layer_backward_row[T](int kind, const T* work, int dim, const T* z, const T* grad_x,
                               T grad_log_det, T* grad_z, T* acc)
    void layer_inverse_backward_row[T](int kind, const T* work, int dim, const T* x,
                                       const T* grad_z, T grad_log_det, T* grad_x, T* acc)
    void layer_finish_grad[T](int kind, const T* params, const T* work, int dim,
                              const T* acc, T* grad_params)

cdef extern from "rowwise_cpu.h" namespace "pfc::vm" nogil:
    int cpu_level()

cdef extern from "rowwise_cpu.h" namespace "pfc::cpu" nogil:
    enum:
        BLOCK_ROWS
    int chain_block_scratch_size(int dim)
    void chain_forward_block[T](int level, const int* kinds, const T* work,
                                const long long* work_offsets, int K, int dim,
                                Py_ssize_t nrows, const T* z, T* x, T* log_det, T* scratch)


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
        work[k + 1] = work[k] + layer_work_size(kinds[k], dim)
        acc[k + 1] = acc[k] + layer_grad_acc_size(kinds[k], dim)
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
    cdef Py_ssize_t n = z.shape[0], blk, lo, num_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    cdef int dim = <int>z.shape[1], K = <int>kinds.shape[0], level = cpu_level()
    cdef floating[::1] work = np.empty(max(work_offsets[K], 1), dtype=np.asarray(params).dtype)
    cdef floating* scratch
    with nogil:
        prepare_all(kinds, &params[0], param_offsets, work_offsets, dim, &work[0])
        for blk in prange(num_blocks, schedule="static",
                          use_threads_if=n >= MIN_ROWS_PARALLEL):
            scratch = <floating*>malloc(chain_block_scratch_size(dim) * sizeof(floating))
            lo = blk * BLOCK_ROWS
            chain_forward_block(level, &kinds[0], &work[0], &work_offsets[0], K, dim,
                                min(BLOCK_ROWS, n - lo), &z[lo, 0], &x[lo, 0], &log_det[lo],
                                scratch)
            free(scratch)


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
                                           stack + k * dim, g, gld, g, &partial[c, acc_offsets[k]])
                else:
                    # The inverse runs layer K-1 first: stack[j] = input of the
                    # inverse of layer K-1-j; VJPs then go from layer 0 up.
                    for j in range(K - 1):
                        layer_inverse_row(kinds[K - 1 - j], &work[work_offsets[K - 1 - j]], dim,
                                          stack + j * dim, stack + (j + 1) * dim)
                    for k in range(K):
                        layer_inverse_backward_row(kinds[k], &work[work_offsets[k]], dim,
                                                   stack + (K - 1 - k) * dim, g, gld, g,
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
