"""``cupy.random`` of the emulator: NumPy's generators, returning device arrays."""

import numpy

import cupy


class Generator:
    def __init__(self, seed=None):
        self._rng = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        method = getattr(self._rng, name)

        def call(*args, **kwargs):
            return cupy.asarray(method(*args, **kwargs))
        return call


def default_rng(seed=None):
    return Generator(seed)
