# Shared scheduling helpers of the kernel modules.
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
