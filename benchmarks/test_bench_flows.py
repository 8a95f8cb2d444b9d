"""pytest-benchmark cases: every flow's forward, inverse, both VJPs and fused losses.

Run with ``python -m pytest benchmarks --benchmark-only`` (add
``--benchmark-columns=median,iqr,rounds`` for a compact table).  The sizes
follow the project's design point: float64, dim 16, N = 65,536.
"""

import numpy as np
import pytest

import peers
import pyflowcore as pf

N, DIM = 65_536, 16


def chain_of(cls, layers=16):
    """A chain of `layers` flows of one row-wise class, random parameters."""
    def make(dtype, rng):
        flows = []
        for _ in range(layers):
            f = cls(DIM, dtype=dtype, rng=rng)
            f.set_params(rng.normal(0, 0.5, f.num_params))
            flows.append(f)
        return pf.Chain(flows)
    return make


planar_chain = chain_of(pf.Planar)


def realnvp(dtype, rng):
    f = pf.RealNVP(DIM, num_masks=8, num_layers=2, units=64, dtype=dtype, rng=rng)
    f.set_params(rng.normal(0, 0.05, f.num_params))
    return f


def simple(cls):
    def make(dtype, rng):
        f = cls(DIM, dtype=dtype)
        f.set_params(rng.uniform(0.5, 2.0, f.num_params))
        return f
    return make


def cholesky(dtype, rng):
    return pf.CholeskyProduct(5, dtype=dtype)  # dim 15, the triangular number nearest 16


FLOWS = {
    "planar16": planar_chain,
    "radial16": chain_of(pf.Radial),
    "realnvp8x2x64": realnvp,
    "scale": simple(pf.ElementwiseScale),
    "shift": simple(pf.Shift),
    "cholesky5": cholesky,
}


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.mark.parametrize("name", FLOWS)
@pytest.mark.parametrize("method", ["forward", "inverse", "backward", "inverse_backward",
                                    "quadratic", "nll"])
def test_flow(benchmark, name, method, dtype):
    rng = np.random.default_rng(0)
    flow = FLOWS[name](dtype, rng)
    z = rng.standard_normal((N, flow.dim)).astype(dtype)
    x, _ = flow.forward(z)
    g = rng.standard_normal(z.shape).astype(dtype)
    gld = np.ones(N, dtype=dtype)
    out_points = np.empty_like(z)
    out = (out_points, np.empty(N, dtype=dtype))
    grad_out = (out_points, np.empty(flow.num_params, dtype=dtype))
    call = {
        "forward": lambda: flow.forward(z, out=out),
        "inverse": lambda: flow.inverse(x, out=out),
        "backward": lambda: flow.backward(z, g, gld, out=grad_out),
        "inverse_backward": lambda: flow.inverse_backward(x, g, gld, out=grad_out),
        # the loss of W2/W4 (mean(log_det + ||x||^2)) and the maximum-likelihood
        # loss, each with its gradient, in one call
        "quadratic": lambda: flow.quadratic_loss_and_grad(z, 2.0 / N, 1.0 / N, out=grad_out),
        "nll": lambda: flow.quadratic_loss_and_grad(x, 1.0 / N, -1.0 / N, inverse=True,
                                                    out=grad_out),
    }[method]
    benchmark.group = f"{name}-{method}-{dtype}"
    benchmark(call)


def test_numpy_planar16_forward(benchmark, dtype):
    """The vectorised NumPy peer of ``planar16-forward``."""
    rng = np.random.default_rng(0)
    chain = planar_chain(dtype, rng)
    z = rng.standard_normal((N, DIM)).astype(dtype)
    layers = [(f.params[:DIM], f.params[DIM:2 * DIM], f.params[2 * DIM]) for f in chain.layers]
    x_ref, ld_ref = peers.numpy_planar_chain_forward(layers, z)
    x, ld = chain.forward(z)
    tol = 1e-9 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(x, x_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(ld, ld_ref, rtol=tol, atol=tol)
    benchmark.group = f"planar16-forward-{dtype}"
    benchmark(peers.numpy_planar_chain_forward, layers, z)


def test_torch_planar16_backward(benchmark, dtype):
    """PyTorch autograd (CPU) peer of ``planar16-backward``, where torch is installed."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    chain = planar_chain(dtype, rng)
    z_np = rng.standard_normal((N, DIM)).astype(dtype)
    layers = [(f.params[:DIM], f.params[DIM:2 * DIM], f.params[2 * DIM]) for f in chain.layers]
    forward, leaves = peers.torch_planar_chain(torch, layers, getattr(torch, dtype))
    z = torch.tensor(z_np)

    def step():
        for p in leaves:
            p.grad = None
        x, ld = forward(z)
        (x.sum() + ld.sum()).backward()

    benchmark.group = f"planar16-backward-{dtype}"
    benchmark(step)


@pytest.mark.parametrize("n", [1, 64])
def test_planar_small_batch(benchmark, n):
    """Per-call overhead: one planar layer on 1 and 64 points."""
    rng = np.random.default_rng(0)
    flow = pf.Planar(DIM, rng=rng)
    z = rng.standard_normal((n, DIM))
    benchmark.group = f"planar1-forward-N{n}"
    benchmark(flow.forward, z)
