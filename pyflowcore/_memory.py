"""Cache-line-aligned NumPy buffers for the kernels' own work arrays."""

import numpy as np

CACHE_LINE = 64


def aligned_empty(size, dtype):
    """An uninitialised 1-D array of ``size`` elements whose data starts on a
    64-byte boundary (when there is any data).

    NumPy only guarantees 16 bytes; the kernels read weight matrices held in
    such arrays with 64-byte vector loads, which straddle two cache lines
    each unless the rows start on one.
    """
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + size * dtype.itemsize].view(dtype)
