"""Loading the CUDA sources: one CuPy ``RawModule`` per source file and device.

The sources are ``csrc/*.cu``; they ``#include`` the same per-row headers as
the Cython kernels.  An installed package carries them as
``pyflowcore/_csrc`` (see ``BuildPyWithCsrc`` in ``setup.py``); a source
checkout has them in the repository's ``csrc/``.  Each module is compiled by
NVRTC on first use, for ``float`` and ``double`` at once (``name_expressions``),
and kept for the life of the process (CuPy also caches the binary on disk).
"""

import threading
from pathlib import Path

import numpy as np

_PACKAGE = Path(__file__).resolve().parent.parent
_CANDIDATES = (_PACKAGE / "_csrc", _PACKAGE.parent / "csrc")

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# name of the source (without .cu) -> the kernel templates it defines
KERNELS = {
    "chain": ("chain_prepare", "chain_transform", "chain_vjp", "chain_reduce", "chain_finish"),
    "cholesky": ("cholesky_transform", "cholesky_vjp"),
    "realnvp": ("realnvp_gather", "realnvp_bias_tanh", "realnvp_tanh_grad", "realnvp_coupling",
                "realnvp_coupling_vjp", "realnvp_scatter_add"),
}

# ... and its kernels that are not templates
PLAIN = {"chain": ("chain_plan",)}

# ``LayerKind`` of csrc/rowwise.h, by ``_row_kind`` (tests/cuda/test_sources.py
# checks the values against the header).
LAYER_KINDS = {"scale": 0, "shift": 1, "planar": 2, "radial": 3}

_lock = threading.Lock()
_modules = {}      # (source, device id) -> cupy.RawModule
_functions = {}    # (source, kernel, dtype, device id) -> cupy.RawKernel
_properties = {}   # device id -> {"sm_count": ...}


def csrc_dir():
    """The directory holding the CUDA sources and headers."""
    for path in _CANDIDATES:
        if (path / "pfc_config.h").is_file():
            return path
    raise RuntimeError("pyflowcore: the CUDA sources were not found (looked in "
                       + ", ".join(str(p) for p in _CANDIDATES) + "); reinstall the package")


def module_source(source):
    """What NVRTC compiles for ``csrc/source.cu``: the code, the compiler
    options and the name expressions of its kernels (both types of each
    template)."""
    root = csrc_dir()
    code = (root / f"{source}.cu").read_text()
    names = [f"pfc::{k}<{t}>" for k in KERNELS[source] for t in ("float", "double")]
    names += [f"pfc::{k}" for k in PLAIN.get(source, ())]
    return code, ("-std=c++17", f"-I{root}"), names


def _module(source, device_id):
    import cupy
    key = (source, device_id)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                code, options, names = module_source(source)
                mod = cupy.RawModule(code=code, options=options, name_expressions=names)
                mod.compile()
                _modules[key] = mod
    return mod


def kernel(source, name, dtype=None):
    """The compiled kernel ``pfc::name<T>`` of ``csrc/source.cu`` for ``dtype``
    on the current device; with ``dtype=None``, the plain kernel ``pfc::name``."""
    import cupy
    device_id = cupy.cuda.runtime.getDevice()
    key = (source, name, dtype, device_id)
    fn = _functions.get(key)
    if fn is None:
        symbol = f"pfc::{name}" if dtype is None else f"pfc::{name}<{_CTYPE[np.dtype(dtype)]}>"
        fn = _module(source, device_id).get_function(symbol)
        _functions[key] = fn
    return fn


def sm_count():
    """Number of streaming multiprocessors of the current device."""
    import cupy
    device_id = cupy.cuda.runtime.getDevice()
    props = _properties.get(device_id)
    if props is None:
        attrs = cupy.cuda.Device(device_id).attributes
        props = {"sm_count": int(attrs["MultiProcessorCount"])}
        _properties[device_id] = props
    return props["sm_count"]
