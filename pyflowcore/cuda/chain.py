"""CUDA drivers of the row-wise flows and of ``Chain``.

``RowwiseRun`` runs a run of row-wise layers (ElementwiseScale, Shift,
Planar, Radial) with the fused kernels of ``csrc/chain.cu``, exactly the
runs that ``pyflowcore/_kernels/rowwise.pyx`` fuses on the CPU; a single
row-wise flow is a run of one.  ``ChainEngine`` strings the units of a chain
together with the CPU ``Chain``'s ``Units`` sequencing, on CuPy buffers.
"""

import cupy
import numpy as np

from pyflowcore.cuda import _launch
from pyflowcore.cuda._engine import Engine
from pyflowcore.cuda._launch import i32, i64, odd
from pyflowcore.cuda._module import LAYER_KINDS, kernel
from pyflowcore.flows.chain import Units, unit_groups

# Work coefficients and per-warp accumulators go to shared memory up to this size each.
WORK_SMEM = 16 * 1024
ACC_SMEM = 16 * 1024
# Cap on the thread-minor stack of layer inputs kept by the VJP kernels.
STACK_BUDGET = 256 * 1024 * 1024
# Threads per SM the VJP grid aims at: about what is resident (chain_vjp<double>
# takes 128 registers per thread); the stack scales with the number of threads.
VJP_THREADS_PER_SM = 512


def kind_code(flow):
    """The ``LayerKind`` code of a row-wise flow."""
    return LAYER_KINDS[flow._row_kind]


class RowwiseRun(Engine):
    """A run of row-wise layers whose parameters are ``owner._params[lo:hi]``.

    The parameter view is taken at every call, so in-place updates (and
    ``set_params``) are always seen.
    """

    def __init__(self, layers, owner, lo=0, hi=None):
        self._owner = owner
        self._lo, self._hi = lo, hi
        self.dim = layers[0].dim
        self.dtype = layers[0].dtype
        self.K = len(layers)
        kinds = np.array([kind_code(f) for f in layers], dtype=np.intc)
        param_off = np.cumsum([0] + [f.num_params for f in layers], dtype=np.int64)
        self._kinds = cupy.asarray(kinds)
        self._param_off = cupy.asarray(param_off)
        # Offsets from the headers' X_work_size / X_grad_acc_size, computed by
        # the device code itself (once, when the flow moves to the GPU).
        self._work_off = cupy.empty(self.K + 1, dtype=np.int64)
        self._acc_off = cupy.empty(self.K + 1, dtype=np.int64)
        kernel("chain", "chain_plan")(
            (1,), (1,), (self._kinds, i32(self.K), i32(self.dim), self._work_off, self._acc_off))
        work_off, acc_off = cupy.asnumpy(self._work_off), cupy.asnumpy(self._acc_off)
        self.work_total = int(work_off[-1])
        self.acc_total = int(acc_off[-1])
        self.acc_max = int(np.diff(acc_off).max())
        self._itemsize = self.dtype.itemsize

    def _params(self):
        p = self._owner._params
        return p[self._lo:self._hi]

    def _work(self, params):
        work = cupy.empty(max(self.work_total, 1), dtype=self.dtype)
        kernel("chain", "chain_prepare", self.dtype)(
            ((self.K + 31) // 32,), (32,),
            (self._kinds, i32(self.K), params, self._param_off, self._work_off, i32(self.dim), work))
        return work

    # -- forward / inverse ------------------------------------------------
    def _transform(self, inverse, v, out, log_det):
        n = v.shape[0]
        if n == 0:
            return
        params = self._params()
        work = self._work(params)
        item = self._itemsize
        work_in_smem = self.work_total * item <= WORK_SMEM
        stride = odd(self.dim)
        B, G, rows_in_smem, smem = _launch.plan(
            n, stride, item, lambda B: self.work_total * item if work_in_smem else 0)
        rows_g = self._dummy() if rows_in_smem else cupy.empty(G * B * stride, dtype=self.dtype)
        kernel("chain", "chain_transform", self.dtype)(
            (G,), (B,),
            (i32(inverse), self._kinds, i32(self.K), self._work_off, work, i64(self.work_total),
             i32(work_in_smem), i32(self.dim), i64(n), v, out, log_det, rows_g,
             i32(rows_in_smem), i32(stride)),
            shared_mem=smem)

    # -- vector-Jacobian products -------------------------------------------
    def _vjp(self, inverse, v, grad_out, grad_log_det, grad_in, grad_params):
        n = v.shape[0]
        params = self._params()
        work = self._work(params)
        item = self._itemsize
        A = self.acc_total
        work_in_smem = self.work_total * item <= WORK_SMEM
        acc_in_smem = 4 * A * item <= ACC_SMEM
        if n > 0:
            ld = odd(self.dim)
            stride = odd(2 * ld + self.acc_max)

            def fixed(B):
                return ((self.work_total if work_in_smem else 0)
                        + ((B // 32) * A if acc_in_smem else 0)) * item

            B, G, rows_in_smem, smem = _launch.plan(n, stride, item, fixed, VJP_THREADS_PER_SM)
            per_thread_stack = (self.K - 1) * self.dim * item
            if per_thread_stack and G * B * per_thread_stack > STACK_BUDGET:
                G = max(1, min(G, STACK_BUDGET // (B * per_thread_stack)))
            stack = cupy.empty(max(G * B * (self.K - 1) * self.dim, 1), dtype=self.dtype)
            nslots = G if acc_in_smem else G * (B // 32)
            partial = cupy.zeros(max(nslots * A, 1), dtype=self.dtype)
            rows_g = self._dummy() if rows_in_smem else cupy.empty(G * B * stride, dtype=self.dtype)
            kernel("chain", "chain_vjp", self.dtype)(
                (G,), (B,),
                (i32(inverse), self._kinds, i32(self.K), self._work_off, self._acc_off, work,
                 i64(self.work_total), i32(work_in_smem), i32(self.dim), i64(n), v, grad_out,
                 grad_log_det, grad_in, stack, partial, i32(acc_in_smem), rows_g,
                 i32(rows_in_smem), i32(stride), i32(ld)),
                shared_mem=smem)
        else:
            nslots = 0
            partial = self._dummy()
        acc = cupy.empty(max(A, 1), dtype=self.dtype)
        threads = 256
        kernel("chain", "chain_reduce", self.dtype)(
            (max(1, min(-(-A // threads), 1024)),), (threads,),
            (partial, i64(nslots), i64(A), acc))
        kernel("chain", "chain_finish", self.dtype)(
            ((self.K + 31) // 32,), (32,),
            (self._kinds, i32(self.K), params, self._param_off, work, self._work_off, acc,
             self._acc_off, i32(self.dim), grad_params))

    def _dummy(self):
        return cupy.empty(1, dtype=self.dtype)


class ChainEngine(Units):
    """A ``Chain`` on the GPU: its units (runs of row-wise layers, fused, and
    the other layers' own engines) applied in turn by the same ``Units``
    sequencing as on the CPU, with CuPy buffers."""

    def __init__(self, chain, engine_for):
        self.dtype = chain.dtype
        units = []
        for kind, ks in unit_groups(chain.layers):
            lo, hi = chain._slices[ks[0]].start, chain._slices[ks[-1]].stop
            if kind == "run":
                unit = RowwiseRun([chain.layers[k] for k in ks], chain, lo, hi)
            else:
                unit = engine_for(chain.layers[ks[0]])
            units.append((unit, slice(lo, hi)))
        super().__init__(units)

    # The flow kernel interface.
    def _forward(self, z, x, log_det):
        self.forward(z, x, log_det)

    def _inverse(self, x, z, log_det):
        self.inverse(x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self.backward(z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self.inverse_backward(x, grad_z, grad_log_det, grad_x, grad_params)
