"""The flow kernel interface shared by the GPU engines."""


class Engine:
    """Maps the four flow kernels onto an engine's two drivers:

    ``_transform(inverse, v, out, log_det)`` -- the forward (``inverse`` false)
    or the inverse map of the rows of ``v``;
    ``_vjp(inverse, v, grad_out, grad_log_det, grad_in, grad_params)`` -- the
    vector-Jacobian product of that map.
    """

    def _forward(self, z, x, log_det):
        self._transform(False, z, x, log_det)

    def _inverse(self, x, z, log_det):
        self._transform(True, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self._vjp(False, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self._vjp(True, x, grad_z, grad_log_det, grad_x, grad_params)
