"""The time per call of one pyflowcore workload, window after window, in one process.

Usage (not collected by pytest)::

    python benchmarks/call_series.py W5 forward float64 --n 64 --windows 60

Builds the workload of ``pyflowcore.bench`` once and prints its mean time
per call over consecutive windows of ``--window`` seconds, each followed by
a control that runs no pyflowcore code (``sum(range(1000))`` in pure
Python), and the correlation of the two series.  The same
process and the same arrays run the same code in every window, so what
moves from window to window is the host, not the process: on the project's
shared Zen 4 VM, one planar layer at 64 rows alternates between ~1.2 and
~2.0 µs per call in phases that last seconds (RESULTS.md, section 2e).
A comparison that times two backends a few seconds apart can land in
different phases; this script shows how large and how long they are.
"""

import argparse
import statistics
import time

from pyflowcore import bench


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("key", help="workload key, e.g. W5")
    parser.add_argument("task", choices=("forward", "grad", "log_prob"))
    parser.add_argument("dtype", choices=("float64", "float32"))
    parser.add_argument("--n", type=int, default=None, help="rows (default: the workload's)")
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--window", type=float, default=0.1, help="seconds per window")
    args = parser.parse_args(argv)

    try:
        w = bench.find_workload(args.key, args.task, args.n)
    except ValueError as e:
        parser.error(str(e))
    problem = bench.make_problem(w, args.dtype)
    run = bench.PyflowcoreBackend().prepare(problem).run
    for _ in range(100):
        run()
    t0 = time.perf_counter()
    run()
    calls = max(1, round(args.window / max(time.perf_counter() - t0, 1e-7)))

    per_call, control = [], []
    for _ in range(args.windows):
        per_call.append(_window(run, calls))
        control.append(_window(_control, CONTROL_CALLS))
    print(f"{w.key} {w.title} N={w.n} {args.dtype}: {calls} calls per window")
    for name, series in (("pyflowcore, us per call", per_call),
                         ("control, us per call", control)):
        q = statistics.quantiles(series, n=10, method="inclusive")
        print(f"{name}:\n" + " ".join(f"{1e6 * t:.2f}" for t in series))
        print(f"  min {1e6 * min(series):.2f}  p10 {1e6 * q[0]:.2f}  "
              f"median {1e6 * statistics.median(series):.2f}  p90 {1e6 * q[-1]:.2f}  "
              f"max {1e6 * max(series):.2f}")
    print(f"correlation of the two series: {statistics.correlation(per_call, control):.2f}")


CONTROL_CALLS = 2000


def _control():
    sum(range(1000))


def _window(fn, calls):
    """Mean seconds per call of ``fn()`` over ``calls`` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


if __name__ == "__main__":
    main()
