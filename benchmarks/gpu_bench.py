"""GPU benchmark of pyflowcore's CUDA kernels.

Usage::

    python benchmarks/gpu_bench.py RESULTS.md [--n 16777216] [--dim 16] [--repeat 10]

For every flow, both float32 and float64, it times ``forward``, ``inverse``
and ``backward`` on ``N`` rows of dimension ``dim`` (CholeskyProduct uses the
triangle size nearest to ``dim``) with CUDA events, and reports the achieved
bandwidth -- the bytes a method must move at least (its inputs read once,
its outputs written once) over its time -- as a fraction of a device-to-device
copy measured in the same run.  Then it times the forward + backward of a
16-layer planar chain beside the same math in PyTorch eager and
``torch.compile`` (when torch with CUDA is installed).  The results are
written as Markdown, with the device name and the date, to the given path.

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


def torch_planar_chain(torch, layers, device, dtype):
    """Forward + log-det of a planar chain (SPEC section 3) with torch leaf tensors."""
    params = [tuple(torch.tensor(np.atleast_1d(p), dtype=dtype, device=device, requires_grad=True)
                    for p in layer) for layer in layers]

    def forward(z):
        x = z
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for u, w, b in params:
            wu = w @ u
            u_hat = u + (torch.nn.functional.softplus(wu) - 1.0 - wu) * w / (w @ w)
            h = torch.tanh(x @ w + b)
            x = x + h[:, None] * u_hat
            log_det = log_det + torch.log(torch.abs(1.0 + (1.0 - h * h) * (w @ u_hat)))
        return x, log_det

    return forward, [p for layer in params for p in layer]


def bench_chain(n, dim, repeat):
    import cupy as cp
    rows = []
    try:
        import torch
        has_torch = torch.cuda.is_available()
    except ImportError:
        torch, has_torch = None, False
    for dtype in ("float32", "float64"):
        chain = pf.Chain([pf.Planar(dim, dtype=dtype, rng=k) for k in range(16)])
        chain.params[:] = np.random.default_rng(0).uniform(-0.5, 0.5, chain.num_params)
        layers = [(lay.params[:dim].copy(), lay.params[dim:2 * dim].copy(), lay.params[2 * dim])
                  for lay in chain.layers]
        chain.to("cuda")
        z = cp.random.default_rng(1).standard_normal((n, dim), dtype=dtype)
        g = cp.ones_like(z)
        gld = cp.ones(n, dtype=dtype)

        def ours():
            chain.forward(z)
            chain.backward(z, g, gld)

        rows.append(("pyflowcore (CUDA kernels)", dtype, gpu_time(ours, repeat) * 1e3))
        if has_torch:
            tdtype = getattr(torch, dtype)
            zt = torch.as_tensor(z, device="cuda")
            gt = torch.ones_like(zt)
            gldt = torch.ones(n, dtype=tdtype, device="cuda")

            def run(fwd, params):
                zz = zt.detach().requires_grad_(True)
                x, ld = fwd(zz)
                loss = (x * gt).sum() + (ld * gldt).sum()
                torch.autograd.grad(loss, [zz, *params])

            fwd, params = torch_planar_chain(torch, layers, "cuda", tdtype)
            rows.append(("PyTorch eager", dtype, gpu_time(lambda: run(fwd, params), repeat) * 1e3))
            try:
                compiled = torch.compile(fwd)
                rows.append(("torch.compile", dtype,
                             gpu_time(lambda: run(compiled, params), repeat) * 1e3))
            except Exception as exc:  # no Triton, unsupported GPU...
                rows.append((f"torch.compile (failed: {type(exc).__name__})", dtype, float("nan")))
        del z, g, gld
        cp.get_default_memory_pool().free_all_blocks()
    return rows, has_torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="Markdown file to write")
    parser.add_argument("--n", type=int, default=2 ** 24, help="rows per batch (default 2**24)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    if not pf.cuda_available():
        sys.exit("gpu_bench: no usable GPU (needs CuPy and an NVIDIA GPU)")
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    device = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    copy_bw = copy_bandwidth(args.repeat)
    flow_rows = bench_flows(args.n, args.dim, args.repeat, copy_bw)
    chain_rows, has_torch = bench_chain(args.n, args.dim, args.repeat)

    lines = [
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
    ]
    for name, dtype, method, ms, gbs, frac in flow_rows:
        lines.append(f"| {name} | {dtype} | {method} | {ms:.3f} | {gbs:.1f} | {frac:.2f} |")
    lines += [
        "",
        f"## 16-layer planar chain, forward + backward (N = {args.n}, dim = {args.dim})",
        "",
        "| implementation | dtype | time (ms) |",
        "|---|---|---:|",
    ]
    for name, dtype, ms in chain_rows:
        lines.append(f"| {name} | {dtype} | {ms:.3f} |")
    if not has_torch:
        lines += ["", "PyTorch with CUDA is not installed here: no comparison."]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
