"""GPU benchmark of pyflowcore's CUDA kernels.

Usage::

    python benchmarks/gpu_bench.py RESULTS.md [--n 16777216] [--n-realnvp 1048576]
        [--dim 16] [--repeat 10]

For every flow, both float32 and float64, it times ``forward``, ``inverse``
and ``backward`` on ``N`` rows of dimension ``dim`` (CholeskyProduct uses the
triangle size nearest to ``dim``) with CUDA events, and reports the achieved
bandwidth -- the bytes a method must move at least (its inputs read once,
its outputs written once) over its time -- as a fraction of a device-to-device
copy measured in the same run.  Then it times the forward + backward of a
16-layer planar chain (N rows) and of a Real NVP of 8 masks with 2 x 64 tanh
units (``--n-realnvp`` rows) beside the same math in PyTorch eager and
``torch.compile`` (``pyflowcore._peers``, when torch with CUDA is
installed), each peer's gradients first compared with pyflowcore's.  The
results are written as Markdown, with the device name and the date, to the
given path.

Times are medians over ``--repeat`` runs after one warm-up run (which also
compiles the kernels).
"""

import argparse
import datetime
import math
import statistics
import sys
from pathlib import Path

import numpy as np

try:
    import pyflowcore as pf
except ImportError:  # run from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pyflowcore as pf
from pyflowcore import _peers


def gpu_time(fn, repeat):
    """Median seconds of fn() over `repeat` runs, after one warm-up."""
    import cupy as cp
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def copy_bandwidth(repeat):
    """Bytes per second of a device-to-device copy (read + write) of 1 GiB."""
    import cupy as cp
    src = cp.ones(2 ** 27, dtype=cp.float64)
    dst = cp.empty_like(src)
    t = gpu_time(lambda: cp.copyto(dst, src), repeat)
    return 2 * src.nbytes / t


def make_flows(dim, dtype):
    n_chol = max(1, int((math.isqrt(8 * dim + 1) - 1) // 2))
    rng = np.random.default_rng(0)
    flows = {
        "ElementwiseScale": pf.ElementwiseScale(dim, dtype=dtype),
        "Shift": pf.Shift(dim, dtype=dtype),
        "Planar": pf.Planar(dim, dtype=dtype, rng=rng),
        "Radial": pf.Radial(dim, dtype=dtype, rng=rng),
        "RealNVP(2 masks, 1x32)": pf.RealNVP(dim, dtype=dtype, rng=rng),
        f"CholeskyProduct({n_chol}) [dim {n_chol * (n_chol + 1) // 2}]":
            pf.CholeskyProduct(n_chol, dtype=dtype),
        "Chain of 16 Planar": pf.Chain([pf.Planar(dim, dtype=dtype, rng=rng) for _ in range(16)]),
    }
    for flow in flows.values():
        if flow.num_params:
            flow.params[:] += rng.uniform(-0.1, 0.1, flow.num_params).astype(dtype)
    return flows


def bench_flows(n, dim, repeat, copy_bw):
    import cupy as cp
    rows = []
    for dtype in ("float32", "float64"):
        for name, flow in make_flows(dim, dtype).items():
            flow.to("cuda")
            d = flow.dim
            item = np.dtype(dtype).itemsize
            z = cp.random.default_rng(1).standard_normal((n, d), dtype=dtype)
            x, _ = flow.forward(z)
            g = cp.ones_like(z)
            gld = cp.ones(n, dtype=dtype)
            out = (cp.empty_like(z), cp.empty(n, dtype=dtype))
            gout = (cp.empty_like(z), cp.empty(flow.num_params, dtype=dtype))
            cases = [
                ("forward", lambda: flow.forward(z, out=out), (2 * d + 1) * n * item),
                ("inverse", lambda: flow.inverse(x, out=out), (2 * d + 1) * n * item),
                ("backward", lambda: flow.backward(z, g, gld, out=gout), (3 * d + 1) * n * item),
            ]
            for method, fn, nbytes in cases:
                t = gpu_time(fn, repeat)
                bw = nbytes / t
                rows.append((name, dtype, method, t * 1e3, bw / 1e9, bw / copy_bw))
            del z, x, g, gld, out, gout
            cp.get_default_memory_pool().free_all_blocks()
    return rows


def torch_vjp(torch, spec, dim, theta, z, compiled=False):
    """The model ``spec`` of ``pyflowcore._peers`` (SPEC.md's formulas, the
    same code the CPU comparison times) in PyTorch at parameters ``theta`` on
    the tensor ``z``: a closure running the forward and, through autograd,
    the VJP of x and log_det with all-ones cotangents -- pyflowcore's
    ``backward(z, 1, 1)`` -- and returning (grad_z, grad_theta).  With
    ``compiled`` the forward goes through ``torch.compile``."""
    forward = _peers.make_model(_peers.torch_ops(torch), spec, dim, z)
    if compiled:
        forward = torch.compile(forward)
    theta = torch.as_tensor(theta, dtype=z.dtype, device=z.device).requires_grad_(True)

    def run():
        zz = z.detach().requires_grad_(True)
        x, log_det = forward(theta, zz)
        return torch.autograd.grad(x.sum() + log_det.sum(), [zz, theta])

    return run


def rel_err(ours, peer):
    """max |peer - ours| / max |ours| over both gradients (NumPy arrays)."""
    return max(float(np.max(np.abs(p - o)) / max(np.max(np.abs(o)), 1e-300))
               for o, p in zip(ours, peer))


def bench_vs_torch(make_flow, spec, n, repeat):
    """forward + backward of ``make_flow(dtype)`` on the GPU beside the same
    math in PyTorch eager and ``torch.compile``; each peer's gradients are
    first compared with ours.  Rows: (implementation, dtype, ms, rel. err)."""
    import cupy as cp
    rows = []
    try:
        import torch
        has_torch = torch.cuda.is_available()
    except ImportError:
        torch, has_torch = None, False
    for dtype in ("float32", "float64"):
        flow = make_flow(dtype)
        theta = np.array(flow.params)
        flow.to("cuda")
        z = cp.random.default_rng(1).standard_normal((n, flow.dim), dtype=dtype)
        g = cp.ones_like(z)
        gld = cp.ones(n, dtype=dtype)
        out = (cp.empty_like(z), cp.empty(n, dtype=dtype))
        gout = (cp.empty_like(z), cp.empty(flow.num_params, dtype=dtype))

        def ours():
            flow.forward(z, out=out)
            flow.backward(z, g, gld, out=gout)

        rows.append(("pyflowcore (CUDA kernels)", dtype, gpu_time(ours, repeat) * 1e3, ""))
        if has_torch:
            ours()
            mine = [cp.asnumpy(a) for a in gout]
            zt = torch.as_tensor(z, device="cuda")
            for label, compiled in (("PyTorch eager", False), ("torch.compile", True)):
                try:
                    run = torch_vjp(torch, spec, flow.dim, theta, zt, compiled)
                    err = rel_err(mine, [t.detach().cpu().numpy() for t in run()])
                    rows.append((label, dtype, gpu_time(run, repeat) * 1e3, f"{err:.0e}"))
                except Exception as exc:  # no Triton, unsupported GPU, out of memory...
                    rows.append((f"{label} (failed: {type(exc).__name__})", dtype,
                                 float("nan"), ""))
            del zt
            torch.cuda.empty_cache()
        del z, g, gld, out, gout
        cp.get_default_memory_pool().free_all_blocks()
    return rows, has_torch


def planar_chain(dim):
    def make(dtype):
        chain = pf.Chain([pf.Planar(dim, dtype=dtype, rng=k) for k in range(16)])
        chain.params[:] = np.random.default_rng(0).uniform(-0.5, 0.5, chain.num_params)
        return chain
    return make


def realnvp_8x2x64(dim):
    def make(dtype):
        flow = pf.RealNVP(dim, num_masks=8, num_layers=2, units=64, dtype=dtype, rng=0)
        flow.params[:] *= 0.5
        return flow
    return make


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="Markdown file to write")
    parser.add_argument("--n", type=int, default=2 ** 24, help="rows per batch (default 2**24)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--n-realnvp", type=int, default=2 ** 20,
                        help="rows of the Real NVP comparison (default 2**20)")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    if not pf.cuda_available():
        sys.exit("gpu_bench: no usable GPU (needs CuPy and an NVIDIA GPU)")
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    lines = []

    def write(*new_lines):
        # After every section, so that a run cut short keeps what it measured.
        lines.extend(new_lines)
        Path(args.output).write_text("\n".join(lines) + "\n")
        print("\n".join(new_lines), flush=True)

    copy_bw = copy_bandwidth(args.repeat)
    write(
        "# pyflowcore GPU benchmark",
        "",
        f"- device: {device}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CuPy {cp.__version__}, pyflowcore {pf.__version__}",
        f"- N = {args.n} rows, dim = {args.dim}, median of {args.repeat} runs",
        f"- device-to-device copy: {copy_bw / 1e9:.1f} GB/s (read + write)",
        "",
        "Bandwidth counts the bytes a method must move at least: forward and inverse read",
        "N x dim and write N x dim + N values; backward reads N x dim twice and N, and",
        "writes N x dim.",
        "",
        "| flow | dtype | method | time (ms) | GB/s | fraction of copy |",
        "|---|---|---|---:|---:|---:|",
    )
    write(*(f"| {name} | {dtype} | {method} | {ms:.3f} | {gbs:.1f} | {frac:.2f} |"
            for name, dtype, method, ms, gbs, frac in bench_flows(args.n, args.dim, args.repeat,
                                                                 copy_bw)))
    has_torch = False
    for title, make_flow, spec, n in (
            (f"16-layer planar chain, forward + backward (N = {args.n}, dim = {args.dim})",
             planar_chain(args.dim), ("planar", 16), args.n),
            (f"Real NVP (8 masks, 2 x 64 tanh units), forward + backward "
             f"(N = {args.n_realnvp}, dim = {args.dim})",
             realnvp_8x2x64(args.dim), ("realnvp", 8, 2, 64), args.n_realnvp)):
        rows, has_torch = bench_vs_torch(make_flow, spec, n, args.repeat)
        ours = {dtype: ms for name, dtype, ms, _ in rows if name.startswith("pyflowcore")}
        write("", f"## {title}", "",
              "| implementation | dtype | time (ms) | ratio | rel. err of the gradients |",
              "|---|---|---:|---:|---:|",
              *(f"| {name} | {dtype} | {ms:.3f} | {ms / ours[dtype]:.2f} | {err} |"
                for name, dtype, ms, err in rows))
    if not has_torch:
        write("", "PyTorch with CUDA is not installed here: no comparison.")

if __name__ == "__main__":
    main()
