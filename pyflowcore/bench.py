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
    --same-process                   run the peers in this process too (see Method)

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

4. Isolation.  pyflowcore is timed in the benchmark's own process, which
   never imports PyTorch or JAX, and each peer in a fresh Python process of
   its own (``python -m pyflowcore.bench --worker NAME``), which receives
   the parameters, the inputs and pyflowcore's results as ``.npy`` files
   and runs no pyflowcore kernel.  The workers stay up for the whole run
   and each times a workload when asked, while every other process waits.
   Each backend is so timed alone: in
   one process the OpenMP thread pools of pyflowcore, PyTorch and JAX
   spin-wait against each other on a machine with few cores (on this
   project's 2-core machine, after pyflowcore's calls, torch.compile's W5
   at N = 64 took 16 ms per call instead of 40 µs).  ``--same-process``
   runs everything in one process, as a user mixing the libraries would.
5. Drift.  A shared VM's speed drifts by 10-20% over minutes and, on some
   hosts, switches between a fast and a ~1.6x slower phase every few
   seconds (``benchmarks/call_series.py``), so a ratio of two medians taken
   apart moves with it.  Workload by workload, each isolated peer's
   samples alternate with pyflowcore's: one sample of the peer, then
   (after ``WORKER_SETTLE_S`` for the worker's thread pools to go to
   sleep) one of pyflowcore, ``repeat`` times.  The peer's ratio divides
   its median by the median of pyflowcore's samples taken between its
   own, so both sides see the same phases; pyflowcore's own row shows the
   median of all its samples.  (Until stop 22 each peer's median was
   bracketed by two of pyflowcore's; in run i of 2026-12-03 they were
   1.07 and 2.06 ms, the latter in a slow phase of the host, and W3's
   float32 ratio came out at 2.85x instead of ~3.9x.)  In-process
   peers are timed right after a pass of pyflowcore of their own, their
   reference; without them that pass is not run.

Workloads (dim 16; N = 65,536, or ``--quick``'s smaller N shown in the
table): W1 16 planar layers, forward + log-det; W2 the same, forward and the
gradient of ``mean(log_det + ||x||^2)`` with respect to all parameters
(pyflowcore: ``quadratic_loss_and_grad(z, 2/N, 1/N)``, one fused pass that
also returns the gradient with respect to ``z``; the peers: autograd / ``jax.value_and_grad``,
NumPy: the hand-written VJP of ``_peers``); W3 16 radial layers and W4 Real
NVP (8 masks, 2 hidden layers of 64 tanh units), each forward + log-det and
forward + gradient (no NumPy gradient: it would need a hand-written VJP);
W5 one planar layer at N = 1 and 64, time per call; W6 ``log_prob`` of the
16-layer planar chain through its inverse (NumPy: vectorised safeguarded
Newton; PyTorch and JAX have no closed-form planar inverse and are skipped).
From ``REUSE_MIN_ROWS`` rows on, pyflowcore's forward and gradient reuse
their batch-sized arrays through ``out=`` between calls, as a loop over
batches would; the peers allocate as their libraries do.

The report ends with this machine's limits, measured the same way: memory
copy bandwidth (``np.copyto``), GEMM throughput at Real NVP's hidden-layer
shape (``np.matmul`` of ``(N, 64) @ (64, 64)``), and time per element of
``np.tanh`` / ``np.exp`` and of pyflowcore's vectorised math
(``pyflowcore._kernels.vmath``, when built).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from pyflowcore import _peers

__all__ = ["Workload", "Backend", "Skip", "Row", "Isolated", "default_workloads",
           "find_workload", "default_backends", "isolated", "compare", "relative_error",
           "format_table", "machine_limits", "main", "add_arguments", "run_args"]

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
    """The workloads W1-W6 of the comparison, at ``n`` rows (W5 at 1 and 64)."""
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


def find_workload(key, task, n=None):
    """The default workload ``key`` (``"W1"``...) for ``task``, at ``n`` rows
    if given (W5 has two) or else the first listed; ``ValueError`` if none.
    """
    for w in default_workloads():
        if w.key == key and w.task == task and n in (None, w.n):
            return w
    raise ValueError(f"no workload {key} {task}" + ("" if n is None else f" with n={n}"))


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
    # Copies: a backend may hand out the same (reused) buffers on every call.
    return tuple(np.array(o, dtype=np.float64) for o in outputs)


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


# From this many rows on, pyflowcore's batch-sized outputs are allocated once
# and reused through out=, as a loop over batches or a training loop would
# (fresh pages cost ~5 us each on the project's VM).  Below, the plain call is
# timed, as a sampler's step that keeps its results makes it: out= would save
# only the two small allocations (0.1-0.2 us of W5's 0.5 and 1.3 us on the
# Zen 4 VM of 2026-12-03), and the peers allocate theirs too.
REUSE_MIN_ROWS = 1024


class PyflowcoreBackend(Backend):
    name = "pyflowcore"

    def describe(self):
        import pyflowcore
        return f"pyflowcore {pyflowcore.__version__}"

    def prepare(self, problem):
        flow, pts, task = problem.flow, problem.points, problem.workload.task
        n = pts.shape[0]
        if task == "forward":
            if n < REUSE_MIN_ROWS:
                return Prepared(lambda: flow.forward(pts), _as_numpy)
            x, log_det = np.empty_like(pts), np.empty(n, dtype=pts.dtype)
            return Prepared(lambda: flow.forward(pts, out=(x, log_det)), _as_numpy)
        if task == "grad":
            # mean(log_det + ||x||^2) = sum_r (a/2 ||x_r||^2 + b log_det_r), a = 2/N, b = 1/N
            grad_z = np.empty_like(pts)
            grad_params = np.empty(flow.num_params, dtype=pts.dtype)

            def grad():
                value, _, grad_theta = flow.quadratic_loss_and_grad(
                    pts, 2.0 / n, 1.0 / n, out=(grad_z, grad_params))
                return value, grad_theta
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


def _builtin_peer(name):
    """A fresh built-in peer backend called ``name``, or None."""
    return next((b for b in default_backends()[1:] if b.name == name), None)


class Isolated(Backend):
    """A built-in peer that ``compare`` runs in a Python process of its own.

    The worker process rebuilds the backend from its name, so only the peers
    of ``default_backends`` qualify.  ``unavailable()`` and ``describe()``
    report what the worker found (nothing is imported here); they are known
    once ``compare`` has run it.
    """

    def __init__(self, name):
        if _builtin_peer(name) is None:
            raise ValueError(f"{name!r} is not a built-in peer backend; only those can run "
                             "in a worker process")
        self.name = name
        self.info = {"unavailable": None, "describe": ""}

    def unavailable(self):
        return self.info["unavailable"]

    def describe(self):
        return self.info["describe"]


def isolated(backends):
    """``backends`` with every built-in peer wrapped in ``Isolated`` (the
    reference, first, and ``Disabled`` backends stay as they are)."""
    def builtin(b):
        return type(b) is type(_builtin_peer(b.name)) and not isinstance(b, Disabled)
    return backends[:1] + [Isolated(b.name) if builtin(b) else b for b in backends[1:]]


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
    number = calibrate(fn, warmup=warmup, min_time=min_time)
    return statistics.median(time_sample(fn, number) for _ in range(max(1, repeat)))


def calibrate(fn, *, warmup, min_time):
    """After ``warmup`` calls of ``fn()``, the number of calls a sample of at
    least ``min_time`` seconds takes."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return 1 if one >= min_time else min(10_000, math.ceil(min_time / max(one, 1e-7)))


def time_sample(fn, number):
    """Seconds per call of ``fn()`` over ``number`` calls in a row.  When the
    calls are short (``number > 1``) one untimed call comes first: the first
    call after a pause pays for waking the thread pools (0.3 ms, and up to 8
    ms right after a peer's sample, measured on the project's 2-core VM)."""
    if number > 1:
        fn()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


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
    ref_s: float = None  # the pyflowcore median ``ratio`` divides by (Method, 5)


def compare(workloads, dtypes, backends, *, repeat=7, warmup=2, min_time=0.02, seed=0,
            tolerance=None, log=None):
    """Check every backend against the first (pyflowcore) and time the ones that agree.

    Parameters
    ----------
    workloads : sequence of Workload
    dtypes : sequence of {"float64", "float32"}
    backends : sequence of Backend
        The first is the reference every other is checked against and divided by.
        An ``Isolated`` peer (see ``isolated``) runs in a worker process of its
        own; the others run in this process.
    repeat, warmup, min_time : timing (see ``time_call``)
    tolerance : dict dtype name -> float, optional
        Largest accepted ``relative_error`` (default ``TOLERANCE``).
    log : callable, optional
        Called with a progress line per measurement (a worker writes its lines
        to standard error).

    Returns
    -------
    list of Row
        Per workload and dtype, the reference then every peer, in order.
    """
    tolerance = {k: float(v) for k, v in (TOLERANCE if tolerance is None else tolerance).items()}
    verbose, log = log is not None, log or (lambda line: None)
    timing = {"repeat": repeat, "warmup": warmup, "min_time": min_time}
    reference, peers = backends[0], backends[1:]
    workers = [b for b in peers if isinstance(b, Isolated)]
    in_process = [b for b in peers if not isinstance(b, Isolated)]
    missing = {b.name: b.unavailable() for b in in_process}
    jobs = [(w, np.dtype(dtype).name) for w in workloads for dtype in dtypes]
    table = {}  # (job index, backend name) -> Row
    ref_runs = []  # per job: the reference's prepared call
    ref_times = []  # per job: its median, or its samples between the workers' samples
    with tempfile.TemporaryDirectory(prefix="pyflowcore-bench-") as tmp:
        manifest = []
        for j, (w, dtype) in enumerate(jobs):
            problem = make_problem(w, dtype, seed)
            ref = reference.prepare(problem)
            ref_results = ref.results(ref.run())
            ref_runs.append(ref.run)
            ref_times.append([])
            table[j, reference.name] = Row(w, dtype, reference.name, "ok", None, 1.0,
                                           ref.compile_s, 0.0)
            if in_process or not workers:
                # Timed here only for peers timed here; workers get samples of their own.
                ref_s = time_call(ref.run, **timing)
                ref_times[j].append(ref_s)
                log(f"{w.key} {w.title} N={w.n} {dtype} {reference.name}: {_fmt_time(ref_s)}")
            for b in in_process:
                row = _measure_peer(b, problem, ref_results, missing[b.name],
                                    tolerance[dtype], timing, reference.name, log)
                row.ref_s = ref_s
                table[j, b.name] = row
            if workers:
                manifest.append(_save_job(tmp, j, problem, ref_results))
        if workers:
            log(f"starting a worker process for {', '.join(b.name for b in workers)} ...")
            procs = [_WorkerProcess(b, tmp, manifest, tolerance, timing, reference.name,
                                    verbose) for b in workers]
            try:
                for j, (w, dtype) in enumerate(jobs):
                    # Each peer's samples alternate with pyflowcore's (Method, 5).
                    ref_number = calibrate(ref_runs[j], warmup=warmup, min_time=min_time)
                    ref_samples = []
                    for b, proc in zip(workers, procs):
                        row = proc.prepare(j)
                        if row["status"] == "ok":
                            row, ours = _interleave(proc, row, ref_runs[j], ref_number, repeat)
                            ref_samples += ours
                        table[j, b.name] = Row(w, dtype, b.name, **row)
                        log(f"  {w.key} N={w.n} {dtype} {b.name}: " + (
                            f"{_fmt_time(row['median_s'])}, {reference.name} between its "
                            f"samples {_fmt_time(row['ref_s'])}" if row["status"] == "ok"
                            else f"{row['status']}: {row.get('note', '')}"))
                    if ref_samples:
                        ref_times[j] = ref_samples
                    elif not ref_times[j]:   # no peer was timed: time it alone
                        ref_times[j].append(time_call(ref_runs[j], **timing))
            finally:
                for proc in procs:
                    proc.close()
    rows = []
    for j in range(len(jobs)):
        ref_row = table[j, reference.name]
        ref_row.median_s = ref_row.ref_s = statistics.median(ref_times[j])
        rows.append(ref_row)
        for b in peers:
            row = table[j, b.name]
            if row.status == "ok":
                row.ratio = row.median_s / row.ref_s
            rows.append(row)
    return rows


def _interleave(proc, row, ref_run, ref_number, repeat):
    """A prepared worker's samples alternating with the reference's (Method,
    5): ``repeat`` times a sample of the peer, ``WORKER_SETTLE_S`` of rest, a
    sample of ``ref_run``.  Returns the peer's row fields with ``median_s``
    and ``ref_s``, or failed if the worker died, and the reference's samples
    (none then)."""
    peer, ours = [], []
    for _ in range(max(1, repeat)):
        t = proc.sample()
        if t is None:
            return {"status": "failed", "note": proc.error}, []
        peer.append(t)
        time.sleep(WORKER_SETTLE_S)
        ours.append(time_sample(ref_run, ref_number))
    return {**row, "median_s": statistics.median(peer), "ref_s": statistics.median(ours)}, ours


def _check_peer(backend, problem, ref_results, missing, tol, ref_name, log):
    """One peer on one problem, before timing: its Row (skipped, failed,
    disagrees, or ok with ``compile_s`` and ``rel_err``) and, when ok, its
    prepared call."""
    w = problem.workload
    row = Row(w, problem.dtype.name, backend.name, "skipped")
    if missing:
        row.note = missing
        return row, None
    try:
        prepared = backend.prepare(problem)
        row.compile_s = prepared.compile_s
        err = relative_error(prepared.results(prepared.run()), ref_results)
    except Skip as exc:
        row.note = str(exc)
        return row, None
    except Exception as exc:  # a peer's failure must not stop the others
        row.status, row.note = "failed", f"{type(exc).__name__}: {exc}"[:200]
        log(f"  {w.key} N={w.n} {problem.dtype.name} {backend.name}: failed: {row.note}")
        return row, None
    row.rel_err = err
    if not err <= tol:
        row.status = "disagrees"
        row.note = f"relative error {err:.1e} > {tol:.0e} against {ref_name}: not timed"
        log(f"  {w.key} N={w.n} {problem.dtype.name} {backend.name}: {row.note}")
        return row, None
    row.status = "ok"
    return row, prepared


def _measure_peer(backend, problem, ref_results, missing, tol, timing, ref_name, log):
    """The Row of one in-process peer on one problem: skipped, failed,
    disagrees, or timed (``ratio`` is left to the caller)."""
    row, prepared = _check_peer(backend, problem, ref_results, missing, tol, ref_name, log)
    if prepared is not None:
        row.median_s = time_call(prepared.run, **timing)
        compiled = "" if row.compile_s is None else f", compile {_fmt_time(row.compile_s)}"
        log(f"  {problem.workload.key} N={problem.workload.n} {problem.dtype.name} "
            f"{backend.name}: {_fmt_time(row.median_s)}{compiled}")
    return row


# -- worker processes ---------------------------------------------------------
_ROW_FIELDS = ("status", "compile_s", "rel_err", "note")


def _save_job(directory, j, problem, ref_results):
    """Write one problem's inputs and reference results for the workers."""
    files = {}
    arrays = {"theta": problem.theta, "points": problem.points}
    arrays.update({f"ref{k}": r for k, r in enumerate(ref_results)})
    for key, arr in arrays.items():
        files[key] = f"job{j}-{key}.npy"
        np.save(os.path.join(directory, files[key]), arr, allow_pickle=False)
    return {"workload": asdict(problem.workload), "dtype": problem.dtype.name,
            "files": files, "num_ref": len(ref_results)}


def _load_job(directory, job):
    w = dict(job["workload"])
    w["model"] = tuple(w["model"])
    workload = Workload(**w)
    files = job["files"]

    def load(key):
        return np.load(os.path.join(directory, files[key]), allow_pickle=False)
    problem = Problem(workload, np.dtype(job["dtype"]), None, load("theta"), load("points"))
    return problem, tuple(load(f"ref{k}") for k in range(job["num_ref"]))


# A worker's thread pools (PyTorch's OpenMP threads, XLA's, OpenBLAS's
# behind NumPy, ~0.08 s) spin for a while after its last call; pyflowcore's
# next sample waits this long so they sleep.  (Right after a PyTorch
# sample, pyflowcore's first call took 8 ms instead of 0.15; 50 ms later,
# 0.3 ms, its own threads waking, which time_sample's untimed first call
# absorbs.)
WORKER_SETTLE_S = 0.1


class _WorkerProcess:
    """An isolated peer's worker: a fresh Python process (``python -m
    pyflowcore.bench --worker NAME``) that stays up for the whole run.  Sent
    ``job J`` on its standard input, it prepares the peer on job J, checks
    its results and calibrates its samples; sent ``sample``, it times one
    sample of the job it holds.  Meanwhile this process waits.  It answers
    each with a JSON line on its standard output (where nothing else goes:
    see ``_worker``).  A worker that dies fails its remaining rows with the
    reason."""

    def __init__(self, backend, directory, manifest, tolerance, timing, ref_name, verbose):
        self.error, self.proc = None, None
        tag = "".join(c if c.isalnum() else "_" for c in backend.name)
        job_file = os.path.join(directory, f"jobs-{tag}.json")
        with open(job_file, "w", encoding="utf-8") as fh:
            json.dump({"tolerance": tolerance, "timing": timing, "reference": ref_name,
                       "jobs": manifest}, fh)
        # The worker must import this very pyflowcore (a source tree need not be installed).
        import pyflowcore
        root = os.path.dirname(os.path.dirname(os.path.abspath(pyflowcore.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]]
                                                     if env.get("PYTHONPATH") else []))
        # Inductor compiles in a pool of subprocesses that it starts, importing
        # PyTorch, in the background after the first compile: seconds of CPU
        # that would land on pyflowcore's next pass.  Compile in-process.
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        # Its messages go to a file, not a pipe nobody reads until the end (a
        # full pipe would stop the worker); with verbose, straight to ours.
        self.stderr_path = os.path.join(directory, f"stderr-{tag}.txt")
        cmd = [sys.executable, "-m", "pyflowcore.bench", "--worker", backend.name,
               "--jobs", job_file] + (["--verbose"] if verbose else [])
        try:
            with open(self.stderr_path, "w", encoding="utf-8") as err:
                self.proc = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=None if verbose else err, text=True, encoding="utf-8")
        except OSError as exc:
            self.error = f"cannot start a worker process: {exc}"[:200]
            return
        hello = self._receive()
        if hello is not None:
            backend.info = {"unavailable": hello["unavailable"], "describe": hello["describe"]}

    def _receive(self):
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        self.close()
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                tail = fh.read().strip().splitlines()[-1:]
        except OSError:
            tail = []
        tail = tail or ["(its messages are above)"]
        self.error = f"worker process exited with code {self.proc.returncode}: {tail[0]}"[:200]
        return None

    def _ask(self, line):
        if self.error is None:
            try:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            except OSError:
                pass  # it has exited: _receive reads the end of its pipe and says why
            return self._receive()
        return None

    def prepare(self, j):
        """Row fields of the peer on job ``j`` before timing (``failed`` once
        the worker is gone); ``sample`` then times it."""
        row = self._ask(f"job {j}")
        return row if row is not None else {"status": "failed", "note": self.error}

    def sample(self):
        """Seconds per call in one sample of the prepared job, or None once
        the worker is gone."""
        answer = self._ask("sample")
        return None if answer is None else answer["sample"]

    def close(self):
        """Let the worker exit (end of its input) and wait for it."""
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _worker(name, job_file, verbose=False):
    """The worker process (see ``_WorkerProcess``): the built-in peer
    ``name`` on the jobs of ``job_file``.  Each ``job J`` line on standard
    input prepares job J and answers its Row fields, each ``sample`` line
    times one sample of it; the answers are JSON lines on standard output."""
    # The answers keep the original standard output to themselves; whatever
    # the peers' libraries print goes to standard error instead.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    backend = _builtin_peer(name)
    with open(job_file, encoding="utf-8") as fh:
        spec = json.load(fh)
    directory = os.path.dirname(job_file)
    missing = backend.unavailable()

    def log(line):
        if verbose:
            print(line, file=sys.stderr, flush=True)
    with answers:
        def send(obj):
            answers.write(json.dumps(obj) + "\n")
            answers.flush()
        send({"unavailable": missing, "describe": "" if missing else backend.describe()})
        timing = spec["timing"]
        prepared = number = None
        for line in iter(sys.stdin.readline, ""):
            command = line.split()
            if command[0] == "sample":
                send({"sample": time_sample(prepared.run, number)})
                continue
            job = spec["jobs"][int(command[1])]
            problem, ref_results = _load_job(directory, job)
            row, prepared = _check_peer(backend, problem, ref_results, missing,
                                        spec["tolerance"][problem.dtype.name],
                                        spec["reference"], log)
            if prepared is not None:
                number = calibrate(prepared.run, warmup=timing["warmup"],
                                   min_time=timing["min_time"])
            send({k: getattr(row, k) for k in _ROW_FIELDS})
    return 0


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
           "ratio = peer median / pyflowcore median (> 1: pyflowcore is faster); an isolated "
           "peer's against pyflowcore's samples taken between its own, pyflowcore's row the "
           "median of all its samples. "
           "compile = JAX `lower().compile()` or torch.compile's first call, not in the median. "
           "rel. err = max|peer - pyflowcore| / max|pyflowcore| over the outputs, "
           f"checked before timing (float64 <= {TOLERANCE['float64']:.0e}, "
           f"float32 <= {TOLERANCE['float32']:.0e}).", "",
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
    parser.add_argument("--same-process", dest="isolate", action="store_false",
                        help="time the peers in this process, not each in a worker process "
                             "of its own (their thread pools then compete with pyflowcore's)")
    # The worker side of the isolated runs (see compare); not for direct use.
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_args(args):
    """Run the benchmark for parsed ``args`` (see ``add_arguments``).

    Returns 0, or 2 for an unknown backend name or an unwritable ``--out``.
    """
    if getattr(args, "worker", None):
        if _builtin_peer(args.worker) is None or not args.jobs:
            print(f"--worker needs a built-in peer name and --jobs; got {args.worker!r}",
                  file=sys.stderr)
            return 2
        return _worker(args.worker, args.jobs, args.verbose)
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
    isolate = getattr(args, "isolate", True)
    if isolate:
        backends = isolated(backends)
    settings = (f"{'quick' if args.quick else 'full'} run: N = {n} (W5: 1 and 64), "
                f"dim {DIM}; median of {timing['repeat']} samples of >= "
                f"{timing['min_time'] * 1e3:.0f} ms after {timing['warmup']} warm-up call(s). "
                + ("pyflowcore timed in the main process, each peer in a process of its own."
                   if isolate else
                   "All backends in one process (--same-process): their OpenMP thread pools "
                   "can spin against each other on few cores."))

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
