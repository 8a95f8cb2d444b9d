"""CUDA driver of ``RealNVP``.

The nets' matrix products run in cuBLAS through ``cupy.matmul``, batched over
the two nets of a mask (the s-net is batch entry 0, the t-net entry 1); the
elementwise work around them -- bias + tanh, its derivative, the masked
affine coupling with its log-determinant and their VJPs -- is fused into the
kernels of ``csrc/realnvp.cu``, whose per-element math is ``csrc/realnvp.h``,
shared with the CPU.

No work is spent on mask zeros, as on the CPU: the first layer multiplies the
gathered passed entries (``zp``, rows x p) by the passed columns of ``A_1``,
and the output layers produce only the changed entries from the changed rows
of ``A_out`` / ``b_out``.  The gathered weights are taken from the parameter
vector at every call (a few parameter-sized device operations), so in-place
parameter updates are always seen.

The batch is processed in chunks of rows sized so that the activations kept
for the backward pass stay within ``CHUNK_BYTES``; parameter gradients are
accumulated over chunks in chunk order in the gathered layout and scattered
to the raw layout once, with exact zeros for the entries the map does not
depend on.
"""

import cupy
import numpy as np

from pyflowcore.cuda._engine import Engine
from pyflowcore.cuda._launch import i32, i64
from pyflowcore.cuda._module import kernel, sm_count

CHUNK_BYTES = 512 * 1024 * 1024
THREADS = 256


class RealNVPEngine(Engine):
    def __init__(self, flow):
        self._flow = flow
        self.dtype = flow.dtype
        self.D, self.M, self.L, self.U = flow.dim, flow.num_masks, flow.num_layers, flow.units
        D, U, L = self.D, self.U, self.L
        self.hid = (L - 1) * (U + 1) * U
        self.net_size = 2 * D * U + D + U + self.hid
        self._passed = [np.flatnonzero(b) for b in flow.masks]
        self._changed = [np.flatnonzero(b == 0) for b in flow.masks]
        self._passed_d = [cupy.asarray(a, dtype=np.int32) for a in self._passed]
        self._changed_d = [cupy.asarray(a, dtype=np.int32) for a in self._changed]

    # -- parameters in the gathered layout ----------------------------------
    def _net(self, vec, m, k):
        s = self.net_size
        return vec[(2 * m + k) * s:(2 * m + k + 1) * s]

    def _gather_params(self):
        """Per mask: W1 (2, U, p), b1 (2, U), hidden [(A (2, U, U), b (2, U))],
        Ao (2, c, U), bo (2 * c,) -- s-net then t-net."""
        D, U = self.D, self.U
        params = self._flow._params
        out = []
        for m in range(self.M):
            nets = [self._net(params, m, k) for k in range(2)]
            p_idx, c_idx = self._passed_d[m], self._changed_d[m]
            W1 = cupy.stack([n[:U * D].reshape(U, D)[:, p_idx] for n in nets])
            b1 = cupy.stack([n[U * D:U * D + U] for n in nets])
            hidden = []
            for l in range(self.L - 1):
                o = U * D + U + l * (U + 1) * U
                hidden.append((cupy.stack([n[o:o + U * U].reshape(U, U) for n in nets]),
                               cupy.stack([n[o + U * U:o + U * U + U] for n in nets])))
            ao = U * D + U + self.hid
            bo = 2 * U * D + U + self.hid
            Ao = cupy.stack([n[ao:ao + D * U].reshape(D, U)[c_idx] for n in nets])
            bias_o = cupy.concatenate([n[bo:bo + D][c_idx] for n in nets])
            out.append((W1, b1, hidden, Ao, bias_o))
        return out

    # -- launches ------------------------------------------------------------
    def _grid(self, total):
        return (int(max(1, min(-(-total // THREADS), sm_count() * 16))),), (THREADS,)

    def _gather_rows(self, m, y, rows):
        p = len(self._passed[m])
        zp = cupy.empty((rows, p), dtype=self.dtype)
        grid, block = self._grid(rows * p)
        kernel("realnvp", "realnvp_gather", self.dtype)(
            grid, block, (self._passed_d[m], i32(p), y, i32(self.D), i64(rows), zp))
        return zp

    def _bias_tanh(self, h, bias):
        rows = h.shape[1]
        grid, block = self._grid(h.size)
        kernel("realnvp", "realnvp_bias_tanh", self.dtype)(
            grid, block, (h, cupy.ascontiguousarray(bias), i64(rows), i32(self.U)))

    def _tanh_grad(self, d, h):
        grid, block = self._grid(d.size)
        kernel("realnvp", "realnvp_tanh_grad", self.dtype)(grid, block, (d, h, i64(d.size)))

    def _nets_forward(self, zp, W1, b1, hidden, Ao):
        """The hidden layers (2, rows, U) each, and st = (s, t) without output bias."""
        h = cupy.matmul(zp, W1.transpose(0, 2, 1))
        self._bias_tanh(h, b1)
        hs = [h]
        for A, b in hidden:
            h = cupy.matmul(h, A.transpose(0, 2, 1))
            self._bias_tanh(h, b)
            hs.append(h)
        st = cupy.ascontiguousarray(cupy.matmul(h, Ao.transpose(0, 2, 1)))
        return hs, st

    def _coupling(self, inverse, m, st, bias_o, x, log_det, accumulate):
        rows = x.shape[0]
        c = len(self._changed[m])
        grid, block = self._grid(rows)
        kernel("realnvp", "realnvp_coupling", self.dtype)(
            grid, block,
            (i32(inverse), self._changed_d[m], i32(c), st, bias_o, x, i32(self.D), i64(rows),
             log_det, i32(accumulate)))

    def _chunk_rows(self, n):
        D, U, L, M = self.D, self.U, self.L, self.M
        per_row = (M * (2 * D + 2 * L * U) + 6 * U + 4 * D) * self.dtype.itemsize
        return int(max(1024, CHUNK_BYTES // per_row))

    # -- forward / inverse ---------------------------------------------------
    def _transform(self, inverse, v, out, log_det):
        n = v.shape[0]
        if n == 0:
            return
        gathered = self._gather_params()
        step = self._chunk_rows(n)
        for r0 in range(0, n, step):
            x = out[r0:r0 + step]
            ld = log_det[r0:r0 + step]
            x[...] = v[r0:r0 + step]
            for k in range(self.M):
                m = self.M - 1 - k if inverse else k
                W1, b1, hidden, Ao, bias_o = gathered[m]
                zp = self._gather_rows(m, x, x.shape[0])
                _, st = self._nets_forward(zp, W1, b1, hidden, Ao)
                self._coupling(inverse, m, st, bias_o, x, ld, k > 0)

    # -- vector-Jacobian products ----------------------------------------------
    def _vjp(self, inverse, v, grad_out, grad_log_det, grad_in, grad_params):
        n = v.shape[0]
        M, L = self.M, self.L
        gathered = self._gather_params()
        # Gradient accumulators, gathered layout, per mask: W1, b1, hidden A/b, Ao, bo.
        acc = [[cupy.zeros_like(W1), cupy.zeros_like(b1),
                [(cupy.zeros_like(A), cupy.zeros_like(b)) for A, b in hidden],
                cupy.zeros_like(Ao), cupy.zeros(bias_o.shape, dtype=self.dtype)]
               for W1, b1, hidden, Ao, bias_o in gathered]
        step = self._chunk_rows(n)
        for r0 in range(0, n, step):
            vin = v[r0:r0 + step]
            rows = vin.shape[0]
            gld = grad_log_det[r0:r0 + step]
            # Recompute the couplings, keeping what the VJP needs.
            ys, E, H, ZP = [vin], [], [], []
            ld_scratch = cupy.empty(rows, dtype=self.dtype)
            for k in range(M):
                m = M - 1 - k if inverse else k
                W1, b1, hidden, Ao, bias_o = gathered[m]
                zp = self._gather_rows(m, ys[k], rows)
                hs, st = self._nets_forward(zp, W1, b1, hidden, Ao)
                y = ys[k].copy()
                self._coupling(inverse, m, st, bias_o, y, ld_scratch, False)
                ys.append(y)
                E.append(st[0])
                H.append(hs)
                ZP.append(zp)
            g = grad_in[r0:r0 + step]
            g[...] = grad_out[r0:r0 + step]
            for k in range(M - 1, -1, -1):
                m = M - 1 - k if inverse else k
                W1, b1, hidden, Ao, bias_o = gathered[m]
                a_W1, a_b1, a_hidden, a_Ao, a_bo = acc[m]
                c = len(self._changed[m])
                p = len(self._passed[m])
                dst = cupy.empty((2, rows, c), dtype=self.dtype)
                grid, block = self._grid(rows)
                kernel("realnvp", "realnvp_coupling_vjp", self.dtype)(
                    grid, block,
                    (i32(inverse), self._changed_d[m], i32(c), E[k],
                     ys[k + 1] if inverse else ys[k], i32(self.D), gld, g, dst, i64(rows)))
                hs = H[k]
                a_Ao += cupy.matmul(dst.transpose(0, 2, 1), hs[-1])
                a_bo += dst.sum(axis=1).reshape(-1)
                dh = cupy.matmul(dst, Ao)
                self._tanh_grad(dh, hs[-1])
                for l in range(L - 1, 0, -1):
                    A, _ = hidden[l - 1]
                    a_A, a_b = a_hidden[l - 1]
                    a_A += cupy.matmul(dh.transpose(0, 2, 1), hs[l - 1])
                    a_b += dh.sum(axis=1)
                    dh = cupy.matmul(dh, A)
                    self._tanh_grad(dh, hs[l - 1])
                a_W1 += cupy.matmul(dh.transpose(0, 2, 1), ZP[k])
                a_b1 += dh.sum(axis=1)
                dzp = cupy.ascontiguousarray(cupy.matmul(dh, W1))
                grid, block = self._grid(rows * p)
                kernel("realnvp", "realnvp_scatter_add", self.dtype)(
                    grid, block, (self._passed_d[m], i32(p), dzp, g, i32(self.D), i64(rows)))
        self._scatter_grad(acc, grad_params)

    def _scatter_grad(self, acc, grad_params):
        D, U = self.D, self.U
        grad_params[...] = 0
        for m in range(self.M):
            a_W1, a_b1, a_hidden, a_Ao, a_bo = acc[m]
            c = len(self._changed[m])
            for k in range(2):
                net = self._net(grad_params, m, k)
                net[:U * D].reshape(U, D)[:, self._passed_d[m]] = a_W1[k]
                net[U * D:U * D + U] = a_b1[k]
                for l, (a_A, a_b) in enumerate(a_hidden):
                    o = U * D + U + l * (U + 1) * U
                    net[o:o + U * U] = a_A[k].reshape(-1)
                    net[o + U * U:o + U * U + U] = a_b[k]
                ao = U * D + U + self.hid
                bo = 2 * U * D + U + self.hid
                net[ao:ao + D * U].reshape(D, U)[self._changed_d[m]] = a_Ao[k]
                net[bo:bo + D][self._changed_d[m]] = a_bo[k * c:(k + 1) * c]

