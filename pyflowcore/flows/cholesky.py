"""The Cholesky product flow onto positive-definite matrices, and the
converters between packed lower triangles and square matrices."""

import numpy as np

from pyflowcore._kernels import cholesky as _k
from pyflowcore._validation import as_real_array, check_positive_int, check_rng
from pyflowcore.flows._base import Flow

__all__ = ["CholeskyProduct", "tril_to_matrix", "matrix_to_tril"]


def _tril_size(n):
    return n * (n + 1) // 2


class CholeskyProduct(Flow):
    """The Cholesky product flow ``z -> tril(L(z) L(z)^T)`` onto the
    positive-definite ``n x n`` matrices.

    ``z`` of length ``dim = n(n+1)/2`` fills a lower-triangular ``L`` row by
    row (``z_1 -> L_11, z_2 -> L_21, z_3 -> L_22, z_4 -> L_31, ...``) with
    the diagonal exponentiated, ``L_dd = exp(z_dd)``; ``x`` is the lower
    triangle of ``Sigma = L L^T`` in the same row-by-row order
    (``Sigma_11, Sigma_21, Sigma_22, Sigma_31, ...``)::

        log|det df/dz| = n log 2 + sum_d (n - d + 1) log L_dd + sum_d z_dd
                       = n log 2 + sum_d (n - d + 2) z_dd,     d = 1..n.

    Use ``tril_to_matrix`` and ``matrix_to_tril`` to go between ``x`` and
    the ``(n, n)`` matrices.

    Parameters
    ----------
    n : int
        Order of the matrices; the points have ``dim = n(n+1)/2`` entries.
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Unused (the flow has no parameters); accepted for a uniform
        constructor signature.

    Attributes
    ----------
    n : int
        Order of the matrices.

    Notes
    -----
    The flow has no parameters (``num_params == 0``); ``grad_params`` is an
    empty array.

    The inverse is the Cholesky factorisation of ``Sigma``, which reads only
    the lower triangle given by ``x``, followed by the log of its diagonal.
    A row of ``x`` whose matrix is not positive definite (or holds NaN or
    inf) is outside the flow's image: its ``z``, ``log_det_inv`` and
    ``inverse_backward`` gradient are NaN, as a ufunc reports a domain error,
    and no exception is raised, so the other rows of a batch are unaffected.
    ``log_prob`` of such a row is NaN as well.

    ``inverse_backward`` differentiates with respect to the entries of ``x``
    themselves: an off-diagonal ``x_ij`` stands for both ``Sigma_ij`` and
    ``Sigma_ji``.

    The map is onto the open cone of positive-definite matrices, not onto
    ``R^dim``, so the flow can only be the last layer of a ``Chain``.

    Examples
    --------
    >>> import pyflowcore as pf
    >>> flow = pf.CholeskyProduct(3)
    >>> x = flow.sample(5, rng=0)              # (5, 6) packed lower triangles
    >>> S = pf.tril_to_matrix(x, 3)            # (5, 3, 3) positive definite
    """

    def __init__(self, n, *, dtype="float64", rng=None):
        self.n = check_positive_int(n, "n")
        check_rng(rng)    # accepted for a uniform signature; there are no parameters
        super().__init__(_tril_size(self.n), 0, dtype)

    def _config(self):
        return {"n": self.n, "dtype": self.dtype.name}

    def _forward(self, z, x, log_det):
        _k.forward(self.n, z, x, log_det)

    def _inverse(self, x, z, log_det):
        _k.inverse(self.n, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        _k.backward(self.n, z, grad_x, grad_log_det, grad_z)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        _k.inverse_backward(self.n, x, grad_z, grad_log_det, grad_x)


def _float_array(a, name):
    """``a`` as an array, kept in its floating dtype; integers and booleans
    become float64, anything non-real raises ``TypeError``."""
    arr = as_real_array(a, name, "a floating dtype")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def tril_to_matrix(x, n):
    """Symmetric matrices from their lower triangles packed row by row.

    Parameters
    ----------
    x : array_like of shape (N, n(n+1)/2) or (n(n+1)/2,)
        Entries ``(Sigma_11, Sigma_21, Sigma_22, Sigma_31, ...)``, the layout
        of ``CholeskyProduct``'s points.
    n : int
        Order of the matrices.

    Returns
    -------
    ndarray of shape (N, n, n) or (n, n)
        ``S`` with ``S[..., i, j] = S[..., j, i]`` = the packed entry
        ``(i, j)``, ``i >= j``.  The dtype is that of ``x`` if it is a
        floating dtype, float64 otherwise.

    Raises
    ------
    TypeError
        If ``x`` is not real (complex, object, strings) or ``n`` is not an
        integer.
    ValueError
        If ``n < 1`` or the last axis of ``x`` is not ``n(n+1)/2`` long.
    """
    n = check_positive_int(n, "n")
    m = _tril_size(n)
    arr = _float_array(x, "x")
    if arr.ndim not in (1, 2) or arr.shape[-1] != m:
        raise ValueError(f"x must have shape (N, {m}) or ({m},) for n={n} "
                         f"(n(n+1)/2 entries per matrix), got shape {arr.shape}")
    rows, cols = np.tril_indices(n)
    out = np.empty(arr.shape[:-1] + (n, n), dtype=arr.dtype)
    out[..., rows, cols] = arr
    out[..., cols, rows] = arr
    return out


def matrix_to_tril(S):
    """The lower triangles of square matrices, packed row by row.

    Parameters
    ----------
    S : array_like of shape (N, n, n) or (n, n)
        Only the lower triangle (diagonal included) is read; symmetry is not
        checked, so for a non-symmetric ``S`` the result describes the
        symmetric matrix with ``S``'s lower triangle.

    Returns
    -------
    ndarray of shape (N, n(n+1)/2) or (n(n+1)/2,)
        ``(S_11, S_21, S_22, S_31, ...)``, the layout of
        ``CholeskyProduct``'s points.  The dtype is that of ``S`` if it is a
        floating dtype, float64 otherwise.

    Raises
    ------
    TypeError
        If ``S`` is not real (complex, object, strings).
    ValueError
        If ``S`` is not a square matrix or a stack of them, or ``n == 0``.
    """
    arr = _float_array(S, "S")
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] == 0:
        raise ValueError("S must be a square matrix (n, n) or a stack of them (N, n, n) "
                         f"with n >= 1, got shape {arr.shape}")
    rows, cols = np.tril_indices(arr.shape[-1])
    return np.ascontiguousarray(arr[..., rows, cols])
