import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

# PYFLOWCORE_CUDA_EMULATOR=1 runs the GPU tests on the CPU: where CuPy is
# absent, tests/cuda/emulator/cupy stands in for it and executes the CUDA
# sources of csrc/ under CUDA's execution model (see its docstring).
if os.environ.get("PYFLOWCORE_CUDA_EMULATOR") == "1" and importlib.util.find_spec("cupy") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda" / "emulator"))


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
