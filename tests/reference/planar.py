import numpy as np

import pyflowcore as pf
from tests.reference import Case


def planar_uhat(u, w):
    """``uhat = u + (m(w.u) - w.u) w / |w|^2``, ``m(a) = -1 + softplus(a)`` (SPEC §3)."""
    wu = w @ u
    ww = w @ w
    if ww == 0:
        return u.copy()
    m = -1.0 + np.logaddexp(0.0, wu)
    return u + (m - wu) * w / ww


def planar_reference(params, z):
    dim = z.shape[1]
    u, w, b = params[:dim], params[dim:2 * dim], params[2 * dim]
    uhat = planar_uhat(u, w)
    h = np.tanh(z @ w + b)
    x = z + np.outer(h, uhat)
    psi = (1.0 - h ** 2)[:, None] * w
    return x, np.log(np.abs(1.0 + psi @ uhat))


def make_planar(dim, dtype, rng):
    flow = pf.Planar(dim, dtype=dtype, rng=rng)
    # Non-trivial: u of either sign relative to w (w.u < 0 exercises the
    # correction of uhat), b off zero so tanh is evaluated off-centre.
    u = rng.standard_normal(dim)
    w = rng.standard_normal(dim) / np.sqrt(dim)
    b = rng.uniform(-1.0, 1.0)
    flow.set_params(np.concatenate([u, w, [b]]))
    return flow


# A lone planar layer's row widths: 8 and 16, one 64-byte vector of doubles or
# floats (updated in a register); 19, vectors of eight columns and the rest one by one.
CASES = [Case("planar", make_planar, planar_reference, dims=(1, 2, 5, 8, 16, 19))]
