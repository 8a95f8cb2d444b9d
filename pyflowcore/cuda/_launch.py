"""Launch geometry shared by the one-thread-per-row kernels.

A block of ``B`` threads works on tiles of ``B`` rows; each thread owns a
*region* of ``stride`` values (its row and, for VJPs, cotangent and scratch;
see ``csrc/pfc_cuda.cuh``).  Regions go to shared memory when the block's
share fits in ``SMEM_LIMIT`` (the limit every device grants without opt-in),
trying 128, 64 then 32 threads; otherwise to a global scratch buffer with 128
threads per block.
"""

import numpy as np

from pyflowcore.cuda._module import sm_count

SMEM_LIMIT = 48 * 1024
BLOCK_SIZES = (128, 64, 32)
# Resident threads per SM aimed at by the grid-stride loops.
THREADS_PER_SM = 2048


def odd(k):
    """``k`` rounded up to an odd number: an odd region stride keeps the
    threads' j-th entries in distinct shared-memory banks."""
    return k if k % 2 else k + 1


def plan(n, stride, itemsize, fixed_bytes=lambda B: 0, threads_per_sm=THREADS_PER_SM):
    """Block size, grid size and whether the regions fit in shared memory.

    Parameters
    ----------
    n : int
        Rows in the batch (> 0).
    stride : int
        Values per thread region.
    itemsize : int
    fixed_bytes : callable B -> int
        Shared memory the kernel needs besides the regions, for ``B`` threads.

    Returns
    -------
    B, G, rows_in_smem, smem_bytes
    """
    for B in BLOCK_SIZES:
        smem = fixed_bytes(B) + B * stride * itemsize
        if smem <= SMEM_LIMIT:
            break
    else:
        B = BLOCK_SIZES[0]
        smem = None
    ntiles = -(-n // B)
    G = int(min(ntiles, sm_count() * max(1, threads_per_sm // B)))
    if smem is None:
        return B, G, False, fixed_bytes(B)
    return B, G, True, smem


def i32(v):
    return np.int32(v)


def i64(v):
    return np.int64(v)
