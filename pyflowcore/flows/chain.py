"""Composition of flows."""

import copy

import numpy as np

from pyflowcore.flows._base import Flow, quadratic_vjp
from pyflowcore.flows._rowwise import RunKernels, layer_kind
from pyflowcore.flows.cholesky import CholeskyProduct


def _flatten(flows):
    for f in flows:
        if isinstance(f, Chain):
            yield from f.layers
        elif isinstance(f, Flow):
            yield f
        else:
            raise TypeError(f"Chain expects Flow objects, got {type(f).__name__}")


class Chain(Flow):
    """The composition ``x = f_K(... f_2(f_1(z)))`` of flows, in list order.

    ``log|det df/dz| = sum_k log|det df_k/dz_{k-1}|``.

    Parameters
    ----------
    flows : sequence of Flow
        Layers in the order they are applied; all of one ``dim`` and
        ``dtype``.  A ``Chain`` among them is spliced in (a chain of chains is
        a chain).

    Notes
    -----
    The chain owns one parameter vector, the layers' vectors concatenated in
    layer order.  On construction every layer's ``params`` is rebound to a
    view into it, so an optimiser sees one vector and updates reach every
    layer.  A layer's ``params`` therefore views the vector of the chain
    built last from it; an earlier chain keeps computing with its own
    vector.  A layer may appear only once in a chain, and a
    ``CholeskyProduct`` only last.
    """

    def __init__(self, flows):
        if isinstance(flows, Flow):
            raise TypeError("Chain expects a sequence of flows, e.g. Chain([f1, f2])")
        try:
            flows = list(flows)    # an iterator is read once
        except TypeError:
            raise TypeError(f"Chain expects a sequence of flows, got {type(flows).__name__}") from None
        nested = [f for f in flows if isinstance(f, Chain)]
        layers = list(_flatten(flows))
        if not layers:
            raise ValueError("Chain needs at least one flow")
        if len({id(f) for f in layers}) != len(layers):
            raise ValueError("a flow may appear only once in a Chain (its parameters would be shared)")
        if any(isinstance(f, CholeskyProduct) for f in layers[:-1]):
            # Its image is the cone of positive-definite matrices, not R^dim:
            # no later layer's output could be mapped back through it.
            raise ValueError("a CholeskyProduct can only be the last layer of a Chain")
        first = layers[0]
        for f in layers:
            if f.dim != first.dim or f.dtype != first.dtype:
                raise ValueError("all flows of a Chain must have the same dim and dtype; got "
                                 f"{first.dim}/{first.dtype} and {f.dim}/{f.dtype}")
            if f.device != "cpu":
                raise ValueError("build a Chain from CPU flows, then move it with .to(device)")
        self.dim = first.dim
        self.dtype = first.dtype
        self.layers = tuple(layers)
        self._params = np.concatenate([f.params for f in layers])
        self._slices = []
        start = 0
        for f in layers:
            self._slices.append(slice(start, start + f.num_params))
            f._params = self._params[self._slices[-1]]
            start += f.num_params
        # Chains spliced in keep working, as views into this chain's vector.
        for inner in nested:
            lo = self.layers.index(inner.layers[0])
            offset = self._slices[lo].start
            inner._params = self._params[offset:offset + inner.num_params]
            inner._build_units()
        self._build_units()

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, k):
        return self.layers[k]

    def _config(self):
        from pyflowcore.io import flow_to_spec
        return {"flows": [flow_to_spec(f) for f in self.layers]}

    def __repr__(self):
        inner = ",\n    ".join(repr(f) for f in self.layers)
        return f"Chain([\n    {inner},\n])"

    # -- kernels ------------------------------------------------------------
    def _build_units(self):
        units = []
        for kind, ks in unit_groups(self.layers):
            lo, hi = self._slices[ks[0]].start, self._slices[ks[-1]].stop
            # Every unit reads the chain's own vector, not the layers' views
            # of it, which a later chain built from the same layers rebinds
            # to its vector: this chain then still computes with its own.
            if kind == "run":
                unit = RunKernels([self.layers[k] for k in ks], self._params[lo:hi])
            else:
                unit = copy.copy(self.layers[ks[0]])
                unit._params = self._params[lo:hi]
            units.append((unit, slice(lo, hi)))
        self._units = Units(units)
        # A chain of row-wise layers only is one run: its fast paths are the
        # run's, on the chain's whole parameter vector.
        only = units[0][0] if len(units) == 1 else None
        run = only.run if isinstance(only, RunKernels) else None
        self._forward_fast = run.forward_fast if run is not None else None
        self._inverse_fast = run.inverse_fast if run is not None else None

    def _forward(self, z, x, log_det):
        self._units.forward(z, x, log_det)

    def _inverse(self, x, z, log_det):
        self._units.inverse(x, z, log_det)

    def _backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        self._units.backward(z, grad_x, grad_log_det, grad_z, grad_params)

    def _inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        self._units.inverse_backward(x, grad_z, grad_log_det, grad_x, grad_params)

    def _quadratic_vjp(self, inverse, v, sq_weight, log_det_weight, grad_v, grad_params):
        return self._units.quadratic_vjp(inverse, v, sq_weight, log_det_weight, grad_v,
                                         grad_params)


def unit_groups(layers):
    """Split a chain's layers into units: maximal runs of row-wise layers,
    which one fused kernel executes, and single other layers.

    Yields
    ------
    ("run" | "layer", list of layer indices)
    """
    run = []
    for k, f in enumerate(layers):
        if layer_kind(f) is not None:
            run.append(k)
            continue
        if run:
            yield "run", run
            run = []
        yield "layer", [k]
    if run:
        yield "run", run


def _empty_like(a):
    """``empty_like`` for a NumPy or (on the GPU) a CuPy array."""
    if isinstance(a, np.ndarray):
        return np.empty_like(a)
    import cupy
    return cupy.empty_like(a)


class Units:
    """A sequence of units applied in turn, each with the flow kernel
    interface (``_forward``, ``_inverse``, ``_backward``,
    ``_inverse_backward``) and its slice of the chain's parameter vector.

    Shared by the CPU ``Chain`` and its GPU engine; buffers are allocated
    like the arrays they are given.
    """

    def __init__(self, units):
        self.units = list(units)

    def forward(self, z, x, log_det):
        K = len(self.units)
        unit_log_det = _empty_like(log_det)
        # Ping-pong between x and one scratch array so the last unit lands in x.
        scratch = _empty_like(x) if K > 1 else x
        bufs = (x, scratch) if K % 2 == 1 else (scratch, x)
        cur = z
        for k, (unit, _) in enumerate(self.units):
            nxt = bufs[k % 2]
            unit._forward(cur, nxt, log_det if k == 0 else unit_log_det)
            if k:
                log_det += unit_log_det
            cur = nxt

    def inverse(self, x, z, log_det):
        K = len(self.units)
        unit_log_det = _empty_like(log_det)
        scratch = _empty_like(z) if K > 1 else z
        bufs = (z, scratch) if K % 2 == 1 else (scratch, z)
        cur = x
        for k, (unit, _) in enumerate(reversed(self.units)):
            nxt = bufs[k % 2]
            unit._inverse(cur, nxt, log_det if k == 0 else unit_log_det)
            if k:
                log_det += unit_log_det
            cur = nxt

    def backward(self, z, grad_x, grad_log_det, grad_z, grad_params):
        unit_log_det = _empty_like(grad_log_det)
        inputs = [z]
        for unit, _ in self.units[:-1]:
            nxt = _empty_like(z)
            unit._forward(inputs[-1], nxt, unit_log_det)
            inputs.append(nxt)
        g = grad_x
        for k in range(len(self.units) - 1, -1, -1):
            unit, params_slice = self.units[k]
            g_in = grad_z if k == 0 else _empty_like(z)
            unit._backward(inputs[k], g, grad_log_det, g_in, grad_params[params_slice])
            g = g_in

    def inverse_backward(self, x, grad_z, grad_log_det, grad_x, grad_params):
        # The inverse runs the units last to first: y_K = x, y_{k-1} = f_k^{-1}(y_k).
        unit_log_det = _empty_like(grad_log_det)
        K = len(self.units)
        ys = [None] * (K + 1)
        ys[K] = x
        for k in range(K - 1, 0, -1):
            ys[k] = _empty_like(x)
            self.units[k][0]._inverse(ys[k + 1], ys[k], unit_log_det)
        g = grad_z
        for k in range(K):
            unit, params_slice = self.units[k]
            g_in = grad_x if k == K - 1 else _empty_like(x)
            unit._inverse_backward(ys[k + 1], g, grad_log_det, g_in, grad_params[params_slice])
            g = g_in

    def quadratic_vjp(self, inverse, v, sq_weight, log_det_weight, grad_v, grad_params):
        """``Flow.quadratic_loss_and_grad``: the maps of every unit but the one
        that produces the output, that unit's fused kernel (``quadratic_vjp``
        of ``_base``), then the other units' VJPs with the constant
        log-determinant cotangent."""
        K = len(self.units)
        order = list(range(K - 1, -1, -1)) if inverse else list(range(K))
        ld = _empty_like(v[:, 0])
        sum_ld = 0.0
        inputs = [v]
        for k in order[:-1]:
            unit = self.units[k][0]
            nxt = _empty_like(v)
            (unit._inverse if inverse else unit._forward)(inputs[-1], nxt, ld)
            sum_ld += float(ld.sum(dtype=np.float64))
            inputs.append(nxt)
        last, params_slice = self.units[order[-1]]
        g = grad_v if K == 1 else _empty_like(v)
        sum_sq, last_ld = quadratic_vjp(last, inverse, inputs[-1], sq_weight, log_det_weight, g,
                                        grad_params[params_slice])
        ld.fill(log_det_weight)
        for i in range(K - 2, -1, -1):
            unit, params_slice = self.units[order[i]]
            g_in = grad_v if i == 0 else _empty_like(v)
            (unit._inverse_backward if inverse else unit._backward)(
                inputs[i], g, ld, g_in, grad_params[params_slice])
            g = g_in
        return sum_sq, sum_ld + last_ld
