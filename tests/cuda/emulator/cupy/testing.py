"""``cupy.testing`` of the emulator: NumPy's assertions on device or host arrays."""

import numpy

import cupy


def _host(a):
    return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else a


def assert_array_equal(actual, desired, *args, **kwargs):
    numpy.testing.assert_array_equal(_host(actual), _host(desired), *args, **kwargs)


def assert_allclose(actual, desired, *args, **kwargs):
    numpy.testing.assert_allclose(_host(actual), _host(desired), *args, **kwargs)
