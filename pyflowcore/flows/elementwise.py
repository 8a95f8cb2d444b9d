"""Elementwise flows: ``ElementwiseScale`` and ``Shift``."""

import numpy as np

from pyflowcore._kernels import elementwise as _k
from pyflowcore.flows._base import Flow


class ElementwiseScale(Flow):
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

    _row_kind = "scale"  # fused in chains (see _kernels/chain.pyx)

    def __init__(self, dim, *, dtype="float64", rng=None):
        super().__init__(dim, dim, dtype)
        self._params[:] = 1

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}

    def _forward(self, z, x, log_det):
        _k.scale_forward(self._params, z, x, log_det)

    def _inverse(self, x, z, log_det):
        _k.scale_inverse(self._params, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        _k.scale_backward(self._params, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        _k.scale_inverse_backward(self._params, x, grad_z, grad_log_det, grad_x, grad_params)


class Shift(Flow):
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
        super().__init__(dim, dim, dtype)

    def _config(self):
        return {"dim": self.dim, "dtype": self.dtype.name}

    def _forward(self, z, x, log_det):
        _k.shift_forward(self._params, z, x, log_det)

    def _inverse(self, x, z, log_det):
        _k.shift_inverse(self._params, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        grad_z[...] = grad_x
        _k.column_sum(grad_x, grad_params, 1)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        grad_x[...] = grad_z
        _k.column_sum(grad_z, grad_params, -1)
