import numpy as np

import pyflowcore as pf
from tests.reference import Case


def make_scale(dim, dtype, rng):
    flow = pf.ElementwiseScale(dim, dtype=dtype)
    # Magnitudes in [0.5, 2] with random signs: log|a| must handle a < 0.
    flow.set_params(rng.uniform(0.5, 2.0, dim) * rng.choice([-1.0, 1.0], dim))
    return flow


def scale_reference(params, z):
    a = params
    return a * z, np.full(z.shape[0], np.sum(np.log(np.abs(a))))


def make_shift(dim, dtype, rng):
    flow = pf.Shift(dim, dtype=dtype)
    flow.set_params(rng.standard_normal(dim))
    return flow


def shift_reference(params, z):
    return z + params, np.zeros(z.shape[0])


CASES = [
    Case("scale", make_scale, scale_reference),
    Case("shift", make_shift, shift_reference),
]
