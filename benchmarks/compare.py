"""pyflowcore against NumPy, PyTorch eager, torch.compile and JAX, side by side.

Usage::

    python benchmarks/compare.py [--quick] [--dtype float64|float32|both] [--out FILE.md]

A thin wrapper around ``pyflowcore.bench`` (whose docstring describes the
workloads, the agreement check and the timing), full-size by default; the
installed package runs the quick version as ``python -m pyflowcore.bench``.
"""

import os
import sys

# Run against the source tree this script sits in, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyflowcore.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/compare.py", quick_default=False))
