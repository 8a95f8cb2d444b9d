"""Side-by-side CPU benchmark: pyflowcore against NumPy, PyTorch and JAX.

``python -m pyflowcore.bench`` runs the quick comparison on this machine;
``python -m pyflowcore.bench --full`` the full one (``benchmarks/compare.py``
in the source tree is the same program, full by default).  Options::

    --quick | --full                 N = 4,096 and 3 repeats, or N = 65,536 and 11
    --dtype float64|float32|both     default both (float64 with --quick)
    --out FILE.md                    also write the Markdown report there
    --backends numpy,torch,...       a subset of the peers (--quick leaves out
                                     torch.compile unless it is named here)
    --no-limits                      skip the machine-limit measurements

Backends: ``numpy`` (vectorised NumPy), ``torch`` (PyTorch eager, CPU),
``torch.compile`` (Inductor), ``jax`` (``jax.jit`` on the CPU).  PyTorch and
JAX are optional: a backend that cannot be imported is listed as skipped
with the reason.  All peers run the same expressions, written once in
``pyflowcore._peers`` from SPEC.md's formulas, on the same parameters and
inputs as pyflowcore.

Method
------
1. Agreement.  Before a peer is timed its results on the benchmark's own
   inputs are compared with pyflowcore's: for each output array
   ``max|peer - pyflowcore| / max|pyflowcore|`` (a norm-wise relative error,
   which stays meaningful where single entries are near zero) must be at
   most ``1e-10`` in float64 and ``1e-4`` in float32 (about 800 ulps of
   float32: the two float32 computations each round differently through 16
   layers and through batch sums of 65,536 terms).  A peer that disagrees is
   reported and not timed.
2. Timing.  Warm-up calls, then the median of repeated samples; a sample
   loops the call enough times to last ``min_time`` (so microsecond calls are
   timed over many calls), and reports the time per call.  JAX's compile
   time (``lower().compile()``) and ``torch.compile``'s first call (trace,
   compile and one run; Inductor's on-disk cache makes later processes
   faster) are reported in their own column, never in the median.
3. Ratio = peer median / pyflowcore median: above 1 pyflowcore is faster.

All backends run in one process, as a user would mix them.  On a machine
with few cores the OpenMP thread pools of pyflowcore and of PyTorch can then
spin-wait against each other: on this project's 2-core machine, after
pyflowcore's calls, torch.compile's W5 (N = 64) took 16 ms per call instead
of 40 µs, and back to about 50 µs with ``OMP_WAIT_POLICY=passive`` set in the
environment.  The benchmark does not set it (it measures the machine as it
is); a peer time far out of line with its neighbours is worth re-running
that way.

Workloads (dim 16; N = 65,536, or ``--quick``'s smaller N shown in the
table): W1 16 planar layers, forward + log-det; W2 the same, forward and the
gradient of ``mean(log_det + ||x||^2)`` with respect to all parameters
(pyflowcore: ``forward`` then ``backward(z, 2x/N, 1/N)``, which also returns
the gradient with respect to ``z``; the peers: autograd / ``jax.value_and_grad``,
NumPy: the hand-written VJP of ``_peers``); W3 16 radial layers and W4 Real
NVP (8 masks, 2 hidden layers of 64 tanh units), each forward + log-det and
forward + gradient (no NumPy gradient: it would need a hand-written VJP);
W5 one planar layer at N = 1 and 64, time per call; W6 ``log_prob`` of the
16-layer planar chain through its inverse (NumPy: vectorised safeguarded
Newton; PyTorch and JAX have no closed-form planar inverse and are skipped).

The report ends with this machine's limits, measured the same way: memory
copy bandwidth (``np.copyto``), GEMM throughput at Real NVP's hidden-layer
shape (``np.matmul`` of ``(N, 64) @ (64, 64)``), and time per element of
``np.tanh`` / ``np.exp`` and of pyflowcore's vectorised math
(``pyflowcore._kernels.vmath``, when built).
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from pyflowcore import _peers

__all__ = ["Workload", "Backend", "Skip", "Row", "default_workloads", "default_backends",
           "compare", "relative_error", "format_table", "machine_limits", "main",
           "add_arguments", "run_args"]

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
DIM = 16
FULL_N, QUICK_N = 65_536, 4_096

HELP = "time pyflowcore against NumPy, PyTorch and JAX on this CPU"


# -- workloads --------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """One benchmark case.

    ``model`` is ``("planar", layers)``, ``("radial", layers)`` or
    ``("realnvp", num_masks, num_layers, units)``; ``task`` is
    ``"forward"`` (``(x, log_det)``), ``"grad"`` (``(loss, grad_params)``
    for ``loss = mean(log_det + ||x||^2)``) or ``"log_prob"``.
    """

    key: str
    title: str
    model: tuple
    task: str
    n: int
    dim: int = DIM


def default_workloads(n=FULL_N, layers=16):
    planar, radial, nvp = ("planar", layers), ("radial", layers), ("realnvp", 8, 2, 64)
    return [
        Workload("W1", f"planar x{layers} forward+logdet", planar, "forward", n),
        Workload("W2", f"planar x{layers} forward+grad", planar, "grad", n),
        Workload("W3", f"radial x{layers} forward+logdet", radial, "forward", n),
        Workload("W3", f"radial x{layers} forward+grad", radial, "grad", n),
        Workload("W4", "realnvp 8x(2x64) forward+logdet", nvp, "forward", n),
        Workload("W4", "realnvp 8x(2x64) forward+grad", nvp, "grad", n),
        Workload("W5", "planar x1 forward+logdet", ("planar", 1), "forward", 1),
        Workload("W5", "planar x1 forward+logdet", ("planar", 1), "forward", 64),
        Workload("W6", f"planar x{layers} log_prob (inverse)", planar, "log_prob", n),
    ]


@dataclass
class Problem:
    """A workload made concrete for one dtype: the flow, its parameters and inputs."""

    workload: Workload
    dtype: np.dtype
    flow: object
    theta: np.ndarray
    points: np.ndarray  # z for forward/grad, x = f(z) for log_prob


def make_problem(workload, dtype, seed=0):
    """Random non-trivial parameters and standard-normal inputs, the same draws
    (rounded) for float32 as for float64."""
    import pyflowcore as pf
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    kind, dim = workload.model[0], workload.dim
    if kind in ("planar", "radial"):
        cls = pf.Planar if kind == "planar" else pf.Radial
        layers = [cls(dim, dtype=dtype, rng=rng) for _ in range(workload.model[1])]
        flow = layers[0] if len(layers) == 1 else pf.Chain(layers)
        scale = 0.5
    elif kind == "realnvp":
        _, masks, num_layers, units = workload.model
        flow = pf.RealNVP(dim, num_masks=masks, num_layers=num_layers, units=units,
                          dtype=dtype, rng=rng)
        scale = 0.05  # keeps exp(s) moderate through 8 couplings
    else:
        raise ValueError(f"unknown model {kind!r}")
    flow.set_params(rng.normal(0.0, scale, flow.num_params))
    z = rng.standard_normal((workload.n, dim)).astype(dtype)
    points = flow.forward(z)[0] if workload.task == "log_prob" else z
    return Problem(workload, dtype, flow, flow.params.copy(), points)


# -- backends ---------------------------------------------------------------
class Skip(Exception):
    """A backend cannot run a workload; the message says why."""


@dataclass
class Prepared:
    """``run()`` computes the workload's outputs (and waits for them);
    ``results(out)`` turns them into float64 NumPy arrays for the agreement
    check; ``compile_s`` is the compile time, if any."""

    run: object
    results: object
    compile_s: float = None


def _as_numpy(outputs):
    return tuple(np.asarray(o, dtype=np.float64) for o in outputs)


class Backend:
    """A way of computing the workloads.  Subclasses set ``name`` and implement
    ``prepare(problem) -> Prepared`` (raising ``Skip`` for what they cannot
    do) and, when they depend on an optional package, ``unavailable()``."""

    name = "?"

    def unavailable(self):
        """None when usable, else the reason it is not."""
        return None

    def prepare(self, problem):
        raise NotImplementedError

    def describe(self):
        """Version and threads, for the report's header."""
        return ""


class PyflowcoreBackend(Backend):
    name = "pyflowcore"

    def describe(self):
        import pyflowcore
        return f"pyflowcore {pyflowcore.__version__}"

    def prepare(self, problem):
        flow, pts, task = problem.flow, problem.points, problem.workload.task
        if task == "forward":
            return Prepared(lambda: flow.forward(pts), _as_numpy)
        if task == "grad":
            n = pts.shape[0]
            two_over_n, one_over_n = problem.dtype.type(2.0 / n), problem.dtype.type(1.0 / n)

            def grad():
                x, log_det = flow.forward(pts)
                value = np.mean(log_det + np.einsum("ij,ij->i", x, x))
                return value, flow.backward(pts, x * two_over_n, one_over_n)[1]
            return Prepared(grad, _as_numpy)
        if task == "log_prob":
            return Prepared(lambda: (flow.log_prob(pts),), _as_numpy)
        raise ValueError(task)


class NumpyBackend(Backend):
    """The vectorised NumPy peer; ``ops`` replaces its table of element-wise
    operations (``_peers.numpy_ops()``) in the forward workloads."""

    name = "numpy"

    def __init__(self, ops=None):
        self.ops = ops or _peers.numpy_ops()

    def describe(self):
        return f"numpy {np.__version__}"

    def prepare(self, problem):
        w, theta, pts = problem.workload, problem.theta, problem.points
        spec, task = w.model, w.task
        if task == "forward":
            f = _peers.make_model(self.ops, spec, w.dim, theta)
            return Prepared(lambda: f(theta, pts), _as_numpy)
        if spec[0] != "planar":
            raise Skip("no autograd in NumPy; a hand-written VJP exists only for planar")
        if task == "grad":
            return Prepared(lambda: _peers.numpy_planar_value_and_grad(theta, pts, w.dim, spec[1]),
                            _as_numpy)
        return Prepared(lambda: (_peers.numpy_planar_log_prob(theta, pts, w.dim, spec[1]),),
                        _as_numpy)


_NO_INVERSE = "no closed-form planar inverse (only the NumPy peer has a Newton solver)"


class TorchBackend(Backend):
    """PyTorch on the CPU, eager or through ``torch.compile`` (Inductor)."""

    def __init__(self, compiled=False):
        self.compiled = compiled
        self.name = "torch.compile" if compiled else "torch"

    def unavailable(self):
        try:
            import torch  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install
            return f"PyTorch not importable ({type(exc).__name__}: {exc})"
        return None

    def describe(self):
        import torch
        return f"torch {torch.__version__} ({torch.get_num_threads()} threads)"

    def prepare(self, problem):
        import torch
        w = problem.workload
        if w.task == "log_prob":
            raise Skip(_NO_INVERSE)
        ops = _peers.torch_ops(torch)
        theta = torch.from_numpy(problem.theta.copy())
        pts = torch.from_numpy(problem.points)
        compile_s = None
        if w.task == "forward":
            f = _peers.make_model(ops, w.model, w.dim, theta)
            if self.compiled:
                torch._dynamo.reset()  # one cache entry per workload, never the eager fallback
                f = torch.compile(f, dynamic=False, fullgraph=True)

            def run():
                with torch.no_grad():
                    return f(theta, pts)
        else:
            f = _peers.make_loss(ops, w.model, w.dim, theta)
            if self.compiled:
                torch._dynamo.reset()
                f = torch.compile(f, dynamic=False, fullgraph=True)
            theta.requires_grad_(True)

            def run():
                value = f(theta, pts)
                (grad,) = torch.autograd.grad(value, theta)
                return value, grad
        if self.compiled:
            t0 = time.perf_counter()
            run()
            compile_s = time.perf_counter() - t0
        return Prepared(run, lambda out: _as_numpy(o.detach().numpy() for o in out), compile_s)


class JaxBackend(Backend):
    """JAX on the CPU with ``jax.jit``; float64 needs ``jax_enable_x64``, which
    this backend switches on (float32 inputs stay float32)."""

    name = "jax"

    def unavailable(self):
        try:
            import jax
            jax.config.update("jax_enable_x64", True)
            if not jax.devices("cpu"):
                return "JAX has no CPU device"
        except Exception as exc:
            return f"JAX not importable ({type(exc).__name__}: {exc})"
        return None

    def describe(self):
        import jax
        return f"jax {jax.__version__}"

    def prepare(self, problem):
        import jax
        w = problem.workload
        if w.task == "log_prob":
            raise Skip(_NO_INVERSE)
        jax.config.update("jax_enable_x64", True)
        ops = _peers.jax_ops(jax)
        cpu = jax.devices("cpu")[0]
        theta = jax.device_put(problem.theta, cpu)
        pts = jax.device_put(problem.points, cpu)
        if w.task == "forward":
            f = _peers.make_model(ops, w.model, w.dim, theta)
        else:
            f = jax.value_and_grad(_peers.make_loss(ops, w.model, w.dim, theta))
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(theta, pts).compile()
        compile_s = time.perf_counter() - t0
        return Prepared(lambda: jax.block_until_ready(compiled(theta, pts)), _as_numpy,
                        compile_s)


class Disabled(Backend):
    """A backend left out of this run, listed as skipped with ``reason``."""

    def __init__(self, name, reason):
        self.name, self.reason = name, reason

    def unavailable(self):
        return self.reason


def default_backends():
    """pyflowcore (the reference, first) and every peer."""
    return [PyflowcoreBackend(), NumpyBackend(), TorchBackend(), TorchBackend(compiled=True),
            JaxBackend()]


# -- measuring --------------------------------------------------------------
def relative_error(results, reference):
    """Largest norm-wise relative error ``max|a - b| / max|b|`` over the outputs
    (absolute where the reference is all zeros; ``inf`` for NaN, a non-finite
    entry or a shape mismatch)."""
    worst = 0.0
    for a, b in zip(results, reference, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(a)):
            return math.inf
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        diff = float(np.max(np.abs(a - b))) if b.size else 0.0
        err = diff / scale if scale > 0 else diff
        if not math.isfinite(err):
            return math.inf
        worst = max(worst, err)
    return worst


def time_call(fn, *, repeat, warmup, min_time):
    """Median seconds per call of ``fn()`` over ``repeat`` samples, after
    ``warmup`` calls; each sample loops ``fn`` often enough to last
    ``min_time``."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    number = 1 if one >= min_time else min(10_000, math.ceil(min_time / max(one, 1e-7)))
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples)


@dataclass
class Row:
    """One line of the table.  ``status`` is ``"ok"``, ``"skipped"``,
    ``"disagrees"`` or ``"failed"``; ``note`` says why when not ok."""

    workload: Workload
    dtype: str
    backend: str
    status: str
    median_s: float = None
    ratio: float = None
    compile_s: float = None
    rel_err: float = None
    note: str = ""


def compare(workloads, dtypes, backends, *, repeat=7, warmup=2, min_time=0.02, seed=0,
            tolerance=None, log=None):
    """Check every backend against the first (pyflowcore) and time the ones that agree.

    Parameters
    ----------
    workloads : sequence of Workload
    dtypes : sequence of {"float64", "float32"}
    backends : sequence of Backend
        The first is the reference every other is checked against and divided by.
    repeat, warmup, min_time : timing (see ``time_call``)
    tolerance : dict dtype name -> float, optional
        Largest accepted ``relative_error`` (default ``TOLERANCE``).
    log : callable, optional
        Called with a progress line per measurement.

    Returns
    -------
    list of Row
    """
    tolerance = dict(TOLERANCE if tolerance is None else tolerance)
    log = log or (lambda line: None)
    timing = {"repeat": repeat, "warmup": warmup, "min_time": min_time}
    reference, peers = backends[0], backends[1:]
    missing = {b.name: b.unavailable() for b in backends}
    rows = []
    for w in workloads:
        for dtype in dtypes:
            dtype = np.dtype(dtype).name
            problem = make_problem(w, dtype, seed)
            ref = reference.prepare(problem)
            ref_results = ref.results(ref.run())
            ref_s = time_call(ref.run, **timing)
            rows.append(Row(w, dtype, reference.name, "ok", ref_s, 1.0, ref.compile_s, 0.0))
            log(f"{w.key} {w.title} N={w.n} {dtype} {reference.name}: {_fmt_time(ref_s)}")
            for b in peers:
                row = Row(w, dtype, b.name, "skipped")
                rows.append(row)
                if missing[b.name]:
                    row.note = missing[b.name]
                    continue
                try:
                    prepared = b.prepare(problem)
                    row.compile_s = prepared.compile_s
                    err = relative_error(prepared.results(prepared.run()), ref_results)
                except Skip as exc:
                    row.note = str(exc)
                    continue
                except Exception as exc:  # a peer's failure must not stop the others
                    row.status, row.note = "failed", f"{type(exc).__name__}: {exc}"[:200]
                    log(f"  {b.name}: failed: {row.note}")
                    continue
                row.rel_err = err
                if not err <= tolerance[dtype]:
                    row.status = "disagrees"
                    row.note = (f"relative error {err:.1e} > {tolerance[dtype]:.0e} against "
                                f"{reference.name}: not timed")
                    log(f"  {b.name}: {row.note}")
                    continue
                row.status = "ok"
                row.median_s = time_call(prepared.run, **timing)
                row.ratio = row.median_s / ref_s
                compiled = "" if row.compile_s is None else f", compile {_fmt_time(row.compile_s)}"
                log(f"  {b.name}: {_fmt_time(row.median_s)} (x{row.ratio:.2f}{compiled})")
    return rows


def machine_limits(n=FULL_N, dtypes=("float64", "float32"), *, copy_mib=256, repeat=7,
                   min_time=0.02):
    """This machine's copy bandwidth, GEMM rate and transcendental throughput.

    Returns
    -------
    list of (quantity, value, note) strings
    """
    timing = {"repeat": repeat, "warmup": 1, "min_time": min_time}
    rows = []
    src = np.ones(copy_mib * 2**20 // 8)
    dst = np.empty_like(src)
    t = time_call(lambda: np.copyto(dst, src), **timing)
    rows.append(("memory copy (np.copyto)", f"{2 * src.nbytes / t / 1e9:.1f} GB/s",
                 f"{copy_mib} MiB, bytes read + written"))
    del src, dst
    rng = np.random.default_rng(0)
    units = 64
    for dtype in dtypes:
        a = rng.standard_normal((n, units)).astype(dtype)
        b = rng.standard_normal((units, units)).astype(dtype)
        c = np.empty((n, units), dtype=dtype)
        t = time_call(lambda: np.matmul(a, b, out=c), **timing)
        rows.append((f"GEMM {dtype} (np.matmul)", f"{2 * n * units * units / t / 1e9:.1f} GFLOP/s",
                     f"({n}, {units}) @ ({units}, {units}), Real NVP hidden layer"))
    try:
        from pyflowcore._kernels import vmath
    except ImportError:
        vmath = None
    size = 1 << 20
    for dtype in dtypes:
        x = rng.uniform(-5.0, 5.0, size).astype(dtype)
        y = np.empty_like(x)
        funcs = [("np.tanh", lambda: np.tanh(x, out=y)), ("np.exp", lambda: np.exp(x, out=y))]
        if vmath is not None:
            funcs += [("vmath.tanh", lambda: vmath.tanh(x, y)),
                      ("vmath.exp", lambda: vmath.exp(x, y))]
        for name, fn in funcs:
            t = time_call(fn, **timing)
            rows.append((f"{name} {dtype}", f"{t / size * 1e9:.2f} ns/element",
                         f"{size} elements, one thread"))
    if vmath is None:
        rows.append(("pyflowcore vmath", "n/a", "pyflowcore._kernels.vmath not built"))
    return rows


# -- the report -------------------------------------------------------------
def _fmt_time(s):
    if s is None:
        return ""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def format_table(rows):
    """The comparison as a Markdown table, one line per workload, dtype and backend."""
    lines = ["| workload | N | dtype | backend | median | ratio | compile | rel. err | note |",
             "|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        w = r.workload
        if r.status == "ok":
            median, ratio = _fmt_time(r.median_s), f"{r.ratio:.2f}"
        else:
            median, ratio = r.status, ""
        err = "" if r.rel_err is None else f"{r.rel_err:.0e}"
        lines.append(f"| {w.key} {w.title} | {w.n} | {r.dtype} | {r.backend} | {median} | "
                     f"{ratio} | {_fmt_time(r.compile_s)} | {err} | {r.note} |")
    return "\n".join(lines)


def _machine_header(backends):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} logical cores",
             f"Python {platform.python_version()}"]
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                          "OPENBLAS_NUM_THREADS") if k in os.environ}
    if threads:
        parts.append(", ".join(f"{k}={v}" for k, v in threads.items()))
    for b in backends:
        if b.unavailable() is None and b.describe():
            parts.append(b.describe())
    return "; ".join(dict.fromkeys(parts))


def report(rows, limits, backends, settings):
    out = ["# pyflowcore vs NumPy / PyTorch / JAX (CPU)", "",
           _machine_header(backends), "", settings, "",
           "ratio = peer median / pyflowcore median (> 1: pyflowcore is faster). "
           "compile = JAX `lower().compile()` or torch.compile's first call, not in the median. "
           "rel. err = max|peer - pyflowcore| / max|pyflowcore| over the outputs, "
           f"checked before timing (float64 <= {TOLERANCE['float64']:.0e}, "
           f"float32 <= {TOLERANCE['float32']:.0e}). "
           "All backends share one process: on few cores their OpenMP pools can spin against "
           "each other; a torch time far out of line is worth re-running with "
           "OMP_WAIT_POLICY=passive.", "",
           format_table(rows)]
    if limits:
        out += ["", "## This machine's limits", "", "| quantity | value | note |", "|---|---:|---|"]
        out += [f"| {q} | {v} | {n} |" for q, v, n in limits]
    return "\n".join(out) + "\n"


# -- command line -----------------------------------------------------------
def add_arguments(parser, quick_default=True):
    """Add the benchmark's options to an ``argparse`` parser; returns the parser."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=quick_default,
                      help=f"N = {QUICK_N}, few repeats, float64 only unless --dtype, "
                           "no torch.compile unless --backends names it (under a minute)"
                           + (" (default)" if quick_default else ""))
    mode.add_argument("--full", dest="quick", action="store_false",
                      help=f"N = {FULL_N}, more repeats" + ("" if quick_default else " (default)"))
    parser.add_argument("--dtype", choices=("float64", "float32", "both"), default=None,
                        help="default: both, float64 with --quick")
    parser.add_argument("--backends", default=None, metavar="NAMES",
                        help="comma-separated subset of "
                             + ",".join(b.name for b in default_backends())
                             + " (pyflowcore is always run)")
    parser.add_argument("--no-limits", dest="limits", action="store_false",
                        help="skip the machine-limit measurements")
    parser.add_argument("--out", default=None, metavar="FILE.md",
                        help="also write the Markdown report to this file")
    return parser


def run_args(args):
    """Run the benchmark for parsed ``args`` (see ``add_arguments``).

    Returns 0, or 2 for an unknown backend name or an unwritable ``--out``.
    """
    backends = default_backends()
    if args.backends:
        wanted = {name.strip() for name in args.backends.split(",") if name.strip()}
        unknown = wanted - {b.name for b in backends}
        if unknown:
            print(f"unknown backends: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        backends = [backends[0]] + [b for b in backends[1:] if b.name in wanted]
    elif args.quick:
        reason = ("left out of --quick (Inductor takes seconds to minutes per workload); "
                  "use --full or --backends")
        backends = [Disabled(b.name, reason) if b.name == "torch.compile" else b
                    for b in backends]
    dtype = args.dtype or ("float64" if args.quick else "both")
    dtypes = ("float64", "float32") if dtype == "both" else (dtype,)
    if args.quick:
        n, timing, copy_mib = QUICK_N, {"repeat": 3, "warmup": 1, "min_time": 0.01}, 64
    else:
        n, timing, copy_mib = FULL_N, {"repeat": 11, "warmup": 2, "min_time": 0.05}, 256
    settings = (f"{'quick' if args.quick else 'full'} run: N = {n} (W5: 1 and 64), "
                f"dim {DIM}; median of {timing['repeat']} samples of >= "
                f"{timing['min_time'] * 1e3:.0f} ms after {timing['warmup']} warm-up call(s).")

    def log(line):
        print(line, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rows = compare(default_workloads(n), dtypes, backends, log=log, **timing)
    limits = []
    if args.limits:
        log("machine limits ...")
        limits = machine_limits(n, dtypes, copy_mib=copy_mib, repeat=timing["repeat"],
                                min_time=timing["min_time"])
    text = report(rows, limits, backends, settings)
    text += f"\n(total {time.perf_counter() - t0:.0f} s)\n"
    print(text)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"cannot write {args.out!r}: {exc}", file=sys.stderr)
            return 2
    return 0


def main(argv=None, *, prog=None, quick_default=True):
    """``python -m pyflowcore.bench [--quick | --full] [--dtype ...] [--out FILE.md]``."""
    parser = argparse.ArgumentParser(prog=prog or "python -m pyflowcore.bench",
                                     description=HELP + " (see the module docstring)")
    add_arguments(parser, quick_default=quick_default)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
