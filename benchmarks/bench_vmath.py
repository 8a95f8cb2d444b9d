"""ns/element of the C library's scalar exp, expm1, log, log1p, tanh against
the vectorised pfc::vm versions (csrc/pfc_vmath.h), float64 and float32.

Standalone (not collected by pytest): ``python benchmarks/bench_vmath.py``.
One thread; N = 1e6 elements; best of a few repeats.  The "vm" column uses
the widest instruction set the CPU has (dispatched at run time), the other vm
columns force the baseline x86-64 (SSE2) and the AVX2+FMA copies.
"""

import sys
import time

import numpy as np

from pyflowcore._kernels import vmath

N = 1_000_000
REPEATS = 7

INPUTS = {
    "exp": lambda rng, n: rng.uniform(-20.0, 20.0, n),
    "expm1": lambda rng, n: rng.uniform(-20.0, 20.0, n),
    "log": lambda rng, n: np.exp(rng.uniform(-20.0, 20.0, n)),
    "log1p": lambda rng, n: rng.uniform(-0.99, 20.0, n),
    "tanh": lambda rng, n: rng.uniform(-5.0, 5.0, n),
}


def best_ns(fn, x, out):
    fn(x, out)  # warm the caches and the page mappings of out
    best = np.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn(x, out)
        best = min(best, time.perf_counter() - t0)
    return best / x.size * 1e9


def main():
    rng = np.random.default_rng(0)
    level = vmath.best_level()
    names = {vmath.BASELINE: "baseline", vmath.AVX2: "avx2", vmath.AVX512: "avx512"}
    print(f"N = {N}, one thread, best of {REPEATS}; dispatched level: {names[level]}")
    header = f"{'function':8s} {'dtype':8s} {'libm':>7s} {'vm':>7s} {'speedup':>8s}"
    header += f" {'vm-sse2':>8s} {'vm-avx2':>8s}"
    print(header)
    for name, make in INPUTS.items():
        for dtype in (np.float64, np.float32):
            x = make(rng, N).astype(dtype)
            out = np.empty_like(x)
            vm = getattr(vmath, name)
            t_libm = best_ns(getattr(vmath, name + "_libm"), x, out)
            t_vm = best_ns(vm, x, out)
            t_base = best_ns(lambda a, b: vm(a, b, vmath.BASELINE), x, out)
            t_avx2 = best_ns(lambda a, b: vm(a, b, vmath.AVX2), x, out)
            print(f"{name:8s} {np.dtype(dtype).name:8s} {t_libm:7.2f} {t_vm:7.2f} "
                  f"{t_libm / t_vm:7.1f}x {t_base:8.2f} {t_avx2:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
