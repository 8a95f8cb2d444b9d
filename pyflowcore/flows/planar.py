"""The planar flow."""

from pyflowcore._validation import check_dim, check_rng
from pyflowcore.flows._base import glorot_uniform
from pyflowcore.flows._rowwise import RowwiseFlow


class Planar(RowwiseFlow):
    """Planar flow (Rezende & Mohamed 2015, appendix A.1), ``h = tanh``.

    Moves every point along one direction by an amount that depends on its
    position across one hyperplane:

    ``x = z + uhat h(w.z + b)``,

    ``log|det df/dz| = log|1 + uhat.psi(z)|``, ``psi(z) = h'(w.z + b) w``,
    i.e. ``log|1 + (1 - tanh^2(w.z + b)) w.uhat|``.

    The map is invertible because ``u`` is reparameterised so that
    ``w.uhat >= -1``:

    ``uhat = u + (m(w.u) - w.u) w / ||w||^2``, ``m(a) = -1 + softplus(a)``,

    which gives ``w.uhat = m(w.u)``; when ``w = 0`` the correction term is 0
    and ``uhat = u``.

    Parameters
    ----------
    dim : int
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Source of the Glorot-uniform initial ``w``.

    Attributes
    ----------
    uhat : ndarray of shape (dim,)
        The effective direction ``uhat(u, w)`` for the current parameters.

    Notes
    -----
    Parameter layout (flat, in this order): ``u`` (dim), ``w`` (dim),
    ``b`` (1).  Initial values: ``u = 0``, ``b = 0`` and ``w``
    Glorot-uniform, ``U(-l, l)`` with ``l = sqrt(6 / (dim + 1))`` (``w``
    counts as a ``(dim, 1)`` matrix).  The flow does not start as the
    identity: ``u = 0`` gives ``uhat = (log 2 - 1) w / ||w||^2`` (a mild
    contraction along ``w``, ``w.uhat = log 2 - 1``).  Gradients with
    respect to ``w`` are those of the formula above; at ``w = 0`` exactly,
    where ``uhat`` is discontinuous, the correction term is held at 0.

    The kernels evaluate ``w.uhat = softplus(w.u) - 1`` and
    ``1 + h' w.uhat = tanh^2 + h' softplus(w.u)`` from the softplus itself, a
    sum of non-negative terms, so the log-determinant stays accurate when
    ``w.uhat`` is ``-1`` to working precision; ``h' = 1 - tanh^2`` is formed
    from ``exp(-2|w.z + b|)`` and keeps its relative accuracy in the tails.
    The log-determinant is ``-inf`` only where ``w.uhat = -1`` exactly (the
    softplus underflows, ``w.u`` below about -745 in float64) and
    ``w.z + b = 0``.

    The inverse solves the scalar equation for ``s = w.z + b``:
    ``s + (w.uhat) tanh(s) = w.x + b``, monotone non-decreasing in ``s``
    since ``w.uhat >= -1``, with the root in
    ``[w.x + b - |w.uhat|, w.x + b + |w.uhat|]``.  It runs safeguarded
    Newton on that bracket, each step ``q = G/G'`` of
    ``G(s) = s + (w.uhat) tanh(s) - (w.x + b)`` taken to third order as
    Chebyshev's ``q (1 + q G''/(2 G'))`` (fewer evaluations at no extra
    division; SPEC's "safeguarded Newton" with its curvature term), and
    bisection when a step would leave the bracket or fails to
    halve the step before last, as at the degenerate root ``w.uhat = -1``,
    ``s = 0``) until the step or the bracket is a few ulps, then
    ``z = x - uhat tanh(s)``.  The inverse is as accurate as the problem
    allows: near ``w.uhat = -1``, ``s = 0`` the Jacobian is nearly singular
    and ``z`` is determined only to the rounding of ``x`` divided by
    ``1 + h' w.uhat``, while ``f(f^{-1}(x))`` still reproduces ``x``.

    ``inverse_backward`` differentiates the inverse implicitly, using
    ``J^{-T} = I - h' w uhat^T / (1 + h' w.uhat)`` (Sherman-Morrison).
    """

    _row_kind = "planar"

    def __init__(self, dim, *, dtype="float64", rng=None):
        dim = check_dim(dim)
        rng = check_rng(rng)
        super().__init__(dim, 2 * dim + 1, dtype)
        self._params[self.dim:2 * self.dim] = glorot_uniform(rng, (self.dim,), self.dim, 1,
                                                             self.dtype)

    @property
    def uhat(self):
        """The effective direction ``uhat(u, w)``, with ``w.uhat >= -1``."""
        return self._k.run.prepare(self._params)[:self.dim]

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}
