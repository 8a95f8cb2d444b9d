"""pyflowcore: normalizing flows with hand-written CPU and GPU kernels.

Every flow maps base points ``z`` to ``x = f(z)`` and offers ``forward``,
``inverse``, ``backward``, ``inverse_backward``, ``log_prob``, ``sample`` and
``sample_and_log_prob`` on NumPy arrays (CuPy arrays after ``.to("cuda")``).
See ``README.md`` and each class's docstring for the formulas.
"""

from pyflowcore._device import cuda_available
from pyflowcore.flows import *  # noqa: F401,F403
from pyflowcore.flows import __all__ as _flow_names
from pyflowcore.flows.cholesky import matrix_to_tril, tril_to_matrix
from pyflowcore.io import load, save
from pyflowcore import datasets
from pyflowcore.fitting import FitResult, fit, fit_variational

__version__ = "0.1.0"
__all__ = [*_flow_names, "cuda_available", "load", "matrix_to_tril", "save", "tril_to_matrix",
           "datasets", "fit", "fit_variational", "FitResult"]
