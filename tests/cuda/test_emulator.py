"""The CPU emulator of the CUDA execution model (tests/cuda/emulator) catches
what it claims to: these kernels are wrong on purpose, or check the emulator's
barriers and shuffles against plain sums.  They run only under the emulator
(``PYFLOWCORE_CUDA_EMULATOR=1`` without CuPy)."""

import numpy as np
import pytest

from pyflowcore.cuda import csrc_dir

cp = pytest.importorskip("cupy", reason="runs under the CUDA emulator")
if not cp.__version__.endswith("emulator"):
    pytest.skip("checks the CUDA emulator, not CuPy", allow_module_level=True)

SOURCE = r"""
#include "pfc_cuda.cuh"
namespace pfc {
/* out[b] = the sum of x over the threads of block b: shuffles, then shared memory. */
template <typename T>
__global__ void block_sum(const T* x, long long n, T* out) {
    T* sm = cuda::shared_array<T>();
    T v = T(0);
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        v += x[i];
    }
    v = cuda::warp_sum(v);
    if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T s = T(0);
        for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) s += sm[w];
        out[blockIdx.x] = s;
    }
}
/* Each thread's value goes through shared memory to its mirror thread. */
__global__ void mirror(const int* x, int* out) {
    int* sm = cuda::shared_array<int>();
    sm[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = sm[blockDim.x - 1 - threadIdx.x];
}
/* A race: the neighbour's value is read with no barrier after its write. */
__global__ void racy_neighbour(const double* x, double* out) {
    double* sm = cuda::shared_array<double>();
    sm[threadIdx.x] = x[threadIdx.x];
    out[threadIdx.x] = threadIdx.x > 0 ? sm[threadIdx.x - 1] : 0.0;
}
__global__ void divergent_barrier(int* out) {
    if (threadIdx.x < 5) __syncthreads();
    out[threadIdx.x] = 1;
}
__global__ void divergent_shuffle(double* out) {
    double v = 1.0;
    if (threadIdx.x % 32 < 16) v = cuda::warp_sum(v);
    out[threadIdx.x] = v;
}
__global__ void past_shared_memory(int* out, int n) {
    cuda::shared_array<int>()[n + threadIdx.x] = 1;
    out[threadIdx.x] = 0;
}
__global__ void unwritten_shared_memory(double* out) {
    out[threadIdx.x] = cuda::shared_array<double>()[threadIdx.x];
}
}
"""
NAMES = ["pfc::block_sum<float>", "pfc::block_sum<double>", "pfc::mirror", "pfc::racy_neighbour",
         "pfc::divergent_barrier", "pfc::divergent_shuffle", "pfc::past_shared_memory",
         "pfc::unwritten_shared_memory"]


@pytest.fixture(scope="module")
def module():
    return cp.RawModule(code=SOURCE, options=("-std=c++17", f"-I{csrc_dir()}"),
                        name_expressions=NAMES)


@pytest.mark.parametrize("dtype,ctype", [(np.float32, "float"), (np.float64, "double")])
@pytest.mark.parametrize("grid,block", [(1, 32), (3, 128), (5, 64)])
def test_block_sums_by_shuffles_and_barriers(module, dtype, ctype, grid, block):
    x = np.random.default_rng(0).integers(-50, 50, 1001).astype(dtype)
    out = cp.zeros(grid, dtype=dtype)
    module.get_function(f"pfc::block_sum<{ctype}>")(
        (grid,), (block,), (cp.asarray(x), np.int64(x.size), out), shared_mem=block // 32 * x.itemsize)
    idx = np.arange(x.size) // block % grid  # the block that reads each entry
    np.testing.assert_array_equal(cp.asnumpy(out), [x[idx == b].sum() for b in range(grid)])


def test_shared_memory_is_shared_within_a_block(module):
    x = cp.asarray(np.arange(96, dtype=np.int32))
    out = cp.zeros(96, dtype=np.int32)
    module.get_function("pfc::mirror")((1,), (96,), (x, out), shared_mem=96 * 4)
    np.testing.assert_array_equal(cp.asnumpy(out), np.arange(96)[::-1])


def test_a_race_changes_the_result_between_launches(module):
    # Threads run in increasing order in one launch and decreasing in the
    # next: the racy kernel reads its neighbour's value in one, and the NaN of
    # unwritten shared memory in the other.
    x = cp.asarray(np.arange(64.0))
    outs = []
    for _ in range(2):
        out = cp.zeros(64)
        module.get_function("pfc::racy_neighbour")((1,), (64,), (x, out), shared_mem=64 * 8)
        outs.append(cp.asnumpy(out)[1:])
    assert sum(np.isnan(o).all() for o in outs) == 1
    assert any(np.array_equal(o, np.arange(63.0)) for o in outs)


@pytest.mark.parametrize("name,args,smem,message", [
    ("pfc::divergent_barrier", lambda: (cp.zeros(64, dtype=np.int32),), 0,
     "barrier not reached by every thread"),
    ("pfc::divergent_shuffle", lambda: (cp.zeros(64),), 0, "barrier not reached by every thread"),
    ("pfc::past_shared_memory", lambda: (cp.zeros(64, dtype=np.int32), np.int32(100)), 128,
     "wrote shared memory at byte 400, past the launch's 128"),
    ("pfc::unwritten_shared_memory", lambda: (cp.zeros(32),), 64 * 1024, "over the 48 KiB limit"),
    ("pfc::block_sum<float>", lambda: (cp.zeros(4), np.int64(4), cp.zeros(1)), 64,
     "argument 0: the kernel takes a pointer to values of 4 bytes"),
    ("pfc::block_sum<double>", lambda: (cp.zeros(4), np.int32(4), cp.zeros(1)), 64,
     "argument 1: the kernel takes a scalar of 8 bytes, the launch passed a scalar of 4"),
    ("pfc::block_sum<double>", lambda: (cp.zeros(4), np.int64(4)), 64, "takes 3 arguments"),
])
def test_launch_errors_are_reported(module, name, args, smem, message):
    with pytest.raises(RuntimeError, match=message):
        module.get_function(name)((1,), (64,), args(), shared_mem=smem)


def test_unwritten_memory_reads_as_nan(module):
    out = cp.zeros(32)
    module.get_function("pfc::unwritten_shared_memory")((1,), (32,), (out,), shared_mem=256)
    assert np.isnan(cp.asnumpy(out)).all()
    assert np.isnan(cp.asnumpy(cp.empty(5))).all()


def test_device_arrays_are_not_numpy_arrays():
    a = cp.asarray(np.arange(6.0))
    assert not isinstance(a, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(6)
    assert isinstance(a.sum(), cp.ndarray) and float(a.sum()) == 15.0
    assert cp.asnumpy(~(a > 2)).tolist() == [True, True, True, False, False, False]
    b = a
    b += 1
    assert b is a and float(a[0]) == 1.0 and float((-a)[0]) == -1.0
    assert cp.may_share_memory(a, a[2:]) and not cp.may_share_memory(a, a.copy())


def test_gpu_bench_runs_end_to_end(tmp_path):
    # The device session's benchmark script, on small batches: it must not
    # spend a device run failing.
    import types
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"
    if not path.exists():
        pytest.skip("needs a source checkout (benchmarks/)")
    gpu_bench = types.ModuleType("gpu_bench")
    exec(compile(path.read_text(), str(path), "exec"), gpu_bench.__dict__)
    out = tmp_path / "gpu.md"
    gpu_bench.main([str(out), "--n", "3000", "--n-realnvp", "700", "--repeat", "1"])
    text = out.read_text()
    assert "device: pyflowcore CUDA emulator" in text
    for flow in gpu_bench.make_flows(16, "float64"):
        for dtype in ("float32", "float64"):
            for method in ("forward", "inverse", "backward"):
                assert f"| {flow} | {dtype} | {method} |" in text
    assert text.count("| pyflowcore (CUDA kernels) |") == 4
