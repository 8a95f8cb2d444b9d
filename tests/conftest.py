import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def pytest_collection_modifyitems(config, items):
    try:
        import pyflowcore
        has_gpu = pyflowcore.cuda_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs CuPy and an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
