"""CUDA driver of ``CholeskyProduct`` (kernels in ``csrc/cholesky.cu``)."""

import cupy

from pyflowcore.cuda import _launch
from pyflowcore.cuda._engine import Engine
from pyflowcore.cuda._launch import i32, i64, odd
from pyflowcore.cuda._module import kernel


class CholeskyEngine(Engine):
    def __init__(self, flow):
        self.n_order = flow.n
        self.dim = flow.dim
        self.dtype = flow.dtype

    def _rows(self, n, stride):
        B, G, in_smem, smem = _launch.plan(n, stride, self.dtype.itemsize)
        rows_g = cupy.empty(1 if in_smem else G * B * stride, dtype=self.dtype)
        return B, G, in_smem, smem, rows_g

    def _transform(self, inverse, v, out, log_det):
        n = v.shape[0]
        if n == 0:
            return
        stride = odd(self.dim)
        B, G, in_smem, smem, rows_g = self._rows(n, stride)
        kernel("cholesky", "cholesky_transform", self.dtype)(
            (G,), (B,),
            (i32(inverse), i32(self.n_order), i32(self.dim), i64(n), v, out, log_det, rows_g,
             i32(in_smem), i32(stride)),
            shared_mem=smem)

    def _vjp(self, inverse, v, grad_out, grad_log_det, grad_in, grad_params):
        # CholeskyProduct has no parameters: grad_params is empty.
        n = v.shape[0]
        if n == 0:
            return
        ld = odd(self.dim)
        stride = odd((3 if inverse else 2) * ld)
        B, G, in_smem, smem, rows_g = self._rows(n, stride)
        kernel("cholesky", "cholesky_vjp", self.dtype)(
            (G,), (B,),
            (i32(inverse), i32(self.n_order), i32(self.dim), i64(n), v, grad_out, grad_log_det,
             grad_in, rows_g, i32(in_smem), i32(stride), i32(ld)),
            shared_mem=smem)

