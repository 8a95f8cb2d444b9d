# distutils: language = c++
"""Kernels of the Real NVP flow.

Design
------
A Real NVP coupling is two small MLPs (s and t) applied to the passed
entries of a row, then an elementwise affine update of the changed entries.
The MLP layers are matrix products, so unlike the row-wise flows the batch is
processed in *row blocks*: each block of ``block_rows`` rows is carried
through every coupling with GEMMs (see the two back ends below), while
the elementwise parts -- tanh layers, their derivative, the masked affine
update and its log-determinant -- come from ``csrc/realnvp.h`` (shared with
CUDA).  Blocks are distributed over an OpenMP team (``prange``), each thread
owning one scratch buffer for the whole call.

No arithmetic is spent on mask zeros:

* the first layer sees only the p passed entries: its weights are gathered
  once per call into ``W1`` (2U x p: the passed columns of the s-net's A_1
  stacked on those of the t-net, so both nets' first layers are one GEMM),
  and each block gathers the passed entries of its rows into ``Zp`` (B x p);
* the output layers compute only the c = dim - p changed entries, from the
  gathered rows of ``A_out`` / ``b_out``.

The gathered weights live in ``work``, one slot per mask (fixed stride,
sized for the largest p and c), in both orientations so that every product
reads its right-hand operand row-major (see ``make_geom``):

    W1 (2U x p) | W1^T (p x 2U) | b1 (2U) | AoS, AoT (c x U) |
    AoS^T, AoT^T (U x c) | boS, boT (c) | A_l^T of both nets (U x U each)

Two GEMM back ends (``mm``): on AVX2 and AVX-512 CPUs the register-tiled
GEMM of ``csrc/realnvp_cpu.h``; elsewhere (or after ``set_simd_level(0)``)
BLAS (``scipy.linalg.cython_blas``).  Biases are the GEMMs' initial values and
each tanh layer is one ``vm::tanh_array`` pass over the block.

GEMM threading.  OpenBLAS runs a GEMM on its own thread pool once
m*n*k > 2^18 (its interface/gemm.c threshold); called from inside our OpenMP
team that would oversubscribe the cores and serialise the callers on
OpenBLAS's server lock (its thread count cannot be set per thread:
openblas_set_num_threads_local is process-wide in pthreads builds).  On the
BLAS path the block height keeps every GEMM of a block below that size (and
at least 16 rows, at most 512); the SIMD kernel has no such limit and
uses 64-row blocks, which keep the backward's per-block scratch in L2.

Measured (2-core shared machine, Sapphire Rapids, dim 16, 8 masks, 2 x 64
units, N = 65536, AVX-512 path): on 2026-12-01 the forward took ~187 ms in
float64, of which tanh (134M evaluations, ~1.35 ns each on one core, ~45
vector instructions per 8 doubles: port-bound, not division-bound) was ~48%
and the GEMMs (10.7 GFLOP) ~37%, near the FMA peak; ~74 ms in float32 (tanh
~32%, GEMMs ~47%).  Since tanh_array's AVX-512 copies take their tables from
registers (csrc/pfc_vmath.h; 2026-12-02): ~128 ms float64 (tanh ~41%),
~55 ms float32 (tanh ~28%, GEMMs ~57%).  benchmarks/RESULTS.md has the
details.

Backward passes (``vjp``) recompute the forward of each block while keeping
every coupling's input rows, tanh activations and exp(+-s) values in the
thread's scratch, then walk the couplings in reverse: tanh is evaluated once
per activation, its derivative is 1 - h^2 of the stored value.  Parameter
gradients are accumulated by GEMMs with beta = 1 into per-chunk partial
buffers, in the gathered layout W1 | b1 | AoS, AoT | boS, boT | hidden
layers, and summed in chunk order (``_parallel.pxd``): the result does not
depend on the number of threads.  The number of chunks is further capped so
that the partials stay below ``PARTIAL_BUDGET`` values; it depends only on
the batch size and the architecture.  ``finish_grad`` scatters the sum back
to the raw layout, writing exact zeros for the A_1 columns of masked entries
and the A_out / b_out rows of passed entries, which the map does not depend
on.

``quadratic_vjp`` is the same pass for the loss
sum_r (a/2 |y_r|^2 + b ld_r) of the map's own output (the maximum-likelihood
loss through the inverse, a = 1, b = -1): its cotangents a y_r and b are
formed from the output each block recomputes anyway, so loss and gradient
cost one pass instead of a forward and a backward.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from pyflowcore._kernels._parallel cimport (
    MAX_CHUNKS, MIN_ROWS_PARALLEL, chunk_start, num_chunks, scratch_alloc)


cdef extern from "realnvp_cpu.h" namespace "pfc::cpu" nogil:
    int realnvp_simd_level()
    void realnvp_bias_tanh_block[T](T* h, Py_ssize_t ld, const T* bias, Py_ssize_t rows,
                                    int n)
    void realnvp_gemm[T](int level, Py_ssize_t m, int n, Py_ssize_t K, const T* x, Py_ssize_t xrs,
                         Py_ssize_t xks, const T* w, Py_ssize_t ldw, const T* bias,
                         bint acc_c, T* c, Py_ssize_t ldc)
    void realnvp_col_sums[T](int level, const T* d, Py_ssize_t ld, Py_ssize_t rows, int n,
                             T* sums)
    void realnvp_tanh_grad_sums[T](int level, T* d, const T* h, Py_ssize_t ld,
                                   Py_ssize_t rows, int n, T* sums)
    void realnvp_coupling_block[T](bint inverse, const int* changed, int nc, Py_ssize_t rows,
                                   T* s_raw, const T* t_raw, const T* bias_s, const T* bias_t,
                                   T* x, Py_ssize_t ld, T* log_det)

cdef extern from "realnvp.h" namespace "pfc" nogil:
    void realnvp_coupling_backward_row[T](const int* changed, int nc, const T* e, const T* y,
                                          T grad_log_det, T* g, T* ds, T* dt)
    void realnvp_coupling_inverse_backward_row[T](const int* changed, int nc, const T* r,
                                                  const T* z, T grad_log_det, T* g,
                                                  T* ds, T* dt)


cdef enum:
    # OpenBLAS threads a GEMM above m*n*k = 2^18; BLAS-path blocks keep below it.
    BLAS_SERIAL_MNK = 262144
    MIN_BLOCK_ROWS = 16
    MAX_BLOCK_ROWS = 512
    # Rows per block of the SIMD path (no size limit; the backward's
    # per-block scratch stays in L2).
    SIMD_BLOCK_ROWS = 64
    # Cap on (chunks x num_params) of the gradient partial buffers.
    PARTIAL_BUDGET = 1 << 20


# The vector ISA of realnvp_cpu.h's kernels (0: none, the BLAS path;
# 1: AVX2; 2: AVX-512, as pfc::vm's levels); set_simd_level forces a narrower
# one (tests compare them).
cdef int _level = realnvp_simd_level()


def simd_level():
    """The widest vector ISA this CPU runs the kernels in (0 means BLAS)."""
    return int(realnvp_simd_level())


def set_simd_level(int level):
    """Run the kernels at ``level`` (capped at ``simd_level()``; 0 forces the
    BLAS path); returns the old level."""
    global _level
    old = int(_level)
    _level = max(0, min(level, realnvp_simd_level()))
    return old


def use_simd_level():
    """The level the kernels run at now."""
    return int(_level)


# -- the net geometry -----------------------------------------------------

cdef struct Geom:
    int dim           # D
    int units         # U
    int layers        # L
    int num_masks     # M
    int net_size      # raw parameters of one net
    int gath          # gathered first/output-layer values per mask (acc layout)
    int acc_slot      # accumulator values per mask (= 2 * net_size)
    # work slot offsets (see work_size)
    int o_w1t
    int o_b1
    int o_ao
    int o_aot
    int o_bo
    int o_ht
    int work_slot     # work values per mask


cdef Geom make_geom(int dim, int units, int layers, int num_masks):
    cdef Geom g
    cdef int UD = units * dim
    g.dim = dim
    g.units = units
    g.layers = layers
    g.num_masks = num_masks
    g.net_size = 2 * dim * units + dim + units + (layers - 1) * (units + 1) * units
    g.gath = 4 * UD + 2 * units + 2 * dim
    g.acc_slot = g.gath + 2 * (layers - 1) * (units + 1) * units
    g.o_w1t = 2 * UD
    g.o_b1 = 4 * UD
    g.o_ao = 4 * UD + 2 * units
    g.o_aot = 6 * UD + 2 * units
    g.o_bo = 8 * UD + 2 * units
    g.o_ht = 8 * UD + 2 * units + 2 * dim
    g.work_slot = g.o_ht + 2 * (layers - 1) * units * units
    return g


def work_size(int dim, int units, int layers, int num_masks):
    """Length of the ``work`` array that ``prepare`` fills."""
    return num_masks * make_geom(dim, units, layers, num_masks).work_slot


def default_block_rows(int dim, int units, int layers):
    """Rows per block: SIMD_BLOCK_ROWS on the SIMD path; on the BLAS path
    every GEMM of a block below OpenBLAS's threading size."""
    if _level > 0:
        return SIMD_BLOCK_ROWS
    cdef long widest = 2 * <long>units * dim
    if layers > 1 and <long>units * units > widest:
        widest = <long>units * units
    cdef long rows = BLAS_SERIAL_MNK // max(widest, 1)
    return int(min(max(rows, MIN_BLOCK_ROWS), MAX_BLOCK_ROWS))


def grad_chunks(Py_ssize_t n, Py_ssize_t num_params):
    """Number of gradient chunks for a batch of n rows (thread-independent)."""
    cdef Py_ssize_t cap = PARTIAL_BUDGET // max(num_params, 1)
    cap = min(max(cap, 1), MAX_CHUNKS)
    return min(num_chunks(n), cap)


# -- matrix products ------------------------------------------------------

cdef inline void gemm_rm(char ta, char tb, int m, int n, int k, floating alpha,
                         const floating* a, int lda, const floating* b, int ldb,
                         floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C (m x n) = alpha op(A) op(B) + beta C.

    A row-major matrix is its column-major transpose, so this is the
    column-major product C^T = op(B)^T op(A)^T: swap the operands and m, n.
    """
    if floating is double:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
    else:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)


cdef inline void mm(int level, int m, int n, int k, const floating* x, int ldx, bint xt,
                    const floating* w, int ldw, const floating* bias, bint acc_c,
                    floating* c, int ldc) noexcept nogil:
    """Row-major C (m x n) = init + op(X) W, W row-major (k x n); op(X) = X
    (m x k, leading dimension ldx) or, with xt, X^T for X stored k x m.
    init = C if acc_c, else the row vector bias (0 if NULL)."""
    cdef int i, j
    cdef floating beta = 1 if acc_c else 0
    if level > 0:
        if xt:
            realnvp_gemm(level, m, n, k, x, 1, ldx, w, ldw, bias, acc_c, c, ldc)
        else:
            realnvp_gemm(level, m, n, k, x, ldx, 1, w, ldw, bias, acc_c, c, ldc)
        return
    if bias != NULL and not acc_c:
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = bias[j]
        beta = 1
    gemm_rm(c'T' if xt else c'N', c'N', m, n, k, 1, x, ldx, w, ldw, beta, c, ldc)


# -- parameters <-> gathered layout ----------------------------------------

def prepare(const floating[::1] params, const int[:, ::1] idx, const int[::1] npass,
            int units, int layers, floating[::1] work):
    """Gather the first-layer columns and output-layer rows that each mask
    uses, in both orientations, and transpose the hidden layers."""
    cdef int D = <int>idx.shape[1], M = <int>idx.shape[0], U = units, L = layers
    cdef Geom g = make_geom(D, U, layers, M)
    cdef int m, k, u, v, i, j, p, c, l
    cdef const floating* net
    cdef const floating* a
    cdef floating* w
    cdef Py_ssize_t hid = (layers - 1) * (U + 1) * U
    for m in range(M):
        p = npass[m]
        c = D - p
        w = &work[m * g.work_slot]
        for k in range(2):
            net = &params[(2 * m + k) * g.net_size]
            for u in range(U):
                for i in range(p):
                    w[(k * U + u) * p + i] = net[u * D + idx[m, i]]
                    w[g.o_w1t + i * 2 * U + k * U + u] = net[u * D + idx[m, i]]
                w[g.o_b1 + k * U + u] = net[U * D + u]
            for l in range(1, L):
                a = net + U * D + U + (l - 1) * (U + 1) * U
                for u in range(U):
                    for v in range(U):
                        w[g.o_ht + (k * (L - 1) + l - 1) * U * U + v * U + u] = a[u * U + v]
            for j in range(c):
                for u in range(U):
                    w[g.o_ao + k * U * D + j * U + u] = \
                        net[U * D + U + hid + idx[m, p + j] * U + u]
                    w[g.o_aot + k * U * D + u * c + j] = \
                        net[U * D + U + hid + idx[m, p + j] * U + u]
                w[g.o_bo + k * D + j] = net[2 * U * D + U + hid + idx[m, p + j]]


def finish_grad(const floating[::1] acc, const int[:, ::1] idx, const int[::1] npass,
                int units, int layers, floating[::1] grad):
    """Scatter the gathered gradient to the raw parameter layout."""
    cdef int D = <int>idx.shape[1], M = <int>idx.shape[0], U = units
    cdef Geom g = make_geom(D, U, layers, M)
    cdef int m, k, u, i, j, p, c, q
    cdef const floating* a
    cdef floating* net
    cdef Py_ssize_t hid = (layers - 1) * (U + 1) * U
    for q in range(grad.shape[0]):
        grad[q] = 0
    for m in range(M):
        p = npass[m]
        c = D - p
        a = &acc[m * g.acc_slot]
        for k in range(2):
            net = &grad[(2 * m + k) * g.net_size]
            for u in range(U):
                for i in range(p):
                    net[u * D + idx[m, i]] = a[(k * U + u) * p + i]
                net[U * D + u] = a[2 * U * D + k * U + u]
            for q in range(hid):
                net[U * D + U + q] = a[g.gath + k * hid + q]
            for j in range(c):
                for u in range(U):
                    net[U * D + U + hid + idx[m, p + j] * U + u] = \
                        a[2 * U * D + 2 * U + k * U * D + j * U + u]
                net[2 * U * D + U + hid + idx[m, p + j]] = a[4 * U * D + 2 * U + k * D + j]


# -- one block through the nets ---------------------------------------------

cdef void gather_rows(int rows, int D, int p, const int* passed, const floating* y,
                      floating* zp) noexcept nogil:
    cdef int r, i
    for r in range(rows):
        for i in range(p):
            zp[r * p + i] = y[r * D + passed[i]]


cdef void nets_forward(int level, Geom g, int rows, int p, const floating* w,
                       const floating* params, int m, const floating* zp, floating* h,
                       floating* s, floating* t) noexcept nogil:
    """s, t (rows x c, without output bias) and the L tanh layers h of a block.

    h holds L blocks of rows x 2U: the s-net's units in columns [0, U), the
    t-net's in [U, 2U).  Biases enter as the GEMMs' initial values, so each
    layer's tanh is one pass over its contiguous block.
    """
    cdef int D = g.dim, U = g.units, U2 = 2 * g.units, c = g.dim - p, l, k
    cdef Py_ssize_t lay = <Py_ssize_t>rows * U2
    cdef const floating* hid
    cdef floating* hl
    mm(level, rows, U2, p, zp, p, False, w + g.o_w1t, U2, w + g.o_b1, False, h, U2)
    realnvp_bias_tanh_block(h, lay, <const floating*>NULL, 1, <int>lay)
    for l in range(1, g.layers):
        hl = h + l * lay
        for k in range(2):
            hid = params + (2 * m + k) * g.net_size + U * D + U + (l - 1) * (U + 1) * U
            mm(level, rows, U, U, hl - lay + k * U, U2, False,
               w + g.o_ht + (k * (g.layers - 1) + l - 1) * U * U, U, hid + U * U, False,
               hl + k * U, U2)
        realnvp_bias_tanh_block(hl, lay, <const floating*>NULL, 1, <int>lay)
    hl = h + (g.layers - 1) * lay
    mm(level, rows, c, U, hl, U2, False, w + g.o_aot, c, <const floating*>NULL, False, s, c)
    mm(level, rows, c, U, hl + U, U2, False, w + g.o_aot + U * D, c, <const floating*>NULL,
       False, t, c)


cdef void nets_backward(int level, Geom g, int rows, int p, const floating* w,
                        const floating* params, int m, const floating* zp, const floating* h,
                        const floating* ds, const floating* dt, floating* dh, floating* dh2,
                        floating* bias_sums, floating* dzp, floating* acc) noexcept nogil:
    """Back through both nets of mask m: accumulate parameter gradients into
    acc (this mask's slot) and write the cotangent of the passed inputs, dzp.

    Each tanh derivative is fused with the column sums that give its layer's
    bias gradients: straight into acc for the first layer (both nets' b_1
    are contiguous), through bias_sums (2U values) for hidden layers."""
    cdef int D = g.dim, U = g.units, U2 = 2 * g.units, c = g.dim - p, l, k, j
    cdef Py_ssize_t lay = <Py_ssize_t>rows * U2
    cdef Py_ssize_t hsz = (g.layers - 1) * (U + 1) * U
    cdef const floating* hl = h + (g.layers - 1) * lay
    cdef const floating* hid
    cdef const floating* nob = NULL
    cdef floating* ga
    cdef floating* tmp
    # Output layers: only the changed rows of A_out / b_out.
    mm(level, c, U, rows, ds, c, True, hl, U2, nob, True, acc + 2 * U * D + U2, U)
    mm(level, c, U, rows, dt, c, True, hl + U, U2, nob, True, acc + 3 * U * D + U2, U)
    realnvp_col_sums(level, ds, c, rows, c, acc + 4 * U * D + U2)
    realnvp_col_sums(level, dt, c, rows, c, acc + 4 * U * D + U2 + D)
    mm(level, rows, U, c, ds, c, False, w + g.o_ao, U, nob, False, dh, U2)
    mm(level, rows, U, c, dt, c, False, w + g.o_ao + U * D, U, nob, False, dh + U, U2)
    for l in range(g.layers - 1, -1, -1):
        # dh: the cotangent of layer l's activations, made that of its pre-activations
        hl = h + l * lay
        if l == 0:
            realnvp_tanh_grad_sums(level, dh, hl, U2, rows, U2, acc + 2 * U * D)
            break
        for j in range(U2):
            bias_sums[j] = 0
        realnvp_tanh_grad_sums(level, dh, hl, U2, rows, U2, bias_sums)
        for k in range(2):
            hid = params + (2 * m + k) * g.net_size + U * D + U + (l - 1) * (U + 1) * U
            ga = acc + g.gath + k * hsz + (l - 1) * (U + 1) * U
            for j in range(U):
                ga[U * U + j] += bias_sums[k * U + j]
            mm(level, U, U, rows, dh + k * U, U2, True, hl - lay + k * U, U2, nob, True, ga, U)
            mm(level, rows, U, U, dh + k * U, U2, False, hid, U, nob, False, dh2 + k * U, U2)
        tmp = dh
        dh = dh2
        dh2 = tmp
    # First layer: the passed columns of both nets' A_1 at once.
    mm(level, U2, p, rows, dh, U2, True, zp, p, nob, True, acc, p)
    mm(level, rows, p, U2, dh, U2, False, w, p, nob, False, dzp, p)


# -- forward / inverse ---------------------------------------------------------

def transform(bint inverse, const floating[::1] params, const floating[::1] work,
              const int[:, ::1] idx, const int[::1] npass, int units, int layers,
              int block_rows, const floating[:, ::1] v, floating[:, ::1] out,
              floating[::1] log_det):
    """out, log_det = forward(v) or inverse(v), in row blocks."""
    cdef Py_ssize_t n = v.shape[0]
    if n == 0:
        return
    cdef int D = <int>v.shape[1], M = <int>idx.shape[0], U2 = 2 * units
    cdef Geom g = make_geom(D, units, layers, M)
    cdef int B = block_rows
    cdef Py_ssize_t nb = (n + B - 1) // B, blk, r0
    cdef Py_ssize_t scratch = <Py_ssize_t>B * (3 * D + layers * U2)
    cdef int[::1] failed = np.zeros(1, dtype=np.intc)
    # Set per thread inside the parallel block; initialised so that the
    # firstprivate copies OpenMP makes of them are defined.
    cdef floating* buf = NULL
    cdef floating* zp = NULL
    cdef floating* h = NULL
    cdef floating* s = NULL
    cdef floating* t = NULL
    cdef floating* x = NULL
    cdef const int* ix
    cdef int rows, k, m, p, r
    cdef int level = _level
    with nogil, parallel(use_threads_if=n >= MIN_ROWS_PARALLEL):
        buf = <floating*>scratch_alloc(scratch * sizeof(floating))
        if buf == NULL:
            failed[0] = 1
        zp = buf
        h = buf + B * D
        s = h + <Py_ssize_t>B * layers * U2
        t = s + B * D
        for blk in prange(nb, schedule="static"):
            if buf == NULL:
                continue
            r0 = blk * B
            rows = <int>min(<Py_ssize_t>B, n - r0)
            x = &out[r0, 0]
            memcpy(x, &v[r0, 0], rows * D * sizeof(floating))
            for r in range(rows):
                log_det[r0 + r] = 0
            for k in range(M):
                m = M - 1 - k if inverse else k
                p = npass[m]
                ix = &idx[m, 0]
                gather_rows(rows, D, p, ix, x, zp)
                nets_forward(level, g, rows, p, &work[m * g.work_slot], &params[0], m, zp, h,
                             s, t)
                realnvp_coupling_block(inverse, ix + p, D - p, rows, s, t,
                                       &work[m * g.work_slot + g.o_bo],
                                       &work[m * g.work_slot + g.o_bo + D], x, D,
                                       &log_det[r0])
        free(buf)
    if failed[0]:
        raise MemoryError("RealNVP: could not allocate the per-thread scratch buffer")


# -- vector-Jacobian products ------------------------------------------------------

cdef void vjp_block(int level, bint inverse, Geom g, int rows, const floating* params,
                    const floating* work, const int* idx, const int* npass,
                    const floating* v, const floating* grad_out, const floating* gld,
                    floating sq_weight, floating log_det_weight, double* sums,
                    floating* grad_in, floating* acc, floating* buf) noexcept nogil:
    """One block of rows: recompute the couplings keeping what the VJP needs,
    then walk them in reverse.  grad_in receives the input cotangent.

    Without grad_out (NULL) the cotangents are those of the quadratic loss
    sum_r (sq_weight/2 |y_r|^2 + log_det_weight ld_r) of the map's output
    (y, ld), formed from the recomputed output, and the block's sums of
    |y_r|^2 and ld_r are added to sums[0], sums[1]."""
    cdef int D = g.dim, U = g.units, U2 = 2 * g.units, M = g.num_masks, L = g.layers
    cdef int B = rows, k, m, p, c, r, i
    cdef Py_ssize_t bd = <Py_ssize_t>B * D, lay = <Py_ssize_t>B * U2
    # Scratch: stage outputs Y (M x B x D), exp(+-s) E (M x B x D), activations
    # H (M x L x B x 2U), then per-stage temporaries.
    cdef floating* Y = buf
    cdef floating* E = Y + M * bd
    cdef floating* H = E + M * bd
    cdef floating* zp = H + M * L * lay
    cdef floating* t = zp + bd
    cdef floating* ds = t + bd
    cdef floating* dzp = ds + bd
    cdef floating* dh = dzp + bd
    cdef floating* dh2 = dh + lay
    cdef floating* gl = dh2 + lay       # the quadratic loss: ld, then its cotangent
    cdef floating* bias_sums = gl + B
    cdef bint quadratic = grad_out == NULL
    cdef double sum_sq = 0, sum_ld = 0
    cdef const floating* yin
    cdef floating* yout
    cdef const floating* w
    cdef const int* ix
    for k in range(M):
        m = M - 1 - k if inverse else k
        p = npass[m]
        c = D - p
        ix = idx + m * D
        w = work + m * g.work_slot
        yin = v if k == 0 else Y + (k - 1) * bd
        yout = Y + k * bd
        gather_rows(B, D, p, ix, yin, zp)
        nets_forward(level, g, B, p, w, params, m, zp, H + k * L * lay, E + k * bd, t)
        memcpy(yout, yin, bd * sizeof(floating))
        if quadratic and k == 0:
            memset(gl, 0, B * sizeof(floating))
        realnvp_coupling_block(inverse, ix + p, c, B, E + k * bd, t, w + g.o_bo,
                               w + g.o_bo + D, yout, D, gl if quadratic else NULL)
    if quadratic:
        yout = Y + (M - 1) * bd
        for r in range(B):
            sum_ld += gl[r]
            gl[r] = log_det_weight
        for i in range(B * D):
            sum_sq += <double>yout[i] * yout[i]
            grad_in[i] = sq_weight * yout[i]
        sums[0] += sum_sq
        sums[1] += sum_ld
        gld = gl
    else:
        memcpy(grad_in, grad_out, bd * sizeof(floating))
    for k in range(M - 1, -1, -1):
        m = M - 1 - k if inverse else k
        p = npass[m]
        c = D - p
        ix = idx + m * D
        w = work + m * g.work_slot
        yin = v if k == 0 else Y + (k - 1) * bd
        yout = Y + k * bd
        for r in range(B):
            if inverse:
                realnvp_coupling_inverse_backward_row(ix + p, c, E + k * bd + r * c,
                                                      yout + r * D, gld[r], grad_in + r * D,
                                                      ds + r * c, t + r * c)
            else:
                realnvp_coupling_backward_row(ix + p, c, E + k * bd + r * c, yin + r * D,
                                              gld[r], grad_in + r * D, ds + r * c, t + r * c)
        gather_rows(B, D, p, ix, yin, zp)
        nets_backward(level, g, B, p, w, params, m, zp, H + k * L * lay, ds, t, dh, dh2,
                      bias_sums, dzp, acc + m * g.acc_slot)
        for r in range(B):
            for i in range(p):
                grad_in[r * D + ix[i]] += dzp[r * p + i]


def vjp(bint inverse, const floating[::1] params, const floating[::1] work,
        const int[:, ::1] idx, const int[::1] npass, int units, int layers, int block_rows,
        const floating[:, ::1] v, const floating[:, ::1] grad_out,
        const floating[::1] grad_log_det, floating[:, ::1] grad_in,
        floating[::1] grad_params):
    """Backward (inverse=False) or inverse_backward (inverse=True) of a batch."""
    cdef const floating* go = &grad_out[0, 0] if v.shape[0] > 0 else NULL
    cdef const floating* gld = &grad_log_det[0] if v.shape[0] > 0 else NULL
    _vjp_batch(inverse, params, work, idx, npass, units, layers, block_rows, v, go, gld,
               0, 0, grad_in, grad_params)


def quadratic_vjp(bint inverse, const floating[::1] params, const floating[::1] work,
                  const int[:, ::1] idx, const int[::1] npass, int units, int layers,
                  int block_rows, const floating[:, ::1] v, double sq_weight,
                  double log_det_weight, floating[:, ::1] grad_in,
                  floating[::1] grad_params):
    """The VJP of the loss sum_r (sq_weight/2 |y_r|^2 + log_det_weight ld_r),
    (y, ld) the forward (or inverse) of v, in one pass: the cotangents come
    from the output each block recomputes anyway.  Returns the float64 sums
    (sum_r |y_r|^2, sum_r ld_r)."""
    return _vjp_batch(inverse, params, work, idx, npass, units, layers, block_rows, v,
                      <const floating*>NULL, <const floating*>NULL, <floating>sq_weight,
                      <floating>log_det_weight, grad_in, grad_params)


cdef tuple _vjp_batch(bint inverse, const floating[::1] params, const floating[::1] work,
                      const int[:, ::1] idx, const int[::1] npass, int units, int layers,
                      int block_rows, const floating[:, ::1] v, const floating* grad_out,
                      const floating* grad_log_det, floating sq_weight,
                      floating log_det_weight, floating[:, ::1] grad_in,
                      floating[::1] grad_params):
    """grad_out NULL: the quadratic loss's cotangents (see vjp_block)."""
    cdef Py_ssize_t n = v.shape[0]
    cdef int D = <int>v.shape[1], M = <int>idx.shape[0], U2 = 2 * units
    cdef Geom g = make_geom(D, units, layers, M)
    cdef Py_ssize_t P = <Py_ssize_t>M * g.acc_slot
    cdef Py_ssize_t nc = grad_chunks(n, P), c, r0, r1, j
    cdef int B = block_rows, rows
    cdef int level = _level
    cdef Py_ssize_t scratch = <Py_ssize_t>B * (2 * M * D + M * layers * U2 + 4 * D + 2 * U2
                                               + 1) + U2
    dtype = np.asarray(params).dtype
    cdef floating[:, ::1] partial = np.zeros((nc, P), dtype=dtype)
    cdef double[:, ::1] sums = np.zeros((nc, 2))
    cdef int[::1] failed = np.zeros(1, dtype=np.intc)
    cdef floating* buf = NULL
    if n > 0:
        with nogil, parallel(use_threads_if=n >= MIN_ROWS_PARALLEL):
            buf = <floating*>scratch_alloc(scratch * sizeof(floating))
            if buf == NULL:
                failed[0] = 1
            for c in prange(nc, schedule="dynamic"):
                if buf == NULL:
                    continue
                r1 = chunk_start(n, c + 1, nc)
                r0 = chunk_start(n, c, nc)
                while r0 < r1:
                    rows = <int>min(<Py_ssize_t>B, r1 - r0)
                    vjp_block(level, inverse, g, rows, &params[0], &work[0], &idx[0, 0],
                              &npass[0], &v[r0, 0],
                              grad_out + r0 * D if grad_out != NULL else NULL,
                              grad_log_det + r0 if grad_log_det != NULL else NULL,
                              sq_weight, log_det_weight, &sums[c, 0], &grad_in[r0, 0],
                              &partial[c, 0], buf)
                    r0 = r0 + rows
            free(buf)
        if failed[0]:
            raise MemoryError("RealNVP: could not allocate the per-thread scratch buffer")
        with nogil:
            for c in range(1, nc):
                for j in range(P):
                    partial[0, j] += partial[c, j]
                sums[0, 0] += sums[c, 0]
                sums[0, 1] += sums[c, 1]
    finish_grad(np.asarray(partial)[0], idx, npass, units, layers, grad_params)
    return sums[0, 0], sums[0, 1]
