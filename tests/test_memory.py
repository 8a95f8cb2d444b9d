import numpy as np
import pytest

from pyflowcore._memory import CACHE_LINE, aligned_empty


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [0, 1, 7, 1000])
def test_aligned_empty_is_a_writable_cache_line_aligned_vector(size, dtype):
    for _ in range(5):   # several allocations: some would be misaligned by chance
        a = aligned_empty(size, dtype)
        assert a.shape == (size,) and a.dtype == np.dtype(dtype)
        assert size == 0 or a.ctypes.data % CACHE_LINE == 0
        assert a.flags.c_contiguous and a.flags.writeable
        a[:] = np.arange(size)
        np.testing.assert_array_equal(a, np.arange(size))
