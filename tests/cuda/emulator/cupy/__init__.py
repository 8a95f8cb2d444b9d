"""A stand-in for CuPy that runs pyflowcore's GPU engine on the CPU, for the tests.

It is imported as ``cupy`` only when the tests are run with
``PYFLOWCORE_CUDA_EMULATOR=1`` and the real CuPy is absent (see
``tests/conftest.py``).  Two parts:

- ``ndarray``: device arrays over NumPy buffers that behave as CuPy's do
  where the difference matters to a caller: they are not NumPy arrays
  (``isinstance(a, numpy.ndarray)`` is false), implicit conversion to NumPy
  raises ``TypeError``, mixing them with NumPy arrays raises ``TypeError``,
  reductions return 0-d arrays, and ``empty`` returns memory filled with NaN
  bytes (0xFF) so that reading what no kernel wrote shows up;
- ``RawModule``: compiles the CUDA source with g++ and ``cuda_emu.h`` (next to
  this package), which runs each kernel under CUDA's execution model -- block
  barriers, warp shuffles, shared memory -- and checks the launch: geometry,
  shared-memory size, and each argument's type against the kernel signature.
"""

import ctypes
import functools
import hashlib
import numbers
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy

__version__ = "0.0-emulator"

_HERE = Path(__file__).resolve().parent
_EMU_HEADER = _HERE.parent / "cuda_emu.h"

# NumPy names passed through unchanged (dtypes, constants).
for _name in ("float16", "float32", "float64", "complex64", "complex128", "int8", "int16",
              "int32", "int64", "uint8", "uint32", "uint64", "intc", "bool_", "dtype",
              "nan", "inf", "pi", "newaxis", "finfo", "iinfo", "result_type"):
    globals()[_name] = getattr(numpy, _name)


def _poisoned(shape, dtype, order="C"):
    a = numpy.empty(shape, dtype=dtype, order=order)
    a.reshape(-1, order="A").view(numpy.uint8).fill(0xFF)
    return a


def _to_host(x, name):
    """The NumPy buffer of a device array; what CuPy refuses, refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, numpy.ndarray) and x.ndim > 0:
        raise TypeError(f"Unsupported type {type(x)} (a NumPy array given to cupy.{name})")
    return x


def _unwrap(x, name):
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, name) for v in x)
    return _to_host(x, name)


def _index(key):
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


def _wrap(x):
    if isinstance(x, numpy.ndarray):
        return ndarray._of(x)
    if isinstance(x, numpy.generic):
        return ndarray._of(numpy.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _device_function(fn, name):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        args = _unwrap(args, name)
        kwargs = {k: _unwrap(v, name) for k, v in kwargs.items()}
        with numpy.errstate(all="ignore"):  # CuPy does not warn on NaN or overflow
            return _wrap(fn(*args, **kwargs))
    return call


class ndarray:
    """A device array: a NumPy buffer behind CuPy's interface."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        self._a = _poisoned(shape, dtype, order)

    @classmethod
    def _of(cls, a):
        arr = object.__new__(cls)
        arr._a = a
        return arr

    # -- CuPy's explicit transfers ---------------------------------------------
    def get(self):
        return self._a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # NumPy functions and ufuncs on device arrays run "on the device" (CuPy
    # implements both protocols), with the same refusal of NumPy arrays.
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _device_function(getattr(ufunc, method), ufunc.__name__)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _device_function(func, func.__name__)(*args, **kwargs)

    # -- attributes and methods: NumPy's, on the buffer --------------------------
    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ and the like: not a NumPy array
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return _device_function(value, f"ndarray.{name}")
        return _wrap(value)

    def __setattr__(self, name, value):
        if name == "_a":
            object.__setattr__(self, name, value)
        elif name == "shape":
            self._a.shape = value
        else:
            raise AttributeError(f"cupy.ndarray attribute {name!r} is not writable here")

    # Indices and assigned values may be NumPy arrays (CuPy copies them over).
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return "emulated " + repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __copy__(self):
        return ndarray._of(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._of(self._a.copy())

    def __reduce__(self):  # CuPy arrays pickle through the host
        return asarray, (self._a.copy(),)


def _operator(name, in_place=False):
    def op(self, *args):
        with numpy.errstate(all="ignore"):
            result = getattr(self._a, name)(*_unwrap(args, f"ndarray.{name}"))
        if result is NotImplemented or not in_place:
            return _wrap(result)
        return self
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _operator(f"__i{_name}__", in_place=True))
for _name in ("__neg__", "__pos__", "__abs__", "__invert__", "__lt__", "__le__", "__gt__",
              "__ge__", "__eq__", "__ne__"):
    setattr(ndarray, _name, _operator(_name))
ndarray.__hash__ = None


# -- array creation and transfers -----------------------------------------------

def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        if (dtype is None or numpy.dtype(dtype) == a.dtype) and order is None:
            return a
        return ndarray._of(numpy.asarray(a._a, dtype=dtype, order=order).copy())
    return ndarray._of(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


array = asarray


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else numpy.asarray(a)


def empty(shape, dtype=float, order="C"):
    return ndarray._of(_poisoned(shape, dtype, order))


def empty_like(a, dtype=None, order="K", shape=None):
    a = _to_host(a, "empty_like")
    return ndarray._of(_poisoned(a.shape if shape is None else shape,
                                 a.dtype if dtype is None else dtype))


class _MemoryPool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0


def get_default_memory_pool():
    return _MemoryPool()


def __getattr__(name):
    """Everything else: NumPy's function of that name, on device arrays."""
    fn = getattr(numpy, name, None)
    if fn is None or not callable(fn) or name.startswith("_"):
        raise AttributeError(f"module 'cupy' (emulator) has no attribute {name!r}")
    return _device_function(fn, name)


# -- kernels ----------------------------------------------------------------------

_compile_lock = threading.Lock()


def _cache_dir():
    path = Path(os.environ.get("PYFLOWCORE_CUDA_EMULATOR_CACHE",
                               Path(tempfile.gettempdir()) / "pyflowcore-cuda-emulator"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class RawModule:
    """``cupy.RawModule(code=..., options=..., name_expressions=...)``, compiled by g++."""

    def __init__(self, code, options=(), name_expressions=()):
        self._code = code
        self._includes = [o[2:] for o in options if o.startswith("-I")]
        self._names = list(name_expressions)
        self._lib = None

    def _source(self):
        table = "".join(f"    PFC_EMU_KERNEL({n})\n" for n in self._names)
        return (f'#include "{_EMU_HEADER}"\n{self._code}\n'
                f"static const pfc_emu::Kernel pfc_emu_kernels[] = {{\n{table}}};\n"
                "PFC_EMU_LAUNCHER\n")

    def compile(self):
        if self._lib is not None:
            return
        source = self._source()
        # e.g. "-fsanitize=address" (then run Python with libasan preloaded)
        extra = os.environ.get("PYFLOWCORE_CUDA_EMULATOR_CXXFLAGS", "").split()
        digest = hashlib.sha256("\0".join([source, *extra]).encode())
        for d in [str(_EMU_HEADER.parent)] + self._includes:
            for p in sorted(Path(d).glob("*.h")) + sorted(Path(d).glob("*.cuh")):
                digest.update(p.name.encode() + p.read_bytes())
        stem = _cache_dir() / digest.hexdigest()[:24]
        lib = stem.with_suffix(".so")
        with _compile_lock:
            if not lib.exists():
                # Per-process names, then an atomic rename: processes that
                # compile the same module at once do not trip over each other.
                cpp = stem.with_suffix(f".{os.getpid()}.cpp")
                cpp.write_text(source)
                tmp = stem.with_suffix(f".{os.getpid()}.so")
                cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-O1", "-shared", "-fPIC",
                       "-fno-strict-aliasing", "-U_FORTIFY_SOURCE", *extra,
                       *(f"-I{d}" for d in self._includes),
                       "-o", str(tmp), str(cpp)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    raise RuntimeError("emulator: compiling the CUDA source failed:\n" + run.stderr)
                os.replace(tmp, lib)
        self._lib = ctypes.CDLL(str(lib))
        self._lib.pfc_emu_launch.restype = ctypes.c_int

    def get_function(self, name):
        if name not in self._names:
            raise KeyError(f"{name} is not among the module's name expressions")
        self.compile()
        return RawKernel(self._lib, name)


_SCALAR_KIND = {"i": "i", "u": "i", "b": "i", "f": "f"}


def _argument(a):
    """(ctypes holder, kind, size) of one kernel argument, as CuPy passes it:
    device arrays by pointer, NumPy scalars with their type, Python ints as
    int64 and floats as double."""
    if isinstance(a, ndarray):
        # pointers: the kind of the values pointed to, upper case
        kind = _SCALAR_KIND.get(a.dtype.kind, "?").upper()
        return ctypes.c_void_p(a._a.ctypes.data), kind, a.dtype.itemsize
    if isinstance(a, numpy.ndarray):
        raise TypeError("emulator: a NumPy array passed to a kernel (device arrays only)")
    if isinstance(a, bool):
        a = numpy.bool_(a)
    elif isinstance(a, numbers.Integral) and not isinstance(a, numpy.generic):
        a = numpy.int64(a)
    elif isinstance(a, float):
        a = numpy.float64(a)
    if not isinstance(a, numpy.generic) or a.dtype.kind not in _SCALAR_KIND:
        raise TypeError(f"emulator: unsupported kernel argument {a!r}")
    buf = ctypes.create_string_buffer(a.tobytes(), a.dtype.itemsize)
    return buf, _SCALAR_KIND[a.dtype.kind], a.dtype.itemsize


def _dims(v):
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if not 1 <= len(v) <= 3:
        raise ValueError("grid and block take one to three dimensions")
    return (ctypes.c_uint * 3)(*(tuple(int(d) for d in v) + (1, 1))[:3])


class RawKernel:
    def __init__(self, lib, name):
        self._lib, self.name = lib, name

    def __call__(self, grid, block, args, shared_mem=0):
        held = [_argument(a) for a in args]
        n = len(held)
        # As cuLaunchKernel takes them: the address of each argument's value.
        ptrs = (ctypes.c_void_p * max(n, 1))(*(ctypes.addressof(h) for h, _, _ in held))
        kinds = "".join(k for _, k, _ in held).encode() + b"\0"
        sizes = (ctypes.c_int * max(n, 1))(*(s for _, _, s in held))
        err = ctypes.create_string_buffer(512)
        rc = self._lib.pfc_emu_launch(self.name.encode(), _dims(grid), _dims(block),
                                      ctypes.c_ulonglong(int(shared_mem)), n, ptrs, kinds, sizes,
                                      err, len(err))
        if rc:
            raise RuntimeError("emulator: " + err.value.decode())


from cupy import cuda, random, testing  # noqa: E402,F401
