"""Plain-NumPy reference implementations of every flow, written from SPEC.md.

Each module of this package defines ``CASES``, a list of :class:`Case`.  The
generic tests in ``tests/flows/test_common.py`` run every check on every case,
so a new flow gets the whole battery by adding one module here.
"""

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Case:
    """One flow configuration under test.

    make(dim, dtype, rng) -> Flow
        Builds the flow with *random, non-trivial* parameters (not the initial
        values, which are often the identity).
    reference(params, z) -> (x, log_det)
        The same map in plain float64 NumPy, from the formulas in SPEC.md.
    dims
        Dimensions to test.
    sample_z(rng, n, dim) -> z
        Base points in the region where the flow is well-conditioned.
    chainable
        Whether the flow maps all of R^dim onto R^dim, so that the generic
        chain case may stack it (CholeskyProduct may only come last).
    """

    name: str
    make: Callable
    reference: Callable
    dims: tuple = (1, 2, 5)
    sample_z: Callable = field(default=lambda rng, n, dim: rng.standard_normal((n, dim)))
    chainable: bool = True


def all_cases():
    """Every case of every module; ``PYFLOWCORE_TEST_ONLY=planar,chain``
    restricts collection to the named modules while one is being developed."""
    only = {s for s in os.environ.get("PYFLOWCORE_TEST_ONLY", "").split(",") if s}
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if only and info.name not in only:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cases.extend(getattr(module, "CASES", []))
    return cases
