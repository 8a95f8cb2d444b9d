"""Reference Cholesky product flow, written from SPEC.md section 3 in plain float64 NumPy."""

import math

import numpy as np

import pyflowcore as pf
from tests.reference import Case


def order_from_dim(dim):
    """The matrix order n with n(n+1)/2 == dim."""
    n = (math.isqrt(8 * dim + 1) - 1) // 2
    if n * (n + 1) // 2 != dim:
        raise ValueError(f"dim={dim} is not a triangular number n(n+1)/2")
    return n


def make_cholesky(dim, dtype, rng):
    # No parameters to randomise: the flow is fixed by n.
    return pf.CholeskyProduct(order_from_dim(dim), dtype=dtype, rng=rng)


def cholesky_reference(params, z):
    assert params.shape == (0,)
    n = order_from_dim(z.shape[1])
    rows, cols = np.tril_indices(n)  # row-major: (0,0), (1,0), (1,1), (2,0), ...
    L = np.zeros((z.shape[0], n, n))
    L[:, rows, cols] = z
    diag_z = np.diagonal(L, axis1=1, axis2=2).copy()
    idx = np.arange(n)
    L[:, idx, idx] = np.exp(diag_z)
    sigma = L @ np.transpose(L, (0, 2, 1))
    x = sigma[:, rows, cols]
    d = np.arange(1, n + 1)
    log_L_diag = np.log(np.diagonal(L, axis1=1, axis2=2))
    log_det = n * np.log(2.0) + log_L_diag @ (n - d + 1) + diag_z.sum(axis=1)
    return x, log_det


CASES = [
    # n = 1..4.  The map is onto the positive-definite cone, not R^dim, so it
    # may only end a chain: chainable=False.
    Case("cholesky", make_cholesky, cholesky_reference, dims=(1, 3, 6, 10), chainable=False),
]
