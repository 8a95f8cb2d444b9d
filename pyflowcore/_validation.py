"""Input checking shared by every flow.

All user-facing arrays go through these functions before they reach a
kernel.  They convert any real array-like to a C-contiguous array of the
flow's dtype (copying only when needed; kernels never write to their inputs)
and raise ``TypeError`` for a non-real dtype and ``ValueError`` for a wrong
shape, each message naming what was expected.

Each takes the flow's ``device``: on ``"cuda"`` arrays must be CuPy arrays
(and results are allocated with CuPy); an array of the other device raises
``TypeError`` naming the flow's device, so data never crosses the bus
implicitly.  CuPy is imported only for ``"cuda"``.
"""

import numbers
import operator

import numpy as np

_REAL_KINDS = "biuf"  # bool, signed and unsigned integers, floats
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype, which must be float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dt}")
    return dt


def array_module(device):
    """NumPy for ``"cpu"``, CuPy for ``"cuda"``."""
    if device == "cpu":
        return np
    import cupy
    return cupy


def to_host(a):
    """``a`` as a NumPy array: a copy from the GPU for a CuPy array, else ``a``."""
    return a.get() if _is_cupy(a) else a


def _is_cupy(a):
    """Whether ``a`` is a CuPy array, told without importing CuPy."""
    return type(a).__module__.partition(".")[0] == "cupy"


def _wrong_device(name, a, device):
    if device == "cpu":
        return TypeError(f"{name} is a CuPy (GPU) array but the flow is on device 'cpu'; "
                         "pass a NumPy array (cupy.asnumpy) or move the flow with .to('cuda')")
    kind = type(a).__module__.partition(".")[0] + "." + type(a).__name__
    return TypeError(f"{name} must be a CuPy array because the flow is on device 'cuda', got "
                     f"{kind}; move the data with cupy.asarray or the flow with .to('cpu')")


# The kernels index the entries of a row with 32-bit ints (C and CUDA alike).
MAX_DIM = 2 ** 31 - 1


def check_positive_int(value, name, minimum=1):
    """Return ``value`` as an int ``>= minimum``; booleans and floats are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_dim(value, name="dim", minimum=1):
    """``check_positive_int`` for a row's length, which is also at most ``MAX_DIM``."""
    value = check_positive_int(value, name, minimum)
    if value > MAX_DIM:
        raise ValueError(f"{name} must be at most 2**31 - 1 (rows are indexed with 32-bit "
                         f"integers), got {value}")
    return value


def check_finite_float(value, name):
    """Return ``value`` as a finite Python float; a 0-d real array counts as a
    number, booleans and other arrays are refused."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def as_real_array(a, name, dtype, device="cpu"):
    """Any real array-like as a NumPy array (CuPy array on ``"cuda"``); no
    shape or dtype conversion yet, ``dtype`` only names the target in errors."""
    if device != "cpu":
        if not _is_cupy(a) or not hasattr(a, "dtype"):
            raise _wrong_device(name, a, device)
        if a.dtype.kind not in _REAL_KINDS:
            raise TypeError(f"{name} must be a real numeric array (converted to {dtype}); "
                            f"got dtype {a.dtype}")
        return a
    if type(a) is not np.ndarray and _is_cupy(a):
        raise _wrong_device(name, a, device)
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be a real array of numbers; could not convert it: {exc}") from None
    if arr.dtype.kind not in _REAL_KINDS:
        raise TypeError(f"{name} must be a real numeric array (converted to {dtype}); "
                        f"got dtype {arr.dtype}")
    return arr


def as_points(a, name, dim, dtype, device="cpu"):
    """Validate a batch of points.

    Returns ``(arr, single)`` where ``arr`` is a C-contiguous ``(N, dim)``
    array of ``dtype`` and ``single`` tells whether the input was one point of
    shape ``(dim,)``.
    """
    if (type(a) is np.ndarray and device == "cpu" and a.dtype == dtype and a.ndim == 2
            and a.shape[1] == dim and a.flags.c_contiguous):
        return a, False  # the common case, kept cheap for small batches
    arr = as_real_array(a, name, dtype, device)
    xp = array_module(device)
    if arr.ndim == 1 and arr.shape[0] == dim:
        return xp.ascontiguousarray(arr[None, :], dtype=dtype), True
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}) or ({dim},), got shape {arr.shape}")
    return xp.ascontiguousarray(arr, dtype=dtype), False


def as_grad_log_det(g, n, dtype, single, device="cpu"):
    """Validate ``grad_log_det``: a scalar or an ``(N,)`` array (``()`` for one point).

    ``None`` stands for zero.  Returns a C-contiguous ``(N,)`` array.  On
    ``"cuda"`` a Python or NumPy scalar is accepted as well as a CuPy array.
    """
    xp = array_module(device)
    if g is None:
        return xp.zeros(n, dtype=dtype)
    if device != "cpu" and not _is_cupy(g) and not isinstance(g, np.ndarray) and np.ndim(g) == 0:
        arr = xp.asarray(as_real_array(g, "grad_log_det", dtype))
    else:
        arr = as_real_array(g, "grad_log_det", dtype, device)
    if arr.ndim == 0 or (arr.shape == (n,) and not single):
        return xp.ascontiguousarray(xp.broadcast_to(arr, (n,)), dtype=dtype)
    expected = "()" if single else f"({n},) or ()"
    raise ValueError(f"grad_log_det must have shape {expected}, got shape {arr.shape}")


def as_cotangent(g, name, shape, dtype, device="cpu"):
    """Validate a gradient with respect to points; ``None`` stands for zero."""
    xp = array_module(device)
    if g is None:
        return xp.zeros(shape, dtype=dtype)
    arr = as_real_array(g, name, dtype, device)
    if arr.ndim == 1 and shape[0] == 1 and arr.shape == shape[1:]:
        arr = arr[None, :]
    if arr.shape != shape:
        raise ValueError(f"{name} must have the shape of the points, {shape}, got {arr.shape}")
    return xp.ascontiguousarray(arr, dtype=dtype)


def check_out(out, shapes, dtype, device="cpu"):
    """Validate the ``out=`` tuple of preallocated result arrays.

    Each array must be a NumPy array (a CuPy array on ``"cuda"``) of
    ``dtype``, C-contiguous, writable and of the expected shape, and no two
    may overlap; the tuple is returned.  ``None`` allocates fresh arrays.
    """
    xp = array_module(device)
    if out is None:
        return tuple(xp.empty(s, dtype=dtype) for s in shapes)
    if not isinstance(out, tuple) or len(out) != len(shapes):
        raise TypeError(f"out must be a tuple of {len(shapes)} arrays")
    for k, (arr, shape) in enumerate(zip(out, shapes)):
        if not isinstance(arr, xp.ndarray):
            if device != "cpu" or _is_cupy(arr):
                raise _wrong_device(f"out[{k}]", arr, device)
            raise TypeError(f"out[{k}] must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype != dtype or arr.shape != tuple(shape):
            raise ValueError(f"out[{k}] must be a {dtype} array of shape {tuple(shape)}, "
                             f"got {arr.dtype} {arr.shape}")
        # CuPy arrays have no read-only flag.
        if not (arr.flags.c_contiguous and getattr(arr.flags, "writeable", True)):
            raise ValueError(f"out[{k}] must be C-contiguous and writable")
    # Two results cannot both hold their values in shared memory.  The arrays
    # are C-contiguous, so overlapping bounds are shared memory.
    for j in range(len(out)):
        for k in range(j + 1, len(out)):
            if xp.may_share_memory(out[j], out[k]):
                raise ValueError(f"out[{j}] and out[{k}] must not overlap")
    return out


def check_rng(rng):
    """A ``numpy.random.Generator`` from ``None``, an int seed or a Generator."""
    if rng is None or isinstance(rng, np.random.Generator):
        return np.random.default_rng(rng)
    if isinstance(rng, (numbers.Integral, np.random.SeedSequence)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
