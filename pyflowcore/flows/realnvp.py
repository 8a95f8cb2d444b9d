"""Real NVP: a cascade of affine coupling layers (Dinh et al. 2016)."""

import numpy as np

from pyflowcore._kernels import realnvp as _k
from pyflowcore._memory import aligned_empty
from pyflowcore._validation import check_dim, check_positive_int, check_rng
from pyflowcore.flows._base import Flow, glorot_uniform


def _check_num_masks(num_masks):
    num_masks = check_positive_int(num_masks, "num_masks", minimum=2)
    if num_masks % 2:
        raise ValueError("num_masks must be an even integer >= 2 (masks come in "
                         f"complementary pairs), got {num_masks}")
    return num_masks


def realnvp_masks(dim, num_masks):
    """The binary masks of a ``RealNVP(dim, num_masks)`` flow, in order.

    Parameters
    ----------
    dim : int
        At least 2.
    num_masks : int
        Even and at least 2.

    Returns
    -------
    ndarray of uint8, shape (num_masks, dim)
        Row ``i`` is mask ``b_i``: 1 where mask ``i`` passes the entry
        unchanged, 0 where it transforms it.

    Notes
    -----
    Reading of SPEC.md section 3.  Masks come in pairs ``2q, 2q + 1`` of the
    same frequency ``f_q``; the first element of mask ``i`` is on for even
    ``i`` and off for odd ``i``, so each pair is complementary.  The
    frequencies are ``1, dim//2, 2, dim//4, 4, dim//8, ...``, i.e.
    ``f_q = 2**(q//2)`` for even ``q`` and ``dim // 2**((q+1)//2)`` for odd
    ``q`` (integer division), each clamped to ``[1, dim//2]``.  A mask of
    frequency ``f`` takes ``w = dim // f``, rounds it up to an even number,
    and alternates runs of ``half = w // 2`` equal bits starting with the
    first element's state; the last run is cut at ``dim``.  So bit ``j`` is
    ``first`` if ``(j // half)`` is even and ``1 - first`` otherwise.

    Every mask passes at least one entry and changes at least one (``half``
    is between 1 and ``ceil(dim/2)`` < ``dim``).

    Examples
    --------
    >>> realnvp_masks(5, 4)
    array([[1, 1, 1, 0, 0],
           [0, 0, 0, 1, 1],
           [1, 0, 1, 0, 1],
           [0, 1, 0, 1, 0]], dtype=uint8)
    """
    dim = check_dim(dim, minimum=2)
    num_masks = _check_num_masks(num_masks)
    cols = np.arange(dim)
    masks = np.empty((num_masks, dim), dtype=np.uint8)
    for i in range(num_masks):
        q = i // 2
        f = 2 ** (q // 2) if q % 2 == 0 else dim // 2 ** ((q + 1) // 2)
        f = min(max(f, 1), dim // 2)
        w = dim // f
        w += w % 2
        half = w // 2
        first = 1 - i % 2
        masks[i] = np.where((cols // half) % 2 == 0, first, 1 - first)
    return masks


class RealNVP(Flow):
    """Real NVP: ``num_masks`` affine coupling layers with tanh-MLP scale and shift.

    Mask ``i`` (applied in order, mask 0 first) with binary vector ``b``
    maps ``y -> y'``::

        y' = b*y + (1 - b)*(y*exp(s(b*y)) + t(b*y))
        log_det_i = sum_j (1 - b_j) s_j(b*y)

    and ``log|det df/dz| = sum_i log_det_i``.  Entries with ``b_j = 1`` are
    passed unchanged; the others are scaled and shifted by functions of the
    passed ones, so the Jacobian is triangular up to a permutation.  The
    inverse runs the masks in reverse order: passed entries are unchanged and
    ``y = (y' - t) * exp(-s)`` for the others.

    ``s`` and ``t`` are fully connected nets of the masked input ``b*y``:
    ``h_1 = tanh(A_1 (b*y) + b_1)``, ``h_l = tanh(A_l h_{l-1} + b_l)`` for
    ``l = 2..num_layers``, output ``A_out h_L + b_out`` (linear, size dim).

    Parameters
    ----------
    dim : int
        At least 2.
    num_masks : int, default 2
        Even and at least 2; the masks are ``realnvp_masks(dim, num_masks)``.
    num_layers : int, default 1
        Hidden tanh layers per net.
    units : int, default 32
        Units per hidden layer.
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        For the Glorot-uniform initialisation.

    Attributes
    ----------
    masks : ndarray of uint8, shape (num_masks, dim)
        Read-only; row ``i`` is ``b_i``.

    Notes
    -----
    Parameter layout (``M = num_masks``, ``L = num_layers``, ``U = units``):
    for each mask in order, the s-net, then the t-net; each net is ``A_1``
    (U x dim, row-major), ``b_1`` (U), then for each further hidden layer
    ``A_l`` (U x U), ``b_l`` (U), then ``A_out`` (dim x U), ``b_out`` (dim).
    In all ``num_params = 2 M (2 dim U + dim + U + (L - 1)(U + 1) U)``.

    Initial values: ``A_1`` and ``A_l`` Glorot-uniform (with each matrix's
    own fan-in and fan-out), hidden biases 0, ``A_out = 0`` and
    ``b_out = 0``, so that every coupling, and the flow, starts as the
    identity.

    The map does not depend on the ``A_1`` columns of changed entries (they
    multiply mask zeros) nor on the ``A_out`` rows and ``b_out`` entries of
    passed entries (those outputs are discarded); their gradients are exactly
    zero.

    The CPU kernels process the batch in blocks of rows with BLAS GEMMs on
    the passed entries only; the design note of
    ``pyflowcore/_kernels/realnvp.pyx`` has the block-size measurements.
    """

    def __init__(self, dim, num_masks=2, num_layers=1, units=32, *, dtype="float64", rng=None):
        dim = check_dim(dim, minimum=2)
        num_masks = _check_num_masks(num_masks)
        num_layers = check_positive_int(num_layers, "num_layers")
        units = check_positive_int(units, "units")
        D, M, L, U = dim, num_masks, num_layers, units
        net_size = 2 * D * U + D + U + (L - 1) * (U + 1) * U
        super().__init__(dim, 2 * M * net_size, dtype)
        self.num_masks, self.num_layers, self.units = M, L, U

        masks = realnvp_masks(D, M)
        masks.flags.writeable = False
        self.masks = masks
        # Kernel view of the masks: row m lists the passed entries, then the changed ones.
        self._idx = np.ascontiguousarray(
            [np.concatenate([np.flatnonzero(b), np.flatnonzero(b == 0)]) for b in masks],
            dtype=np.intc)
        self._npass = np.ascontiguousarray(masks.sum(axis=1), dtype=np.intc)
        self._block_rows = _k.default_block_rows(D, U, L)

        rng = check_rng(rng)
        parts = []
        for _ in range(2 * M):
            parts.append(glorot_uniform(rng, U * D, D, U, self.dtype))
            parts.append(np.zeros(U, dtype=self.dtype))
            for _ in range(L - 1):
                parts.append(glorot_uniform(rng, U * U, U, U, self.dtype))
                parts.append(np.zeros(U, dtype=self.dtype))
            parts.append(np.zeros(D * U + D, dtype=self.dtype))
        self._params[:] = np.concatenate(parts)

    def _config(self):
        return {"dim": self.dim, "num_masks": self.num_masks, "num_layers": self.num_layers,
                "units": self.units, "dtype": self.dtype.name}

    def _work(self):
        work = aligned_empty(_k.work_size(self.dim, self.units, self.num_layers, self.num_masks),
                             self.dtype)
        _k.prepare(self._params, self._idx, self._npass, self.units, self.num_layers, work)
        return work

    def _transform(self, inverse, v, out, log_det):
        _k.transform(inverse, self._params, self._work(), self._idx, self._npass, self.units,
                     self.num_layers, self._block_rows, v, out, log_det)

    def _vjp(self, inverse, v, grad_out, grad_log_det, grad_in, grad_params):
        _k.vjp(inverse, self._params, self._work(), self._idx, self._npass, self.units,
               self.num_layers, self._block_rows, v, grad_out, grad_log_det, grad_in,
               grad_params)

    def _quadratic_vjp(self, inverse, v, sq_weight, log_det_weight, grad_in, grad_params):
        return _k.quadratic_vjp(inverse, self._params, self._work(), self._idx, self._npass,
                                self.units, self.num_layers, self._block_rows, v, sq_weight,
                                log_det_weight, grad_in, grad_params)

    def _forward(self, z, x, log_det):
        self._transform(False, z, x, log_det)

    def _inverse(self, x, z, log_det):
        self._transform(True, x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self._vjp(False, z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self._vjp(True, x, grad_z, grad_log_det, grad_x, grad_params)
