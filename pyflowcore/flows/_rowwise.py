"""The shared kernel plumbing of the row-wise flows (scale, shift, planar, radial)."""

import numpy as np

from pyflowcore._kernels.rowwise import LayerKind, RowwiseRun
from pyflowcore.flows._base import Flow


def layer_kind(flow):
    """The ``LayerKind`` of a row-wise flow, ``None`` for any other."""
    name = getattr(flow, "_row_kind", None)
    return None if name is None else LayerKind[f"KIND_{name.upper()}"]


class RunKernels:
    """The kernels of a run of row-wise layers, specialised for one dtype.

    Picking the float32 or float64 specialisation once, here, spares every
    call Cython's fused-type dispatch, which costs about as much as a
    one-row planar layer.

    Parameters
    ----------
    layers : sequence of Flow
        Row-wise flows, in the order they are applied.
    params : ndarray
        The run's parameter vector (a view: updates are seen without a copy).
    """

    def __init__(self, layers, params):
        self.params = params
        self.run = RowwiseRun([layer_kind(f) for f in layers], [f.num_params for f in layers],
                              layers[0].dim)
        spec = "double" if params.dtype == np.float64 else "float"
        self.forward = self.run.forward[spec]
        self.inverse = self.run.inverse[spec]
        self.backward = self.run.backward[spec]
        self.inverse_backward = self.run.inverse_backward[spec]
        self.quadratic_vjp = self.run.quadratic_vjp[spec]

    # The Flow kernel interface, for a Chain's fused units.
    def _forward(self, z, x, log_det):
        self.forward(self.params, z, x, log_det)

    def _inverse(self, x, z, log_det):
        self.inverse(self.params, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self.backward(self.params, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self.inverse_backward(self.params, x, grad_z, grad_log_det, grad_x, grad_params)

    def _quadratic_vjp(self, inverse, v, sq_weight, log_det_weight, grad_in, grad_params):
        """The fused kernel of Flow.quadratic_loss_and_grad."""
        return self.quadratic_vjp(inverse, self.params, v, sq_weight, log_det_weight, grad_in,
                                  grad_params)


class RowwiseFlow(Flow):
    """A flow that maps each row on its own, through ``_kernels.rowwise``.

    Subclasses set ``_row_kind`` (``"scale"``, ``"shift"``, ``"planar"`` or
    ``"radial"``); a ``Chain`` fuses consecutive row-wise layers into one run
    of the same kernels.
    """

    _row_kind = None

    def __init__(self, dim, num_params, dtype):
        super().__init__(dim, num_params, dtype)
        self._k = RunKernels([self], self._params)
        # A layer on a few points costs more in Python-level validation and
        # memoryview set-up than in arithmetic: Flow.forward and inverse
        # first offer their arguments to the kernels' C-level checks.
        self._forward_fast = self._k.run.forward_fast
        self._inverse_fast = self._k.run.inverse_fast

    # The parameters may be rebound to a view into a Chain's vector, so the
    # kernels are handed self._params at every call.
    def _forward(self, z, x, log_det):
        self._k.forward(self._params, z, x, log_det)

    def _inverse(self, x, z, log_det):
        self._k.inverse(self._params, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self._k.backward(self._params, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self._k.inverse_backward(self._params, x, grad_z, grad_log_det, grad_x, grad_params)

    def _quadratic_vjp(self, inverse, v, sq_weight, log_det_weight, grad_in, grad_params):
        return self._k.quadratic_vjp(inverse, self._params, v, sq_weight, log_det_weight,
                                     grad_in, grad_params)
