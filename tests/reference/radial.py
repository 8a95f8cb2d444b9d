"""Reference radial flow, written from SPEC.md section 3 in plain float64 NumPy."""

import numpy as np

import pyflowcore as pf
from tests.reference import Case

DIMS = (1, 2, 5, 16)


def unpack(params, dim):
    """(alpha, beta, z0) from the raw layout [log_alpha, beta_raw, z0]."""
    alpha = np.exp(params[0])
    beta = -alpha + np.logaddexp(0.0, params[1])
    return alpha, beta, params[2:2 + dim]


def radial_reference(params, z):
    dim = z.shape[1]
    alpha, beta, z0 = unpack(params, dim)
    r = np.linalg.norm(z - z0, axis=1)
    h = 1.0 / (alpha + r)
    h_prime = -1.0 / (alpha + r) ** 2
    x = z + (beta * h)[:, None] * (z - z0)
    log_det = (dim - 1) * np.log(1 + beta * h) + np.log(1 + beta * h + beta * h_prime * r)
    return x, log_det


def _z0(rng, dim):
    # Centres inside the box [-0.5, 0.5]^dim; sample_z keeps points outside
    # the ball of radius 0.6 sqrt(dim), so |z - z0| >= 0.1 sqrt(dim): the
    # map is smooth away from z0 and finite differences are meaningful.
    return rng.uniform(-0.5, 0.5, dim)


def sample_away_from_centre(rng, n, dim):
    g = rng.standard_normal((n, dim))
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    radius = 0.6 * np.sqrt(dim) + np.abs(rng.standard_normal((n, 1)))
    return g / norms * radius


def make_radial(dim, dtype, rng):
    """Random parameters of either sign of beta (softplus(-2) < 0.5 <= alpha)."""
    flow = pf.Radial(dim, dtype=dtype, rng=rng)
    params = np.concatenate([[rng.uniform(-0.7, 0.7), rng.uniform(-2.0, 2.0)], _z0(rng, dim)])
    flow.set_params(params)
    return flow


def make_radial_contracting(dim, dtype, rng):
    """beta = -(0.6..0.9) alpha: strong contraction towards z0."""
    flow = pf.Radial(dim, dtype=dtype, rng=rng)
    log_alpha = rng.uniform(-0.5, 0.5)
    s = np.exp(log_alpha) * rng.uniform(0.1, 0.4)   # alpha + beta
    beta_raw = np.log(np.expm1(s))
    flow.set_params(np.concatenate([[log_alpha, beta_raw], _z0(rng, dim)]))
    return flow


CASES = [
    Case("radial", make_radial, radial_reference, dims=DIMS,
         sample_z=sample_away_from_centre),
    Case("radial_contracting", make_radial_contracting, radial_reference, dims=DIMS,
         sample_z=sample_away_from_centre),
]
