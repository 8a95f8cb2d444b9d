"""The pytest-benchmark cases' view of the peers in ``pyflowcore._peers``.

The math lives once, in ``pyflowcore._peers``; these adapters keep the
``(u, w, b)``-per-layer call style of ``test_bench_flows.py``.
"""

import numpy as np

from pyflowcore import _peers


def _flat(layers):
    return np.concatenate([np.concatenate([u, w, np.atleast_1d(b)]) for u, w, b in layers])


def numpy_planar_chain_forward(layers, z):
    """Vectorised NumPy forward + log-det of a chain of planar layers.

    ``layers`` is a list of (u, w, b) triples.
    """
    theta = _flat(layers).astype(z.dtype, copy=False)
    return _peers.planar_chain(_peers.numpy_ops(), theta, z, z.shape[1], len(layers))


def torch_planar_chain(torch, layers, dtype):
    """A closure computing forward + log-det of a planar chain, and its leaf
    parameters (one flat tensor in pyflowcore's layout) for autograd timings."""
    theta = torch.tensor(_flat(layers), dtype=dtype, requires_grad=True)
    ops = _peers.torch_ops(torch)
    dim = len(layers[0][0])

    def forward(z):
        return _peers.planar_chain(ops, theta, z, dim, len(layers))

    return forward, [theta]
