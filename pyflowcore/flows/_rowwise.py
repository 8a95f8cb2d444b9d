"""The shared kernel plumbing of the row-wise flows (scale, shift, planar, radial)."""

from pyflowcore._kernels.rowwise import LayerKind, RowwiseRun
from pyflowcore.flows._base import Flow


def layer_kind(flow):
    """The ``LayerKind`` of a row-wise flow, ``None`` for any other."""
    name = getattr(flow, "_row_kind", None)
    return None if name is None else LayerKind[f"KIND_{name.upper()}"]


class RowwiseFlow(Flow):
    """A flow that maps each row on its own, through ``_kernels.rowwise``.

    Subclasses set ``_row_kind`` (``"scale"``, ``"shift"``, ``"planar"`` or
    ``"radial"``); a ``Chain`` fuses consecutive row-wise layers into one run
    of the same kernels.
    """

    _row_kind = None

    def __init__(self, dim, num_params, dtype):
        super().__init__(dim, num_params, dtype)
        self._run = RowwiseRun([layer_kind(self)], [num_params], self.dim)

    def _forward(self, z, x, log_det):
        self._run.forward(self._params, z, x, log_det)

    def _inverse(self, x, z, log_det):
        self._run.inverse(self._params, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self._run.backward(self._params, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self._run.inverse_backward(self._params, x, grad_z, grad_log_det, grad_x, grad_params)
