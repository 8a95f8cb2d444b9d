"""A chain stacking every chainable flow of the other reference modules."""

import importlib
import pkgutil

import numpy as np

import pyflowcore as pf
import tests.reference as ref
from tests.reference import Case


def _layer_cases(dim):
    cases = []
    for info in sorted(pkgutil.iter_modules(ref.__path__), key=lambda m: m.name):
        if info.name == "chain":
            continue
        module = importlib.import_module(f"{ref.__name__}.{info.name}")
        cases.extend(c for c in getattr(module, "CASES", []) if c.chainable and dim in c.dims)
    return cases


def make_chain(dim, dtype, rng):
    # Two rounds, so a layer also sees the output of every other kind.
    return pf.Chain([c.make(dim, dtype, rng) for _ in range(2) for c in _layer_cases(dim)])


def chain_reference(params, z):
    dim = z.shape[1]
    x, log_det = z, 0.0
    start = 0
    for c in [c for _ in range(2) for c in _layer_cases(dim)]:
        # The layer's parameter count comes from a throwaway instance.
        size = c.make(dim, "float64", np.random.default_rng(0)).num_params
        x, ld = c.reference(params[start:start + size], x)
        log_det = log_det + ld
        start += size
    return x, log_det


CASES = [Case("chain", make_chain, chain_reference, dims=(2, 5))]
