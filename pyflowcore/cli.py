"""The ``pyflowcore`` command line.

Commands::

    pyflowcore demo [--out pyflowcore-demo.png]
    pyflowcore fit DATA --flow SPEC --out MODEL.npz [--method adam|lbfgs] [--steps N] ...
    pyflowcore sample MODEL.npz -n N [--out FILE]
    pyflowcore log-prob MODEL.npz DATA [--out FILE]

``DATA`` and ``FILE`` are ``.npy`` or ``.csv`` (comma-separated numbers, one
point per row; a header line is skipped); without ``--out`` results are
printed as CSV.  Models are ``pyflowcore.save`` files.

Flow specs
----------
A flow spec names the layers of a chain in the order they are applied to the
base point ``z`` (so the last layer acts on the data side)::

    SPEC  := TERM ("+" TERM)*
    TERM  := LAYER ["*" COUNT]        COUNT copies, each with its own parameters
    LAYER := NAME ["(" [KEY "=" INT ("," KEY "=" INT)*] ")"]

Names: ``planar``, ``radial``, ``scale`` (``ElementwiseScale``), ``shift``
(no arguments) and ``realnvp`` with ``masks`` (even, >= 2), ``layers`` and
``units``.  ``COUNT`` and ``INT`` are written in ASCII digits, and a spec
builds at most ``MAX_LAYERS`` (10,000) layers in all, so ``COUNT`` is 1 to
10,000.  Examples: ``"realnvp(masks=4,layers=2,units=64)+scale+shift"``,
``"planar*8+shift"``.  ``build_flow(spec, dim)`` does the same from Python.

User errors (a missing file, bad data, a malformed spec, a request too large
for memory) print one line on stderr and exit with status 2; no traceback.
"""

import argparse
import math
import os
import re
import sys
import time
import warnings

import numpy as np

from pyflowcore._validation import array_module, to_host

__all__ = ["main", "build_flow", "parse_flow_spec"]

# name -> (class name in pyflowcore.flows, {spec key: constructor keyword})
_LAYERS = {
    "planar": ("Planar", {}),
    "radial": ("Radial", {}),
    "realnvp": ("RealNVP", {"masks": "num_masks", "layers": "num_layers", "units": "units"}),
    "scale": ("ElementwiseScale", {}),
    "shift": ("Shift", {}),
}
_TERM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*(?:\*\s*(\S+))?$", re.S)
_ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+)$")
# ASCII digits only: str.isdigit() also accepts '²' (which int() refuses) and
# other scripts' digits such as '٣' (which int() reads as 3).
_DIGITS = re.compile(r"[0-9]+")
# Layers one spec may build.  Each layer is a Python object with its own
# parameters, so "planar*100000000" would run for minutes before failing.
MAX_LAYERS = 10_000
DEFAULT_SPEC = "realnvp(masks=4,layers=1,units=32)+scale+shift"
SPEC_HELP = f"""\
flow specs name the layers of a chain in the order they are applied to the
base point z (the last layer acts on the data side):

  SPEC  := TERM ("+" TERM)*
  TERM  := LAYER ["*" COUNT]       COUNT copies, each with its own parameters
  LAYER := NAME ["(" [KEY=INT ("," KEY=INT)*] ")"]

  NAME is planar, radial, scale, shift (no arguments) or
  realnvp (masks: even, >= 2, default 2; layers: default 1; units: default 32)
  COUNT and INT are ASCII digits; a spec has at most {MAX_LAYERS} layers in all
  (so COUNT is 1 to {MAX_LAYERS})

examples:
  realnvp(masks=4,layers=2,units=64)+scale+shift
  planar*8+shift
"""


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


# -- flow specs -------------------------------------------------------------
def parse_flow_spec(spec):
    """Parse a flow spec into ``[(name, {keyword: value}), ...]``, one entry per layer.

    Raises
    ------
    ValueError
        For a malformed spec, an unknown name or argument, or more than
        ``MAX_LAYERS`` layers; the message names the offending part.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a flow spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError("empty flow spec; expected e.g. 'realnvp(masks=4)+scale+shift'")
    layers = []
    for term in spec.split("+"):
        term = term.strip()
        m = _TERM.match(term)
        if not term or m is None:
            raise ValueError(f"malformed flow spec {spec!r}: cannot read the term {term!r} "
                             "(expected NAME, NAME(key=value,...) or NAME*COUNT)")
        name, args, count = m.group(1).lower(), m.group(2), m.group(3)
        if name not in _LAYERS:
            raise ValueError(f"unknown flow {name!r} in flow spec {spec!r}; "
                             f"expected one of {', '.join(_LAYERS)}")
        keys = _LAYERS[name][1]
        kwargs = {}
        if args is not None and args.strip():
            for arg in args.split(","):
                am = _ARG.match(arg.strip())
                if am is None:
                    raise ValueError(f"malformed argument {arg.strip()!r} of {name} in flow spec "
                                     f"{spec!r} (expected key=integer)")
                key, value = am.group(1).lower(), am.group(2)
                if key not in keys:
                    allowed = (f"expected one of {', '.join(keys)}" if keys
                               else f"{name} takes no arguments")
                    raise ValueError(f"unknown argument {key!r} for {name} in flow spec "
                                     f"{spec!r}; {allowed}")
                if keys[key] in kwargs:
                    raise ValueError(f"argument {key!r} given twice for {name} in flow spec "
                                     f"{spec!r}")
                if not _DIGITS.fullmatch(value):
                    raise ValueError(f"argument {key}={value} of {name} in flow spec {spec!r} "
                                     "must be a non-negative integer")
                try:
                    kwargs[keys[key]] = int(value)
                except ValueError:   # beyond Python's limit on digits converted
                    raise ValueError(f"argument {key} of {name} in flow spec is too large "
                                     f"({len(value)} digits)") from None
        repeat = 1
        if count is not None:
            digits = count.lstrip("0")
            if not _DIGITS.fullmatch(count) or not digits:
                raise ValueError(f"repeat count {count!r} of {name} in flow spec {spec!r} "
                                 "must be an integer >= 1")
            # Compared as text first: a count of thousands of digits is not converted.
            if len(digits) > len(str(MAX_LAYERS)) or int(digits) > MAX_LAYERS:
                raise ValueError(f"repeat count {count} of {name} in flow spec {spec!r} is too "
                                 f"large: a spec builds at most {MAX_LAYERS} layers")
            repeat = int(count)
        if len(layers) + repeat > MAX_LAYERS:
            raise ValueError(f"flow spec {spec!r} builds more than {MAX_LAYERS} layers, the "
                             "most allowed")
        layers.extend((name, dict(kwargs)) for _ in range(repeat))
    return layers


def build_flow(spec, dim, *, dtype="float64", rng=None):
    """Build the flow described by a spec string (see the module docstring).

    Parameters
    ----------
    spec : str
        E.g. ``"realnvp(masks=4,layers=2,units=64)+scale+shift"`` or
        ``"planar*8+shift"``.
    dim : int
    dtype : {"float64", "float32"}
    rng : None, int or numpy.random.Generator
        Shared by the layers' initialisations, in order.

    Returns
    -------
    Flow
        The single layer, or a ``Chain`` of the layers in spec order.
    """
    from pyflowcore import flows
    from pyflowcore._validation import check_rng
    parsed = parse_flow_spec(spec)
    rng = check_rng(rng)
    layers = []
    for name, kwargs in parsed:
        cls = getattr(flows, _LAYERS[name][0], None)
        if cls is None:
            raise ValueError(f"flow {name!r} ({_LAYERS[name][0]}) is not available in this "
                             "build of pyflowcore")
        layers.append(cls(dim, **kwargs, dtype=dtype, rng=rng))
    return layers[0] if len(layers) == 1 else flows.Chain(layers)


# -- files ------------------------------------------------------------------
def _extension(path, what):
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".csv"):
        raise UserError(f"{what} {path!r} must end in .npy or .csv")
    return ext


def read_points(path, what="data"):
    """Read an ``(N, dim)`` array of finite numbers from ``.npy`` or ``.csv``."""
    ext = _extension(path, what)
    if not os.path.exists(path):
        raise UserError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} file {path!r} is a directory")
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = _read_csv(path)
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {what} file {path!r}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise UserError(f"{what} file {path!r} must hold real numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1 and ext == ".csv":
        arr = arr[:, None]
    if arr.ndim != 2:
        raise UserError(f"{what} in {path!r} must be a 2-D array (N, dim), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"{what} in {path!r} holds no points (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.nonzero(bad.any(axis=1))[0]
        kind = "NaN" if np.isnan(arr).any() else "infinite"
        raise UserError(f"{what} in {path!r} has {kind} values in {rows.size} row(s), "
                        f"the first in row {rows[0]}")
    return arr


def _read_csv(path):
    """Comma-separated numbers; a first line that is not all numbers is a header."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = next((line for line in fh if line.strip() and not line.lstrip().startswith("#")), "")
    try:
        [float(field) for field in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    if not first or (skip and not _has_more_lines(path, first)):
        return np.empty((0, 0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "input contained no data"
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip, comments="#",
                              dtype=np.float64)
    except ValueError as exc:
        # NumPy's hint about usecols is no help for a malformed file.
        reason = str(exc).split("; use `usecols`")[0]
        raise UserError(f"{path!r} is not a CSV file of numbers: {reason}") from None


def _has_more_lines(path, header):
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    return len(lines) > 1


def write_array(arr, path, what="output"):
    if path is None:
        np.savetxt(sys.stdout, arr, delimiter=",", fmt="%.17g")
        return
    ext = _extension(path, what)
    try:
        if ext == ".npy":
            np.save(path, arr)
        else:
            np.savetxt(path, arr, delimiter=",", fmt="%.17g")
    except OSError as exc:
        raise UserError(f"cannot write {what} file {path!r}: {exc}") from None


def load_model(path):
    import pyflowcore
    if not os.path.exists(path):
        raise UserError(f"model file {path!r} does not exist")
    try:
        return pyflowcore.load(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot load model {path!r}: {exc}") from None


# -- commands ---------------------------------------------------------------
def _progress(args):
    return None if args.progress is None else args.progress


def _say(*parts):
    print(*parts, flush=True)


def _device(name):
    """``--device``: its array module (the arrays' way there; ``to_host`` is
    the way back), once a GPU is known to be usable."""
    from pyflowcore import cuda_available
    if name == "cuda" and not cuda_available():
        raise UserError("--device cuda: no usable GPU (needs CuPy and an NVIDIA GPU)")
    return array_module(name)


def cmd_fit(args):
    import pyflowcore
    xp = _device(args.device)
    data = read_points(args.data)
    n, dim = data.shape
    try:
        flow = build_flow(args.flow, dim, dtype=args.dtype, rng=args.seed).to(args.device)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    _say(f"data: {n} points of dim {dim} from {args.data}")
    _say(f"flow: {args.flow} ({flow.num_params} parameters, {flow.dtype})")
    val = None
    if args.validation_split:
        order = np.random.default_rng(args.seed).permutation(n)
        n_val = int(round(args.validation_split * n))
        if n_val < 1 or n_val >= n:
            raise UserError(f"--validation-split {args.validation_split} leaves no training or "
                            f"validation points for {n} points")
        val, data = data[order[:n_val]], data[order[n_val:]]
    data = xp.asarray(data)
    val = None if val is None else xp.asarray(val)
    kwargs = dict(steps=args.steps, progress=_progress(args))
    if args.method == "adam":
        kwargs.update(learning_rate=args.lr, batch_size=args.batch_size, rng=args.seed)
    if val is not None:
        kwargs.update(validation_data=val, patience=args.patience)
    t0 = time.perf_counter()
    result = pyflowcore.fit(flow, data, method=args.method, **kwargs)
    elapsed = time.perf_counter() - t0
    _say(f"{args.method}: {result.n_iter} iterations in {elapsed:.1f} s; {result.message}")
    _say(f"mean log-likelihood (training): {float(flow.log_prob(data).mean()):.4f}")
    if val is not None:
        _say(f"mean log-likelihood (validation): {float(flow.log_prob(val).mean()):.4f}")
    out = args.out if args.out.endswith(".npz") else args.out + ".npz"
    try:
        pyflowcore.save(flow, out)
    except OSError as exc:
        raise UserError(f"cannot write model file {out!r}: {exc}") from None
    _say(f"saved the model to {out}")
    if not result.success:
        print(f"pyflowcore fit: warning: the fit did not succeed: {result.message}", file=sys.stderr)
        return 1
    return 0


def cmd_sample(args):
    _device(args.device)
    flow = load_model(args.model).to(args.device)
    try:
        x = to_host(flow.sample(args.n, rng=args.seed))
    except (ValueError, OverflowError) as exc:
        # NumPy's "Maximum allowed dimension exceeded" for an -n past any array.
        raise UserError(f"cannot draw -n {args.n} samples of dim {flow.dim}: {exc}") from None
    write_array(x, args.out)
    if args.out is not None:
        _say(f"wrote {args.n} samples of dim {flow.dim} to {args.out}")
    return 0


def cmd_log_prob(args):
    xp = _device(args.device)
    flow = load_model(args.model).to(args.device)
    data = read_points(args.data)
    if data.shape[1] != flow.dim:
        raise UserError(f"data in {args.data!r} has {data.shape[1]} columns but the model has "
                        f"dim {flow.dim}")
    values = to_host(flow.log_prob(xp.asarray(data)))
    write_array(values, args.out)
    if args.out is not None:
        _say(f"wrote {values.shape[0]} log-densities to {args.out} "
             f"(mean {float(np.mean(values)):.4f})")
    return 0


def _gaussian_log_lik(train, test):
    """Held-out mean log-likelihood of the maximum-likelihood Gaussian of ``train``."""
    mu = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, (test - mu).T)
    d = train.shape[1]
    return float(np.mean(-0.5 * np.sum(r * r, axis=0)) - np.sum(np.log(np.diag(chol)))
                 - 0.5 * d * math.log(2 * math.pi))


def cmd_demo(args):
    import pyflowcore
    from pyflowcore import datasets, flows
    rng = np.random.default_rng(args.seed)
    try:
        train = datasets.two_moons(args.n, rng=rng)
        test = datasets.two_moons(args.n, rng=rng)
    except ValueError as exc:   # an --n too large for any array
        raise UserError(f"--n {args.n}: {exc}") from None
    if hasattr(flows, "RealNVP"):
        spec = "realnvp(masks=6,layers=1,units=32)+scale+shift"
    elif hasattr(flows, "Planar"):
        spec = "planar*16+scale+shift"
    else:
        spec = "scale+shift"
    flow = build_flow(spec, 2, rng=rng)
    _say(f"two moons: {args.n} training and {args.n} held-out points")
    _say(f"flow: {spec} ({flow.num_params} parameters); Adam, {args.steps} steps")
    t0 = time.perf_counter()
    result = pyflowcore.fit(flow, train, method="adam", steps=args.steps, batch_size=256,
                            learning_rate=args.lr, rng=rng, progress=_progress(args))
    elapsed = time.perf_counter() - t0
    flow_ll = float(np.mean(flow.log_prob(test)))
    gauss_ll = _gaussian_log_lik(train, test)
    _say(f"fitted in {elapsed:.1f} s ({result.message})")
    _say("held-out mean log-likelihood:")
    _say(f"  flow            {flow_ll:8.4f}")
    _say(f"  single Gaussian {gauss_ll:8.4f}")
    if args.out:
        try:
            import matplotlib
        except ImportError:
            _say("matplotlib is not installed: skipping the picture "
                 "(pip install 'pyflowcore[plot]' to get it)")
            return 0
        matplotlib.use("Agg")
        _demo_plot(flow, train, args.out, args.seed, flow_ll, gauss_ll)
        _say(f"wrote {args.out}")
    return 0 if result.success else 1


def _demo_plot(flow, train, path, seed, flow_ll, gauss_ll):
    import matplotlib.pyplot as plt
    lo, hi = np.array([-1.6, -1.1]), np.array([2.6, 1.6])
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 220), np.linspace(lo[1], hi[1], 150))
    density = np.exp(flow.log_prob(np.stack([gx.ravel(), gy.ravel()], axis=1))).reshape(gx.shape)
    samples = flow.sample(train.shape[0], rng=seed)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4), sharex=True, sharey=True)
    axes[0].scatter(train[:, 0], train[:, 1], s=2, alpha=0.5, color="tab:blue")
    axes[0].set_title("training data (two moons)", fontsize=10)
    axes[1].imshow(density, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                   cmap="magma", aspect="auto")
    axes[1].set_title(f"fitted density (held-out log-lik {flow_ll:.2f})", fontsize=10)
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, color="tab:orange")
    axes[2].set_title("samples from the flow", fontsize=10)
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    fig.suptitle(f"pyflowcore demo: flow {flow_ll:.2f} vs single Gaussian {gauss_ll:.2f} "
                 "nats/point", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=72)
    except OSError as exc:
        raise UserError(f"cannot write the picture {path!r}: {exc}") from None
    finally:
        plt.close(fig)


# -- argument parsing -------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise instead of exiting, so that
    ``main`` can return the status, and are reported in one line (argparse
    would print the usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def exit(self, status=0, message=None):
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


class _Exit(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _int_at_least(minimum):
    """An argparse type: an int >= minimum (argparse names the option in its error).

    Seeds use it too: NumPy refuses a negative seed only when drawing, with a
    message that does not say which argument was wrong.
    """
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _float_in(description, accept):
    """An argparse type: a float for which accept(value) holds."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value
    return parse


_positive_float = _float_in("a number > 0", lambda v: v > 0 and math.isfinite(v))
_fraction = _float_in("a number in [0, 1)", lambda v: 0 <= v < 1)


def _add_progress(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")


def _add_device(p):
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the flow runs (default %(default)s; cuda needs CuPy and a GPU)")


def make_parser():
    spec_help = ("flow spec: layers applied to z in order, joined by '+'; NAME*COUNT repeats a "
                 "layer; names planar, radial, scale, shift, realnvp(masks=M,layers=L,units=U). "
                 f"Default {DEFAULT_SPEC!r}")
    parser = _Parser(prog="pyflowcore", description="Normalizing flows with hand-written kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("demo", help="fit a flow to two moons and compare with a Gaussian")
    p.add_argument("--out", default="pyflowcore-demo.png",
                   help="PNG to write when matplotlib is installed (default %(default)s; "
                        "'' for none)")
    p.add_argument("--n", type=_int_at_least(10), default=2000,
                   help="training (and held-out) points (default %(default)s)")
    p.add_argument("--steps", type=_int_at_least(1), default=2500,
                   help="Adam steps (default %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=5e-3, help="learning rate")
    p.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="data, initialisation and batch order (default %(default)s)")
    _add_progress(p)
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("fit", help="fit a flow to data (.npy or .csv) by maximum likelihood",
                       epilog=SPEC_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="(N, dim) points, .npy or .csv")
    p.add_argument("--flow", default=DEFAULT_SPEC, metavar="SPEC", help=spec_help)
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="where to save the model")
    p.add_argument("--method", choices=("adam", "lbfgs"), default="adam")
    p.add_argument("--steps", type=_int_at_least(1), default=None,
                   help="iterations (default 1000 for adam, 500 for lbfgs)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate")
    p.add_argument("--batch-size", type=_int_at_least(1), default=256)
    p.add_argument("--validation-split", type=_fraction, default=0.0,
                   help="fraction held out for validation; keeps the best parameters")
    p.add_argument("--patience", type=_int_at_least(1), default=None,
                   help="with --validation-split: stop after this many evaluations without "
                        "improvement")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="initialisation and batch order, an integer >= 0 (default %(default)s)")
    _add_device(p)
    _add_progress(p)
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser("sample", help="draw samples from a saved model")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("-n", type=_int_at_least(0), required=True, help="number of samples")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=".npy or .csv (default: CSV on stdout)")
    p.add_argument("--seed", type=_int_at_least(0), default=None,
                   help="an integer >= 0 (default: a fresh random seed)")
    _add_device(p)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("log-prob", help="log-density of points under a saved model")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("data", metavar="DATA", help="(N, dim) points, .npy or .csv")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=".npy or .csv (default: CSV on stdout)")
    _add_device(p)
    p.set_defaults(run=cmd_log_prob)
    from pyflowcore import bench
    bench.add_arguments(sub.add_parser("bench", help=bench.HELP)).set_defaults(run=bench.run_args)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 failed fit, 2 user error)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except _Exit as exc:
        return exc.status
    if getattr(args, "patience", None) is not None and not args.validation_split:
        print("pyflowcore fit: error: --patience needs --validation-split", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except UserError as exc:
        print(f"pyflowcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        # A huge -n, --n or flow: NumPy's message says how much it tried to allocate.
        detail = f": {exc}" if str(exc) else ""
        print(f"pyflowcore {args.command}: error: ran out of memory{detail}; ask for fewer "
              "points or a smaller flow", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyflowcore {args.command}: interrupted", file=sys.stderr)
        return 130
