# distutils: language = c++
"""Kernels of the row-wise flows -- scale, shift, planar and radial -- alone
or as a fused run of layers in a ``Chain``.

Design
------
These flows transform each row on its own, so a run of them needs no trip
through memory between layers: a block of rows is carried through every
layer while it sits in L1, and a 16-layer chain reads the batch once and
writes it once, where layer-by-layer execution would stream it 16 times.
A single flow is a run of one layer and shares every kernel.

The per-row math comes from the family headers through the row-wise contract
(``X_prepare``, ``X_forward_row``, ``X_inverse_row``, ``X_backward_row``,
``X_inverse_backward_row``, ``X_finish_grad``; see ``csrc/elementwise.h``),
dispatched on the layer kind by ``csrc/rowwise.h`` -- the same functions the
CUDA kernels run, one thread per row.

* forward: batches of at least ``SMALL_BATCH`` rows take the vectorised block
  kernel of ``csrc/rowwise_cpu.h`` (rows transposed in L1, branch-free SIMD
  transcendentals, compiled for baseline x86-64, AVX2 and AVX-512 and picked
  at run time); smaller ones take the row functions, whose cost does not
  depend on a block size.
* inverse: the row functions, dynamically scheduled, because a planar row's
  Newton solve takes a varying number of steps.
* backward: block by block (``csrc/rowwise_cpu.h``), the forward is
  recomputed keeping every layer's input block, then the layers'
  vector-Jacobian products run in reverse, planar layers vectorised.
* inverse_backward: per row, the inverse is recomputed through the run,
  keeping the K layer inputs of that one row in a small per-thread stack,
  then the layers' vector-Jacobian products run first to last.
* Parameter gradients go to per-chunk accumulators that are summed in chunk
  order (``_parallel.pxd``), bitwise reproducible for any number of
  threads.

A run is described once, at construction of a ``RowwiseRun``: the layer
kinds and the offsets of each layer's raw parameters, derived coefficients
(``work``) and gradient accumulator live in C arrays of the object, so a call
converts no Python sequences.
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
    long long chain_backward_scratch_size(int K, int dim)
    void chain_forward_block[T](int level, const int* kinds, const T* work,
                                const long long* work_offsets, int K, int dim,
                                Py_ssize_t nrows, const T* z, T* x, T* log_det, T* scratch)
    void chain_backward_block[T](int level, const int* kinds, const T* work,
                                 const long long* work_offsets, const long long* acc_offsets,
                                 int K, int dim, Py_ssize_t nrows, const T* z, const T* grad_x,
                                 const T* grad_log_det, T* grad_z, T* acc, T* scratch)

# Below this many rows the forward takes the row functions: the block kernel
# always computes a whole (zero-padded) block.
cdef enum:
    SMALL_BATCH = 32


def plan(kinds, int dim):
    """Offsets of each layer's derived coefficients and gradient accumulator.

    Parameters
    ----------
    kinds : sequence of LayerKind
    dim : int

    Returns
    -------
    work_offsets, acc_offsets : ndarray of int64, shape (K + 1,)
    """
    cdef Py_ssize_t k, K = len(kinds)
    work = np.zeros(K + 1, dtype=np.int64)
    acc = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        work[k + 1] = work[k] + layer_work_size(kinds[k], dim)
        acc[k + 1] = acc[k] + layer_grad_acc_size(kinds[k], dim)
    return work, acc


cdef class RowwiseRun:
    """A run of row-wise layers applied in order, with its kernels.

    Parameters
    ----------
    kinds : sequence of LayerKind
        The layers, first applied first.
    num_params : sequence of int
        Each layer's number of raw parameters (the run's parameter vector is
        theirs concatenated).
    dim : int

    Notes
    -----
    Every method takes the run's parameter vector and validated,
    C-contiguous arrays of one floating dtype, and writes its outputs in
    place; none keeps state between calls, so a run may be used from several
    threads at once.
    """

    cdef int K, dim
    cdef int* kinds
    cdef long long* param_offsets
    cdef long long* work_offsets
    cdef long long* acc_offsets

    def __cinit__(self, kinds, num_params, int dim):
        cdef int k
        self.K = len(kinds)
        self.dim = dim
        if self.K < 1 or len(num_params) != self.K:
            raise ValueError("a run needs one parameter count per layer, and at least one layer")
        self.kinds = <int*>malloc(self.K * sizeof(int))
        self.param_offsets = <long long*>malloc((self.K + 1) * sizeof(long long))
        self.work_offsets = <long long*>malloc((self.K + 1) * sizeof(long long))
        self.acc_offsets = <long long*>malloc((self.K + 1) * sizeof(long long))
        if not (self.kinds and self.param_offsets and self.work_offsets and self.acc_offsets):
            raise MemoryError()
        self.param_offsets[0] = self.work_offsets[0] = self.acc_offsets[0] = 0
        for k in range(self.K):
            self.kinds[k] = int(LayerKind(kinds[k]))
            self.param_offsets[k + 1] = self.param_offsets[k] + num_params[k]
            self.work_offsets[k + 1] = self.work_offsets[k] + layer_work_size(self.kinds[k], dim)
            self.acc_offsets[k + 1] = self.acc_offsets[k] + layer_grad_acc_size(self.kinds[k], dim)

    def __dealloc__(self):
        free(self.kinds)
        free(self.param_offsets)
        free(self.work_offsets)
        free(self.acc_offsets)

    def prepare(self, const floating[::1] params):
        """The derived coefficients of every layer, concatenated (see the
        ``work`` layouts in the family headers)."""
        work = np.empty(self.work_offsets[self.K], dtype=np.asarray(params).dtype)
        cdef floating[::1] work_view = work
        with nogil:
            self._prepare(&params[0], &work_view[0])
        return work

    cdef void _prepare(self, const floating* params, floating* work) noexcept nogil:
        cdef int k
        for k in range(self.K):
            layer_prepare(self.kinds[k], params + self.param_offsets[k], self.dim,
                          work + self.work_offsets[k])

    def forward(self, const floating[::1] params, const floating[:, ::1] z,
                floating[:, ::1] x, floating[::1] log_det):
        """x, log_det = f(z), log|det df/dz| through all layers."""
        cdef Py_ssize_t n = z.shape[0], i, blk, lo
        cdef Py_ssize_t num_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
        cdef int k, K = self.K, dim = self.dim, level
        cdef floating ld
        cdef floating* scratch
        cdef floating* work = <floating*>malloc(self.work_offsets[K] * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        with nogil:
            self._prepare(&params[0], work)
            if n < SMALL_BATCH:
                for i in range(n):
                    ld = layer_forward_row(self.kinds[0], work, dim, &z[i, 0], &x[i, 0])
                    for k in range(1, K):
                        ld = ld + layer_forward_row(self.kinds[k], work + self.work_offsets[k],
                                                    dim, &x[i, 0], &x[i, 0])
                    log_det[i] = ld
            else:
                level = cpu_level()
                for blk in prange(num_blocks, schedule="static",
                                  use_threads_if=n >= MIN_ROWS_PARALLEL):
                    scratch = <floating*>malloc(chain_block_scratch_size(dim) * sizeof(floating))
                    lo = blk * BLOCK_ROWS
                    chain_forward_block(level, self.kinds, work, self.work_offsets, K, dim,
                                        min(<Py_ssize_t>BLOCK_ROWS, n - lo), &z[lo, 0],
                                        &x[lo, 0], &log_det[lo], scratch)
                    free(scratch)
            free(work)

    def inverse(self, const floating[::1] params, const floating[:, ::1] x,
                floating[:, ::1] z, floating[::1] log_det):
        """z, log_det_inv = f^{-1}(x), log|det df^{-1}/dx|, last layer first."""
        cdef Py_ssize_t n = x.shape[0], i
        cdef int k, K = self.K, dim = self.dim
        cdef floating ld
        cdef floating* work = <floating*>malloc(self.work_offsets[K] * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        with nogil:
            self._prepare(&params[0], work)
            for i in prange(n, schedule="dynamic", chunksize=64,
                            use_threads_if=n >= MIN_ROWS_PARALLEL):
                ld = layer_inverse_row(self.kinds[K - 1], work + self.work_offsets[K - 1], dim,
                                       &x[i, 0], &z[i, 0])
                for k in range(K - 2, -1, -1):
                    ld = ld + layer_inverse_row(self.kinds[k], work + self.work_offsets[k], dim,
                                                &z[i, 0], &z[i, 0])
                log_det[i] = ld
            free(work)

    def backward(self, const floating[::1] params, const floating[:, ::1] z,
                 const floating[:, ::1] grad_x, const floating[::1] grad_log_det,
                 floating[:, ::1] grad_z, floating[::1] grad_params):
        """Vector-Jacobian product of z -> (x, log_det); see Flow.backward."""
        self._vjp(False, params, z, grad_x, grad_log_det, grad_z, grad_params)

    def inverse_backward(self, const floating[::1] params, const floating[:, ::1] x,
                         const floating[:, ::1] grad_z, const floating[::1] grad_log_det,
                         floating[:, ::1] grad_x, floating[::1] grad_params):
        """Vector-Jacobian product of x -> (z, log_det_inv); see Flow.inverse_backward."""
        self._vjp(True, params, x, grad_z, grad_log_det, grad_x, grad_params)

    cdef void _vjp(self, bint inverse_map, const floating[::1] params, const floating[:, ::1] v,
                   const floating[:, ::1] grad_out, const floating[::1] grad_log_det,
                   floating[:, ::1] grad_in, floating[::1] grad_params) except *:
        cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j, lo, hi, rows
        cdef int k, K = self.K, dim = self.dim, level
        cdef long long acc_size = self.acc_offsets[K]
        cdef floating* stack      # the K layer inputs of one row
        cdef floating* g
        cdef floating* acc
        cdef floating gld
        cdef floating* work = <floating*>malloc(self.work_offsets[K] * sizeof(floating))
        cdef floating* partial = <floating*>malloc(nc * acc_size * sizeof(floating))
        if work == NULL or partial == NULL:
            free(work)
            free(partial)
            raise MemoryError()
        with nogil:
            self._prepare(&params[0], work)
            for j in range(nc * acc_size):
                partial[j] = 0
            if not inverse_map:
                level = cpu_level()
                for c in prange(nc, schedule="dynamic", use_threads_if=n >= MIN_ROWS_PARALLEL):
                    stack = <floating*>malloc(chain_backward_scratch_size(K, dim)
                                              * sizeof(floating))
                    acc = partial + c * acc_size
                    hi = chunk_start(n, c + 1, nc)
                    lo = chunk_start(n, c, nc)
                    while lo < hi:
                        rows = min(<Py_ssize_t>BLOCK_ROWS, hi - lo)
                        chain_backward_block(level, self.kinds, work, self.work_offsets,
                                             self.acc_offsets, K, dim, rows, &v[lo, 0],
                                             &grad_out[lo, 0], &grad_log_det[lo],
                                             &grad_in[lo, 0], acc, stack)
                        lo = lo + rows
                    free(stack)
            else:
                for c in prange(nc, schedule="dynamic", use_threads_if=n >= MIN_ROWS_PARALLEL):
                    stack = <floating*>malloc(K * dim * sizeof(floating))
                    acc = partial + c * acc_size
                    for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                        g = &grad_in[i, 0]
                        gld = grad_log_det[i]
                        memcpy(g, &grad_out[i, 0], dim * sizeof(floating))
                        memcpy(stack, &v[i, 0], dim * sizeof(floating))
                        # The inverse runs layer K-1 first: stack[j] = input of the
                        # inverse of layer K-1-j; VJPs then go from layer 0 up.
                        for j in range(K - 1):
                            layer_inverse_row(self.kinds[K - 1 - j],
                                              work + self.work_offsets[K - 1 - j], dim,
                                              stack + j * dim, stack + (j + 1) * dim)
                        for k in range(K):
                            layer_inverse_backward_row(self.kinds[k], work + self.work_offsets[k],
                                                       dim, stack + (K - 1 - k) * dim, g, gld, g,
                                                       acc + self.acc_offsets[k])
                    free(stack)
            for c in range(1, nc):
                for j in range(acc_size):
                    partial[j] += partial[c * acc_size + j]
            for k in range(K):
                layer_finish_grad(self.kinds[k], &params[self.param_offsets[k]],
                                  work + self.work_offsets[k], dim,
                                  partial + self.acc_offsets[k],
                                  &grad_params[self.param_offsets[k]])
            free(work)
            free(partial)
