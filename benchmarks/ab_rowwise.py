"""Paired A/B timing of two builds of the row-wise kernel module in one process.

Usage (not collected by pytest)::

    cp pyflowcore/_kernels/rowwise.cpython-*.so /tmp/A.so   # before a change
    # ... change csrc/, rebuild:
    PYFLOWCORE_BUILD_ONLY=rowwise python setup.py build_ext --inplace
    cp pyflowcore/_kernels/rowwise.cpython-*.so /tmp/B.so
    OMP_NUM_THREADS=1 python benchmarks/ab_rowwise.py /tmp/A.so /tmp/B.so W3 forward float32

Both builds are loaded side by side (two copies of the extension under the
package's module name), the workload of ``pyflowcore.bench`` is built once on
each, and their calls alternate, A then B and B then A by turns, for
``--seconds``.  The per-pair ratio B/A is then insensitive to the slow
drifts of a shared VM (10-30% over minutes on the project's machines),
which swamp a few-percent change when the two builds are timed in separate
processes one after the other.
Prints the largest difference between the two builds' outputs, each build's
median and 10th percentile, and the median and quartiles of B/A.
"""

import argparse
import importlib.util
import time

import numpy as np

import pyflowcore.flows._rowwise as rowwise_api
from pyflowcore import bench


def load_build(path):
    """The extension module built at ``path``, loaded beside any other copy."""
    spec = importlib.util.spec_from_file_location("pyflowcore._kernels.rowwise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first build (.so)")
    parser.add_argument("b", help="the second build (.so)")
    parser.add_argument("workload", help="a pyflowcore.bench workload key: W1, W2, W3, W5, W6")
    parser.add_argument("task", choices=["forward", "grad", "log_prob"])
    parser.add_argument("dtype", choices=["float64", "float32"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--n", type=int, help="the number of rows (default: the workload's first)")
    args = parser.parse_args(argv)

    try:
        workload = bench.find_workload(args.workload, args.task, args.n)
    except ValueError as e:
        parser.error(str(e))
    problems = []
    for path in (args.a, args.b):
        # Flows take RowwiseRun from pyflowcore.flows._rowwise when built.
        build = load_build(path)
        rowwise_api.RowwiseRun, rowwise_api.LayerKind = build.RowwiseRun, build.LayerKind
        problems.append(bench.make_problem(workload, args.dtype))
    calls = [bench.PyflowcoreBackend().prepare(p) for p in problems]
    outputs = [c.results(c.run()) for c in calls]
    for k, (a, b) in enumerate(zip(*outputs)):
        print(f"output {k}: max |A - B| = {np.max(np.abs(a - b)):.3g}")

    # Each pair runs A then B or B then A by turns: the call that comes
    # second runs ~3% faster on microsecond workloads (two identical builds
    # gave B/A = 0.97 in a fixed order), which the turns cancel.
    times = ([], [])
    pairs = (tuple(zip(calls, times)), tuple(zip(calls, times))[::-1])
    end = time.perf_counter() + args.seconds
    turn = 0
    while time.perf_counter() < end:
        for call, record in pairs[turn]:
            t0 = time.perf_counter()
            call.run()
            record.append(time.perf_counter() - t0)
        turn ^= 1
    times = np.array(times)
    for name, t in zip("AB", times):
        print(f"{name}: median {np.median(t) * 1e3:.4f} ms, "
              f"10th percentile {np.percentile(t, 10) * 1e3:.4f} ms")
    ratio = times[1] / times[0]
    print(f"B/A per pair: median {np.median(ratio):.4f} "
          f"[quartiles {np.percentile(ratio, 25):.4f}, {np.percentile(ratio, 75):.4f}], "
          f"{len(ratio)} pairs")


if __name__ == "__main__":
    main()
