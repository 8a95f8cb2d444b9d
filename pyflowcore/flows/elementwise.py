"""Elementwise flows: ``ElementwiseScale`` and ``Shift``."""

from pyflowcore._validation import check_rng
from pyflowcore.flows._rowwise import RowwiseFlow


class ElementwiseScale(RowwiseFlow):
    """Elementwise scaling ``x = a * z``.

    ``log|det df/dz| = sum_i log|a_i|``.

    Parameters
    ----------
    dim : int
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Unused (the initial value is deterministic); accepted for a uniform
        constructor signature.

    Notes
    -----
    Parameter layout: ``a`` (dim), initialised to 1.  The flow is invertible
    while every ``a_i != 0``; a zero gives ``log_det = -inf`` and an inverse
    of ``inf``/``nan``, as the formula says.
    """

    _row_kind = "scale"

    def __init__(self, dim, *, dtype="float64", rng=None):
        check_rng(rng)    # accepted for a uniform signature; the start is fixed
        super().__init__(dim, dim, dtype)
        self._params[:] = 1

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}


class Shift(RowwiseFlow):
    """Translation ``x = z + b``, with ``log|det df/dz| = 0``.

    Parameters
    ----------
    dim : int
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Unused (the initial value is deterministic).

    Notes
    -----
    Parameter layout: ``b`` (dim), initialised to 0.
    """

    _row_kind = "shift"

    def __init__(self, dim, *, dtype="float64", rng=None):
        check_rng(rng)
        super().__init__(dim, dim, dtype)

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}
