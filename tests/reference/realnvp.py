"""Plain-NumPy Real NVP, written from SPEC.md section 3 with full masks.

Unlike the kernels (which gather the passed entries and compute only the
changed outputs), this multiplies by the 0/1 masks exactly as the formula
``x = b*z + (1 - b)*(z*exp(s(b*z)) + t(b*z))`` reads, and walks the raw
parameter layout of SPEC.md section 2 directly.
"""

import numpy as np

import pyflowcore as pf
from pyflowcore.flows.realnvp import realnvp_masks
from tests.reference import Case


def unpack(params, dim, num_masks, num_layers, units):
    """[(s_net, t_net) per mask]; a net is [(A, b) per layer], output layer last."""
    D, U = dim, units
    pos = 0

    def take(shape):
        nonlocal pos
        size = int(np.prod(shape))
        out = params[pos:pos + size].reshape(shape)
        pos += size
        return out

    nets = []
    for _ in range(num_masks):
        pair = []
        for _ in range(2):
            layers = [(take((U, D)), take((U,)))]
            layers += [(take((U, U)), take((U,))) for _ in range(num_layers - 1)]
            layers.append((take((D, U)), take((D,))))
            pair.append(layers)
        nets.append(pair)
    assert pos == params.size, (pos, params.size)
    return nets


def mlp(layers, v):
    for A, b in layers[:-1]:
        v = np.tanh(v @ A.T + b)
    A, b = layers[-1]
    return v @ A.T + b


def reference(params, z, num_masks, num_layers, units):
    dim = z.shape[1]
    masks = realnvp_masks(dim, num_masks).astype(np.float64)
    x, log_det = z, np.zeros(z.shape[0])
    for b, (s_net, t_net) in zip(masks, unpack(params, dim, num_masks, num_layers, units)):
        s = mlp(s_net, b * x)
        t = mlp(t_net, b * x)
        x = b * x + (1 - b) * (x * np.exp(s) + t)
        log_det = log_det + np.sum((1 - b) * s, axis=1)
    return x, log_det


def make_case(num_masks, num_layers, units, scale):
    def make(dim, dtype, rng):
        flow = pf.RealNVP(dim, num_masks, num_layers, units, dtype=dtype, rng=rng)
        # Random parameters everywhere, including the output layers (zero at
        # initialisation); scaled so that exp(s) stays within a few units.
        flow.set_params(scale * rng.standard_normal(flow.num_params))
        return flow

    def ref(params, z):
        return reference(params, z, num_masks, num_layers, units)

    return Case(f"realnvp-m{num_masks}-l{num_layers}-u{units}", make, ref, dims=(2, 5, 16))


CASES = [
    make_case(2, 1, 4, 0.5),
    make_case(4, 2, 3, 0.4),
]
