# Shared scheduling and scratch-memory helpers of the kernel modules.
#
# Batch reductions (the parameter gradients, summed over rows) are split into
# row chunks whose number depends only on the batch size, never on the number
# of OpenMP threads.  Each chunk sums its rows into its own slice of a
# partial buffer, and the partials are then added in chunk order, so a
# gradient is bitwise reproducible on any machine and thread count.

cdef enum:
    ROWS_PER_CHUNK = 1024
    MAX_CHUNKS = 256
    # Below this many rows a kernel stays on the calling thread: waking the
    # OpenMP team costs more than the work.
    MIN_ROWS_PARALLEL = 512


cdef inline Py_ssize_t num_chunks(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t c = (n + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    if c < 1:
        return 1
    if c > MAX_CHUNKS:
        return MAX_CHUNKS
    return c


cdef inline Py_ssize_t chunk_start(Py_ssize_t n, Py_ssize_t c, Py_ssize_t nc) noexcept nogil:
    return (n * c) // nc


cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef enum:
    # Scratch blocks start on a cache line: the block kernels' 64-byte vector
    # loads and stores would otherwise straddle two lines each, which costs
    # them about a third of their speed (measured on AVX-512).
    SCRATCH_ALIGN = 64


cdef inline void* scratch_alloc(size_t nbytes) noexcept nogil:
    """SCRATCH_ALIGN-aligned memory for nbytes (at least one line), or NULL;
    released with free()."""
    cdef size_t size = (nbytes + SCRATCH_ALIGN - 1) // SCRATCH_ALIGN * SCRATCH_ALIGN
    return aligned_alloc(SCRATCH_ALIGN, size if size > 0 else SCRATCH_ALIGN)
