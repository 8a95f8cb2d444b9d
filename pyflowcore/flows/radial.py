"""The radial flow."""

import numpy as np

from pyflowcore._validation import check_dim, check_rng
from pyflowcore.flows._base import glorot_uniform
from pyflowcore.flows._rowwise import RowwiseFlow


class Radial(RowwiseFlow):
    """Radial flow (Rezende & Mohamed 2015, appendix A.2).

    Contracts or expands space around a centre ``z0``:

    ``x = z + beta h(alpha, r) (z - z0)``, ``r = ||z - z0||``,
    ``h(alpha, r) = 1 / (alpha + r)``,

    ``log|det df/dz| = (dim - 1) log(1 + beta h) + log(1 + beta h + beta h' r)``,
    ``h' = -1 / (alpha + r)^2``, so the last factor is
    ``1 + beta alpha / (alpha + r)^2``.

    The parameterisation keeps the map invertible:
    ``alpha = exp(log_alpha) > 0`` and ``beta = -alpha + softplus(beta_raw)``,
    so ``beta >= -alpha``.

    Parameters
    ----------
    dim : int
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Source of the Glorot-uniform initial values.

    Notes
    -----
    Parameter layout (flat, in this order): ``log_alpha`` (1),
    ``beta_raw`` (1), ``z0`` (dim).  All are initialised Glorot-uniform,
    ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``: the scalars count
    as ``(1, 1)`` matrices (``l = sqrt(3)``), ``z0`` as a ``(dim, 1)`` one
    (``l = sqrt(6 / (dim + 1))``); they are drawn in that order.

    The inverse is closed-form: with ``rho = ||x - z0||``,
    ``rho = r (1 + beta / (alpha + r))`` is the quadratic
    ``r^2 + (alpha + beta - rho) r - alpha rho = 0``, whose non-negative root
    is evaluated in a cancellation-free form; then
    ``z = z0 + (x - z0) / (1 + beta h(r))``.  The kernels use
    ``alpha + beta = softplus(beta_raw)`` directly, so the flow stays accurate
    when ``beta`` is close to ``-alpha`` (strong contraction around ``z0``).

    At ``z = z0`` (``x = z0``) the log-determinant has a kink; the gradients
    there take the radial term of the log-determinant's derivative as 0.
    ``beta = -alpha`` exactly (``softplus(beta_raw)`` underflowing to 0)
    collapses ``z0`` and the log-determinant there is ``-inf``.
    """

    _row_kind = "radial"

    def __init__(self, dim, *, dtype="float64", rng=None):
        dim = check_dim(dim)
        rng = check_rng(rng)
        super().__init__(dim, dim + 2, dtype)
        self._params[0] = glorot_uniform(rng, (), 1, 1, self.dtype)
        self._params[1] = glorot_uniform(rng, (), 1, 1, self.dtype)
        self._params[2:] = glorot_uniform(rng, (self.dim,), self.dim, 1, self.dtype)

    @property
    def alpha(self):
        """``exp(log_alpha)``, the scale of the radial profile (read-only)."""
        return np.exp(self._params[0])

    @property
    def beta(self):
        """``-alpha + softplus(beta_raw)``, always ``>= -alpha`` (read-only)."""
        return -self.alpha + np.logaddexp(self.dtype.type(0), self._params[1])

    @property
    def z0(self):
        """The centre (a view into ``params``)."""
        return self._params[2:]

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}
