"""The same math as pyflowcore, written with array libraries, for comparison.

Each implementation follows SPEC.md's formulas directly; the benchmarks check
that it agrees with pyflowcore before timing it.
"""

import numpy as np


def planar_u_hat(u, w):
    wu = w @ u
    m = -1.0 + np.logaddexp(0.0, wu)
    ww = w @ w
    return u + ((m - wu) / ww) * w if ww > 0 else u


def numpy_planar_chain_forward(layers, z):
    """Vectorised NumPy forward + log-det of a chain of planar layers.

    ``layers`` is a list of (u, w, b) triples.
    """
    x = z
    log_det = np.zeros(z.shape[0], dtype=z.dtype)
    for u, w, b in layers:
        u_hat = planar_u_hat(u, w)
        h = np.tanh(x @ w + b)
        x = x + np.outer(h, u_hat)
        log_det += np.log(np.abs(1.0 + (1.0 - h * h) * (w @ u_hat)))
    return x, log_det


def torch_planar_chain(torch, layers, dtype):
    """A closure computing forward + log-det of a planar chain with torch
    tensors as leaf parameters (for autograd timings)."""
    params = [tuple(torch.tensor(p, dtype=dtype, requires_grad=True) for p in (u, w, np.atleast_1d(b)))
              for u, w, b in layers]

    def forward(z):
        x = z
        log_det = torch.zeros(z.shape[0], dtype=z.dtype)
        for u, w, b in params:
            wu = w @ u
            u_hat = u + (torch.nn.functional.softplus(wu) - 1.0 - wu) * w / (w @ w)
            h = torch.tanh(x @ w + b)
            x = x + h[:, None] * u_hat
            log_det = log_det + torch.log(torch.abs(1.0 + (1.0 - h * h) * (w @ u_hat)))
        return x, log_det

    return forward, [p for triple in params for p in triple]
