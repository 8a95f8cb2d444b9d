"""Checks of the GPU engine that need neither CuPy nor a GPU."""

import ctypes
import re
import types
from pathlib import Path

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore.cuda import _module
from pyflowcore.cuda._module import LAYER_KINDS

CSRC = _module.csrc_dir()


def test_layer_codes_match_rowwise_header():
    text = (CSRC / "rowwise.h").read_text()
    enum = re.search(r"enum\s+LayerKind\s*\{([^}]*)\}", text).group(1)
    codes = {name.strip().lower().removeprefix("kind_"): int(value)
             for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", enum)}
    assert codes == LAYER_KINDS
    assert {f._row_kind for f in (pf.ElementwiseScale(2), pf.Shift(2), pf.Planar(2, rng=0),
                                  pf.Radial(2, rng=0))} == set(LAYER_KINDS)


@pytest.mark.parametrize("source", sorted(_module.KERNELS))
def test_every_kernel_the_drivers_load_is_defined_and_instantiated(source):
    text = (CSRC / f"{source}.cu").read_text()
    for name in _module.KERNELS[source]:
        assert re.search(rf"__global__ void {name}\(", text), name
        # PFC_INSTANTIATE_ALL (CI's nvcc build) must instantiate it for both types.
        assert re.search(rf"pfc::{name}<T>\(", text), name
    for name in _module.PLAIN.get(source, ()):
        assert re.search(rf"__global__ void {name}\(", text), name


def nvrtc():
    """NVRTC from the nvidia-cuda-nvrtc wheel (CI installs it), or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for lib in sorted(Path(root).glob("*/lib/libnvrtc.so*")):
            return ctypes.CDLL(str(lib))
    return None


@pytest.mark.parametrize("source", sorted(_module.KERNELS))
def test_sources_compile_with_nvrtc_as_the_drivers_ask(source):
    # NVRTC, CuPy's compiler, runs without a GPU: the drivers' own code,
    # options and name expressions must compile without a warning, and every
    # kernel the drivers fetch must have a symbol.
    lib = nvrtc()
    if lib is None:
        pytest.skip("needs NVRTC (pip install nvidia-cuda-nvrtc)")
    code, options, names = _module.module_source(source)
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), f"{source}.cu".encode(),
                                  0, None, None) == 0
    try:
        for name in names:
            assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
        opts = [o.encode() for o in (*options, "--gpu-architecture=compute_90")]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0 and not log.value.strip(), log.value.decode()
        for name in names:
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)) == 0
            assert lowered.value.startswith(b"_Z"), name
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_every_cuda_source_is_loaded_by_a_driver():
    assert {p.stem for p in CSRC.glob("*.cu")} == set(_module.KERNELS)


def test_package_works_without_a_gpu():
    if pf.cuda_available():
        pytest.skip("a GPU (or the CUDA emulator) is present")
    flow = pf.Planar(3, rng=0)
    with pytest.raises(RuntimeError, match="cuda"):
        flow.to("cuda")
    assert flow.device == "cpu" and isinstance(flow.params, np.ndarray)
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        flow.to("tpu")
    assert flow.to("cpu") is flow


def test_gpu_array_given_to_a_cpu_flow_names_the_device():
    # A stand-in of a CuPy array (recognised by its module, without importing CuPy).
    fake = types.new_class("ndarray")
    fake.__module__ = "cupy._core.core"
    arr = fake()
    flow = pf.Shift(2)
    z = np.zeros((3, 2))
    for call in (lambda: flow.forward(arr), lambda: flow.backward(z, arr, None),
                 lambda: flow.backward(z, None, arr), lambda: flow.set_params(arr),
                 lambda: flow.forward(z, out=(arr, np.empty(3)))):
        with pytest.raises(TypeError, match="flow is on device 'cpu'"):
            call()


@pytest.mark.parametrize("model", ["planar_chain", "realnvp_8x2x64"])
def test_gpu_bench_torch_peer_is_pyflowcores_backward(model):
    # The GPU benchmark's PyTorch peer, run here on the CPU: the same
    # gradients as pyflowcore's backward with all-ones cotangents, which the
    # benchmark then times it against.
    torch = pytest.importorskip("torch")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"
    if not path.exists():
        pytest.skip("needs a source checkout (benchmarks/)")
    gpu_bench = types.ModuleType("gpu_bench")
    exec(compile(path.read_text(), str(path), "exec"), gpu_bench.__dict__)
    spec = {"planar_chain": ("planar", 16), "realnvp_8x2x64": ("realnvp", 8, 2, 64)}[model]
    flow = getattr(gpu_bench, model)(16)("float64")
    z = np.random.default_rng(3).standard_normal((40, 16))
    run = gpu_bench.torch_vjp(torch, spec, 16, np.array(flow.params), torch.as_tensor(z))
    peer = [t.numpy() for t in run()]
    ours = flow.backward(z, np.ones_like(z), np.ones(40))
    assert gpu_bench.rel_err(ours, peer) < 1e-12
    # ... and the check would see a wrong gradient.
    assert gpu_bench.rel_err(ours, [peer[0], peer[1] * 1.001]) > 1e-4
