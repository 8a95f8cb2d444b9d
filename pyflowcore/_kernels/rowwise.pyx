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
* inverse: batches of at least ``SMALL_BATCH`` rows take the block kernel of
  ``csrc/rowwise_cpu.h`` (a planar layer's Newton solve for a block of rows
  at once, a radial layer's closed form, vectorised; the rare rows they do
  not settle are handed to the row functions), smaller ones the row
  functions.  Dynamically scheduled: rows take varying numbers of Newton
  steps.
* backward: block by block (``csrc/rowwise_cpu.h``), the forward is
  recomputed keeping every layer's input block, then the layers'
  vector-Jacobian products run in reverse, planar and radial layers
  vectorised.
* inverse_backward: from ``SMALL_BATCH`` rows on block by block: the inverse
  is recomputed with the block kernels, keeping each layer's output (and a
  planar layer's t and hp), then the layers' vector-Jacobian products run
  first to last, vectorised.  Below, per row: the inverse is recomputed
  through the run, keeping the K layer inputs of that one row in a small
  per-thread stack, then the layers' vector-Jacobian products run first to
  last.
* quadratic_vjp (``Flow.quadratic_loss_and_grad``): the backward or the
  inverse_backward blocks with the cotangents of the loss
  sum_r (a/2 |y_r|^2 + b ld_r) formed in the block from the output the
  recompute produces (run through the last layer, with log-determinants),
  so the loss and its gradient cost one pass instead of a map and a VJP.
* Parameter gradients go to per-chunk accumulators that are summed in chunk
  order (``_parallel.pxd``), bitwise reproducible for any number of
  threads.  Within a chunk, the planar and radial VJPs' sums over rows stay
  per SIMD lane (``lanes``, after the block scratch) and are folded into
  the chunk's accumulator once, at its end (``chain_vjp_lanes_flush``).

Small batches.  For one layer on a few rows the kernels cost less than a
call's set-up (validation, memoryviews, output allocation, an OpenMP region
even with ``use_threads_if`` false: libgomp's closing barrier makes futex
calls).  ``forward_fast`` / ``inverse_fast`` check exactly-right NumPy
inputs and ``out=`` arrays at C level, allocate with ``PyArray_EMPTY``
unless given results, and run the same row and block functions on raw
pointers, with plain loops below ``MIN_ROWS_PARALLEL`` rows; any other input
gets ``None`` and takes the generic path.

A run is described once, at construction of a ``RowwiseRun``: the layer
kinds and the offsets of each layer's raw parameters, derived coefficients
(``work``) and gradient accumulator live in C arrays of the object, so a call
converts no Python sequences.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from pyflowcore._kernels._parallel cimport (
    MIN_ROWS_PARALLEL, SCRATCH_ALIGN, chunk_start, num_chunks, scratch_alloc)

cimport numpy as cnp

cnp.import_array()

cdef enum:
    # The fast path keeps the GIL for calls on fewer rows, as NumPy's small
    # loops do: releasing and taking it back costs more than their work.
    NOGIL_MIN_ROWS = 128


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
    void* thread_scratch(size_t align, size_t nbytes)
    long long chain_backward_scratch_size(int K, int dim)
    void chain_forward_block[T](int level, const int* kinds, const T* work,
                                const long long* work_offsets, int K, int dim,
                                Py_ssize_t nrows, bint prefetch, const T* z, T* x,
                                T* log_det, T* scratch)
    void chain_backward_block[T](int level, const int* kinds, const T* work,
                                 const long long* work_offsets, const long long* acc_offsets,
                                 int K, int dim, Py_ssize_t nrows, bint prefetch, const T* z,
                                 const T* grad_x, const T* grad_log_det, T a, T b,
                                 double* sums, T* grad_z, T* acc, T* lanes, T* scratch)
    long long chain_vjp_lanes_size(int K, int dim)
    void chain_vjp_lanes_flush[T](const int* kinds, int K, int dim,
                                  const long long* acc_offsets, T* lanes, T* acc)
    void chain_inverse_block[T](int level, const int* kinds, const T* work,
                                const long long* work_offsets, int K, int dim,
                                Py_ssize_t nrows, const T* x, T* z, T* log_det, T* scratch)
    long long chain_inverse_backward_scratch_size(int K, int dim)
    void chain_inverse_backward_block[T](int level, const int* kinds, const T* work,
                                         const long long* work_offsets,
                                         const long long* acc_offsets, int K, int dim,
                                         Py_ssize_t nrows, const T* x, const T* grad_z,
                                         const T* grad_log_det, T a, T b, double* sums,
                                         T* grad_x, T* acc, T* lanes, T* scratch)

# Below this many rows the forward takes the row functions: the block kernel
# computes at least a quarter block (32 rows, zero-padded).
cdef enum:
    SMALL_BATCH = 32

# The fast paths keep the derived coefficients of runs up to this size (in
# doubles) on the stack instead of the heap.
cdef enum:
    STACK_WORK = 512


# The widest copy of the block kernels (pfc::vm LEVEL_*: 0 baseline x86-64,
# 1 AVX2 + FMA, 2 AVX-512) the kernels may pick; lowered only by tests, so
# that every copy the compiler built is checked on a machine that runs the
# widest one.
cdef int _max_level = 2


def _set_max_cpu_level(int level):
    """Cap the CPU copy the block kernels run (a test hook); returns the old cap."""
    global _max_level
    old, _max_level = _max_level, level
    return old


cdef inline int _kernel_level() noexcept nogil:
    return min(cpu_level(), _max_level)


cdef inline bint _kernel_ready(cnp.ndarray a) noexcept:
    # C-contiguous, aligned and in native byte order: what a typed memoryview
    # of the generic path would accept without a copy.
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISBEHAVED_RO(a)


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    # Whether two C-contiguous arrays' bytes overlap.
    cdef char* pa = <char*>cnp.PyArray_DATA(a)
    cdef char* pb = <char*>cnp.PyArray_DATA(b)
    return (cnp.PyArray_NBYTES(a) > 0 and cnp.PyArray_NBYTES(b) > 0
            and pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a))


cdef inline cnp.ndarray _result_array(object arr, cnp.ndarray like, int nd):
    # arr as a result array of the fast paths (an exact, writable,
    # kernel-ready ndarray of like's dtype, shaped like's first nd axes),
    # else None.
    cdef cnp.ndarray r
    cdef int i
    if not cnp.PyArray_CheckExact(arr):
        return None
    r = <cnp.ndarray>arr
    if (cnp.PyArray_TYPE(r) != cnp.PyArray_TYPE(like) or cnp.PyArray_NDIM(r) != nd
            or not (_kernel_ready(r) and cnp.PyArray_ISWRITEABLE(r))):
        return None
    for i in range(nd):
        if cnp.PyArray_DIM(r, i) != cnp.PyArray_DIM(like, i):
            return None
    return r


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

    # -- the fast paths of Flow.forward / Flow.inverse ------------------------
    def forward_fast(self, params, z, out=None):
        """``(x, log_det)`` for inputs already in the kernels' form, else ``None``.

        Parameters
        ----------
        params : ndarray of shape (num_params,)
        z : ndarray of shape (N, dim) or (dim,)
        out : tuple of ndarray (x, log_det), optional
            Result arrays of shapes ``(N, dim), (N,)`` or ``(dim,), ()``.

        Returns
        -------
        (x, log_det) of shapes ``(N, dim), (N,)`` or ``(dim,), ()`` (the
        arrays of ``out`` when given), or None

        Notes
        -----
        The fast path of a row-wise flow's ``forward`` for small batches,
        where the generic path's Python-level validation, output allocation
        and memoryview acquisition cost several times the arithmetic.  It
        takes exact ``ndarray`` instances of one dtype (float32 or float64,
        aligned, native byte order, C-contiguous, ``out`` writable),
        ``params`` of the run's length and ``z`` of shape ``(N, dim)`` or
        ``(dim,)``; the checks are C-level reads of the array structs and the
        outputs, unless given, come from ``PyArray_EMPTY``.  For any other
        input it returns ``None`` and the caller takes the generic,
        converting and validating path (which raises for what is wrong).
        The kernels and their dispatch on ``N`` are those of ``forward``, so
        the results are bitwise the same.  Nothing is cached between calls:
        the derived coefficients are recomputed from ``params`` every time,
        so in-place updates of the parameters are always seen and concurrent
        calls share no mutable state.
        """
        return self._map_fast(params, z, out, False)

    def inverse_fast(self, params, x, out=None):
        """``(z, log_det_inv)`` for inputs already in the kernels' form, else
        ``None``; the fast path of ``inverse`` (see ``forward_fast``)."""
        return self._map_fast(params, x, out, True)

    cdef object _map_fast(self, object params, object points, object results,
                          bint inverse_map):
        cdef cnp.ndarray p, a, out, log_det
        cdef int typenum, nd, failed
        cdef Py_ssize_t n
        cdef long long work_size = self.work_offsets[self.K]
        cdef double stack_work[STACK_WORK]
        cdef void* work = stack_work
        if not (cnp.PyArray_CheckExact(params) and cnp.PyArray_CheckExact(points)):
            return None
        p = <cnp.ndarray>params
        a = <cnp.ndarray>points
        typenum = cnp.PyArray_TYPE(p)
        if ((typenum != cnp.NPY_DOUBLE and typenum != cnp.NPY_FLOAT)
                or cnp.PyArray_TYPE(a) != typenum
                or not (_kernel_ready(p) and _kernel_ready(a))
                or cnp.PyArray_NDIM(p) != 1
                or cnp.PyArray_DIM(p, 0) != self.param_offsets[self.K]):
            return None
        nd = cnp.PyArray_NDIM(a)
        if nd == 2 and cnp.PyArray_DIM(a, 1) == self.dim:
            n = cnp.PyArray_DIM(a, 0)
        elif nd == 1 and cnp.PyArray_DIM(a, 0) == self.dim:
            n = 1
        else:
            return None
        # (N, dim) and (N,) for a batch, (dim,) and () for one point.
        if results is None:
            out = <cnp.ndarray>cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(a), typenum, 0)
            log_det = <cnp.ndarray>cnp.PyArray_EMPTY(nd - 1, cnp.PyArray_DIMS(a), typenum, 0)
        else:
            if not (type(results) is tuple and len(<tuple>results) == 2):
                return None
            out, log_det = _result_array(results[0], a, nd), _result_array(results[1], a, nd - 1)
            # out may be the input itself (the kernels read a row, or a
            # block, before writing it); other overlaps take the generic
            # path, which copies the input (or rejects outputs overlapping
            # each other).
            if (out is None or log_det is None or _overlap(log_det, a)
                    or _overlap(out, log_det)
                    or (_overlap(out, a) and cnp.PyArray_DATA(out) != cnp.PyArray_DATA(a))):
                return None
        if work_size > STACK_WORK:
            work = malloc(work_size * sizeof(double))
            if work == NULL:
                raise MemoryError()
        if n < NOGIL_MIN_ROWS:
            failed = self._map_data(inverse_map, typenum == cnp.NPY_DOUBLE,
                                    cnp.PyArray_DATA(p), work, n, cnp.PyArray_DATA(a),
                                    cnp.PyArray_DATA(out), cnp.PyArray_DATA(log_det))
        else:
            with nogil:
                failed = self._map_data(inverse_map, typenum == cnp.NPY_DOUBLE,
                                        cnp.PyArray_DATA(p), work, n, cnp.PyArray_DATA(a),
                                        cnp.PyArray_DATA(out), cnp.PyArray_DATA(log_det))
        if work != <void*>stack_work:
            free(work)
        if failed:
            raise MemoryError()
        return out, log_det

    cdef int _map_data(self, bint inverse_map, bint double_data, const void* params, void* work,
                       Py_ssize_t n, const void* v, void* out, void* log_det) noexcept nogil:
        # _map_ptr on the arrays' data, of doubles or else floats.
        if double_data:
            return self._map_ptr(inverse_map, <const double*>params, <double*>work, n,
                                 <const double*>v, <double*>out, <double*>log_det)
        return self._map_ptr(inverse_map, <const float*>params, <float*>work, n,
                             <const float*>v, <float*>out, <float*>log_det)

    cdef int _map_ptr(self, bint inverse_map, const floating* params, floating* work,
                      Py_ssize_t n, const floating* v, floating* out,
                      floating* log_det) noexcept nogil:
        # forward / inverse on raw pointers; nonzero when scratch memory ran out.
        self._prepare(params, work)
        if inverse_map:
            return self._inverse_ptr(work, n, v, out, log_det)
        return self._forward_ptr(work, n, v, out, log_det)

    # The dispatch of forward and inverse: the row functions below
    # SMALL_BATCH rows, the block kernels from there on (_map_blocks).
    cdef int _forward_ptr(self, const floating* work, Py_ssize_t n, const floating* z,
                          floating* x, floating* log_det) noexcept nogil:
        cdef Py_ssize_t i
        cdef int k, K = self.K, dim = self.dim
        cdef floating ld
        if n >= SMALL_BATCH:
            return self._map_blocks(False, work, n, z, x, log_det)
        for i in range(n):
            ld = layer_forward_row(self.kinds[0], work, dim, z + i * dim, x + i * dim)
            for k in range(1, K):
                ld = ld + layer_forward_row(self.kinds[k], work + self.work_offsets[k],
                                            dim, x + i * dim, x + i * dim)
            log_det[i] = ld
        return 0

    cdef int _inverse_ptr(self, const floating* work, Py_ssize_t n, const floating* x,
                          floating* z, floating* log_det) noexcept nogil:
        cdef Py_ssize_t i
        cdef int dim = self.dim
        if n >= SMALL_BATCH:
            return self._map_blocks(True, work, n, x, z, log_det)
        for i in range(n):
            log_det[i] = self._inverse_row(work, x + i * dim, z + i * dim)
        return 0

    cdef int _map_blocks(self, bint inverse_map, const floating* work, Py_ssize_t n,
                         const floating* v, floating* out, floating* log_det) noexcept nogil:
        """The block kernels over the batch, one scratch block per thread.

        The inverse is dynamically scheduled: its rows take varying numbers
        of Newton steps.  Below MIN_ROWS_PARALLEL rows the loop is a plain loop,
        not a prange whose use_threads_if is false -- that still opens an
        OpenMP region, and libgomp's closing barrier makes futex calls
        costing about a microsecond.  Each block is computed by the same call
        either way, so results do not depend on the number of threads."""
        cdef Py_ssize_t blk, num_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
        cdef int level = _kernel_level(), failed = 0
        cdef int* failed_ptr = &failed   # written through: shared by the two loops
        cdef long long scratch_size = chain_block_scratch_size(self.dim)
        cdef floating* scratch = NULL
        if n < MIN_ROWS_PARALLEL:
            scratch = <floating*>thread_scratch(SCRATCH_ALIGN, scratch_size * sizeof(floating))
            if scratch == NULL:
                return 1
            for blk in range(num_blocks):
                self._map_block(inverse_map, level, work, n, blk * BLOCK_ROWS, v, out, log_det,
                                scratch)
            return 0
        with parallel():
            scratch = <floating*>scratch_alloc(scratch_size * sizeof(floating))
            if inverse_map:
                for blk in prange(num_blocks, schedule="dynamic"):
                    if scratch == NULL:
                        failed_ptr[0] = 1
                    else:
                        self._map_block(True, level, work, n, blk * BLOCK_ROWS, v, out,
                                        log_det, scratch)
            else:
                # Static: each thread's blocks are contiguous, so the rows a
                # block prefetches are the ones its thread takes next.
                for blk in prange(num_blocks, schedule="static"):
                    if scratch == NULL:
                        failed_ptr[0] = 1
                    else:
                        self._map_block(False, level, work, n, blk * BLOCK_ROWS, v, out,
                                        log_det, scratch)
            free(scratch)
        return failed

    cdef inline void _map_block(self, bint inverse_map, int level, const floating* work,
                                Py_ssize_t n, Py_ssize_t lo, const floating* v, floating* out,
                                floating* log_det, floating* scratch) noexcept nogil:
        cdef Py_ssize_t rows = min(<Py_ssize_t>BLOCK_ROWS, n - lo)
        cdef int dim = self.dim
        if inverse_map:
            chain_inverse_block(level, self.kinds, work, self.work_offsets, self.K, dim, rows,
                                v + lo * dim, out + lo * dim, log_det + lo, scratch)
        else:
            chain_forward_block(level, self.kinds, work, self.work_offsets, self.K, dim, rows,
                                lo + rows < n, v + lo * dim, out + lo * dim, log_det + lo,
                                scratch)

    cdef inline floating _inverse_row(self, const floating* work, const floating* x,
                                      floating* z) noexcept nogil:
        cdef int k, K = self.K, dim = self.dim
        cdef floating ld = layer_inverse_row(self.kinds[K - 1], work + self.work_offsets[K - 1],
                                             dim, x, z)
        for k in range(K - 2, -1, -1):
            ld = ld + layer_inverse_row(self.kinds[k], work + self.work_offsets[k], dim, z, z)
        return ld

    def forward(self, const floating[::1] params, const floating[:, ::1] z,
                floating[:, ::1] x, floating[::1] log_det):
        """x, log_det = f(z), log|det df/dz| through all layers."""
        cdef int failed
        cdef floating* work = <floating*>malloc(self.work_offsets[self.K] * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        with nogil:
            self._prepare(&params[0], work)
            failed = self._forward_ptr(work, z.shape[0], &z[0, 0], &x[0, 0], &log_det[0])
            free(work)
        if failed:
            raise MemoryError()

    def inverse(self, const floating[::1] params, const floating[:, ::1] x,
                floating[:, ::1] z, floating[::1] log_det):
        """z, log_det_inv = f^{-1}(x), log|det df^{-1}/dx|, last layer first."""
        cdef int failed
        cdef floating* work = <floating*>malloc(self.work_offsets[self.K] * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        with nogil:
            self._prepare(&params[0], work)
            failed = self._inverse_ptr(work, x.shape[0], &x[0, 0], &z[0, 0], &log_det[0])
            free(work)
        if failed:
            raise MemoryError()

    def backward(self, const floating[::1] params, const floating[:, ::1] z,
                 const floating[:, ::1] grad_x, const floating[::1] grad_log_det,
                 floating[:, ::1] grad_z, floating[::1] grad_params):
        """Vector-Jacobian product of z -> (x, log_det); see Flow.backward."""
        self._vjp(False, params, z, &grad_x[0, 0] if z.shape[0] else NULL,
                  &grad_log_det[0] if z.shape[0] else NULL, 0, 0, NULL, grad_z, grad_params)

    def inverse_backward(self, const floating[::1] params, const floating[:, ::1] x,
                         const floating[:, ::1] grad_z, const floating[::1] grad_log_det,
                         floating[:, ::1] grad_x, floating[::1] grad_params):
        """Vector-Jacobian product of x -> (z, log_det_inv); see Flow.inverse_backward."""
        self._vjp(True, params, x, &grad_z[0, 0] if x.shape[0] else NULL,
                  &grad_log_det[0] if x.shape[0] else NULL, 0, 0, NULL, grad_x, grad_params)

    def quadratic_vjp(self, bint inverse_map, const floating[::1] params,
                      const floating[:, ::1] v, double sq_weight, double log_det_weight,
                      floating[:, ::1] grad_in, floating[::1] grad_params):
        """The VJP of sum_r (sq_weight/2 |y_r|^2 + log_det_weight ld_r), (y, ld)
        the map (or its inverse) at v, with the cotangents formed in the
        block kernels (or, for an inverse below SMALL_BATCH rows, the row
        functions) from the output they recompute; returns the float64 sums
        (sum_r |y_r|^2, sum_r ld_r)."""
        cdef Py_ssize_t nc = num_chunks(v.shape[0]), c
        cdef double[:, ::1] sums = np.zeros((nc, 2))
        self._vjp(inverse_map, params, v, NULL, NULL, <floating>sq_weight,
                  <floating>log_det_weight, &sums[0, 0], grad_in, grad_params)
        for c in range(1, nc):
            sums[0, 0] += sums[c, 0]
            sums[0, 1] += sums[c, 1]
        return sums[0, 0], sums[0, 1]

    cdef void _vjp(self, bint inverse_map, const floating[::1] params, const floating[:, ::1] v,
                   const floating* grad_out, const floating* grad_log_det, floating a,
                   floating b, double* sums, floating[:, ::1] grad_in,
                   floating[::1] grad_params) except *:
        """grad_out NULL: the quadratic loss's cotangents (a, b), its sums per
        chunk into sums (nc x 2)."""
        cdef Py_ssize_t n = v.shape[0], nc = num_chunks(n), c, i, j, lo, hi, rows
        cdef int k, K = self.K, dim = self.dim, level, failed = 0
        cdef long long acc_size = self.acc_offsets[K]
        cdef floating* stack = NULL   # per thread: the layer inputs of a block or a row
        cdef floating* g
        cdef floating* acc
        cdef floating gld, ld
        cdef double sq
        cdef const floating* go
        cdef const floating* gl
        cdef double* sc
        cdef long long scratch_size, lanes_size
        cdef floating* lanes = NULL
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
            if not inverse_map or n >= SMALL_BATCH:
                level = _kernel_level()
                scratch_size = (chain_inverse_backward_scratch_size(K, dim) if inverse_map
                                else chain_backward_scratch_size(K, dim))
                lanes_size = chain_vjp_lanes_size(K, dim)
                with parallel(use_threads_if=n >= MIN_ROWS_PARALLEL):
                    # The block scratch, then the per-lane sums kept across a chunk's blocks.
                    stack = <floating*>scratch_alloc((scratch_size + lanes_size)
                                                     * sizeof(floating))
                    lanes = stack + scratch_size
                    if stack != NULL:
                        memset(lanes, 0, lanes_size * sizeof(floating))
                    for c in prange(nc, schedule="dynamic"):
                        if stack == NULL:
                            failed += 1
                            continue
                        acc = partial + c * acc_size
                        hi = chunk_start(n, c + 1, nc)
                        lo = chunk_start(n, c, nc)
                        while lo < hi:
                            rows = min(<Py_ssize_t>BLOCK_ROWS, hi - lo)
                            go = grad_out + lo * dim if grad_out != NULL else NULL
                            gl = grad_log_det + lo if grad_out != NULL else NULL
                            sc = sums + 2 * c if grad_out == NULL else NULL
                            if inverse_map:
                                chain_inverse_backward_block(
                                    level, self.kinds, work, self.work_offsets,
                                    self.acc_offsets, K, dim, rows, &v[lo, 0], go, gl, a, b,
                                    sc, &grad_in[lo, 0], acc, lanes, stack)
                            else:
                                chain_backward_block(
                                    level, self.kinds, work, self.work_offsets, self.acc_offsets,
                                    K, dim, rows, lo + rows < hi, &v[lo, 0], go, gl, a, b, sc,
                                    &grad_in[lo, 0], acc, lanes, stack)
                            lo = lo + rows
                        chain_vjp_lanes_flush(self.kinds, K, dim, self.acc_offsets, lanes, acc)
                    free(stack)
            else:
                with parallel(use_threads_if=n >= MIN_ROWS_PARALLEL):
                    stack = <floating*>malloc(K * dim * sizeof(floating))
                    for c in prange(nc, schedule="dynamic"):
                        if stack == NULL:
                            failed += 1
                            continue
                        acc = partial + c * acc_size
                        for i in range(chunk_start(n, c, nc), chunk_start(n, c + 1, nc)):
                            g = &grad_in[i, 0]
                            memcpy(stack, &v[i, 0], dim * sizeof(floating))
                            # The inverse runs layer K-1 first: stack[j] = input of the
                            # inverse of layer K-1-j; VJPs then go from layer 0 up.
                            ld = 0
                            for j in range(K - 1):
                                ld = ld + layer_inverse_row(
                                    self.kinds[K - 1 - j], work + self.work_offsets[K - 1 - j],
                                    dim, stack + j * dim, stack + (j + 1) * dim)
                            if grad_out == NULL:
                                # The quadratic loss: z (the last inverse) into g, then a z.
                                ld = ld + layer_inverse_row(self.kinds[0], work, dim,
                                                            stack + (K - 1) * dim, g)
                                sq = 0
                                for j in range(dim):
                                    sq = sq + <double>g[j] * g[j]
                                    g[j] = a * g[j]
                                sums[2 * c] += sq
                                sums[2 * c + 1] += ld
                                gld = b
                            else:
                                memcpy(g, grad_out + i * dim, dim * sizeof(floating))
                                gld = grad_log_det[i]
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
        if failed:
            raise MemoryError()
