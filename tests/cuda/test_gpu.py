"""Every flow on the GPU: the generic battery on ``to("cuda")`` with CuPy
inputs, agreement with the CPU kernels, edge cases and device mixing.

The CPU kernels are checked against the plain-NumPy references and finite
differences in ``tests/flows``; here the GPU is checked against the same
references and, at tight tolerances, against the CPU.
"""

import numpy as np
import pytest

import pyflowcore as pf
from tests.reference import all_cases

cp = pytest.importorskip("cupy", reason="needs CuPy and an NVIDIA GPU")

pytestmark = pytest.mark.gpu
# Run on the CPU by tests/cuda/emulator (PYFLOWCORE_CUDA_EMULATOR=1), not on a GPU.
EMULATED = cp.__version__.endswith("emulator")

CASES = all_cases()
DTYPES = ["float64", "float32"]
# Reference tolerance of float32 (as in tests/flows/test_common.py) ...
RTOL_REF = {"float64": 1e-10, "float32": 2e-4}
# ... and of GPU against CPU, same dtype, same parameters.
RTOL_CPU = {"float64": 1e-12, "float32": 1e-5}


def case_params(dtypes=DTYPES):
    return [pytest.param(case, dim, dtype, id=f"{case.name}-{dim}-{dtype}")
            for case in CASES for dim in case.dims for dtype in dtypes]


def build_pair(case, dim, dtype, seed=0, n=7):
    """The same flow twice (same seed): one stays on the CPU, one moves to the GPU."""
    cpu = case.make(dim, dtype, np.random.default_rng(seed))
    gpu = case.make(dim, dtype, np.random.default_rng(seed)).to("cuda")
    z = case.sample_z(np.random.default_rng(seed + 100), n, cpu.dim).astype(cpu.dtype)
    return cpu, gpu, z


def host(a):
    return cp.asnumpy(a) if isinstance(a, cp.ndarray) else np.asarray(a)


def close(actual, expected, rtol):
    actual, expected = host(actual), np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def as_close_as_cpu(actual, cpu, exact, rtol):
    """The GPU's ``actual`` agrees with the CPU's result ``cpu`` to ``rtol``, or
    is at most twice as far from ``exact`` (the same map in float64 at the
    same rounded inputs and parameters) as the CPU is.

    The second clause is for float32 at ill-conditioned rows: where rounding
    the input by one unit moves the exact result by more than ``rtol`` (the
    inverse VJP of a chain at points far out moves by 1e-4), two correct
    implementations that round differently cannot agree to ``rtol``.
    """
    actual, cpu, exact = host(actual), np.asarray(cpu), np.asarray(exact)
    scale = max(1.0, float(np.abs(cpu).max(initial=0.0)))
    if np.all(np.abs(actual - cpu) <= rtol * scale):
        return
    err_gpu = float(np.abs(actual - exact).max())
    err_cpu = float(np.abs(cpu - exact).max())
    assert err_gpu <= 2 * err_cpu + rtol * scale, (
        f"GPU off the float64 result by {err_gpu:.3g}, the CPU by {err_cpu:.3g}")


# -- the generic battery ---------------------------------------------------------

@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_forward_matches_reference(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    x, log_det = flow.forward(cp.asarray(z))
    assert isinstance(x, cp.ndarray) and isinstance(log_det, cp.ndarray)
    assert x.dtype == flow.dtype and log_det.dtype == flow.dtype
    assert x.shape == z.shape and log_det.shape == (z.shape[0],)
    x_ref, ld_ref = case.reference(cp.asnumpy(flow.params).astype(np.float64), z.astype(np.float64))
    close(x, x_ref, RTOL_REF[dtype])
    close(log_det, ld_ref, RTOL_REF[dtype])


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_inverse_round_trip(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    x, log_det = flow.forward(cp.asarray(z))
    z_back, log_det_inv = flow.inverse(x)
    close(z_back, z, 10 * RTOL_REF[dtype])
    close(log_det_inv, -cp.asnumpy(log_det), 10 * RTOL_REF[dtype])


def in_float64(case, dim, flow):
    """``flow``'s map in float64, at its (rounded) parameters."""
    return case.make(dim, "float64", np.random.default_rng(0)).set_params(
        flow.params.astype(np.float64))


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_agrees_with_cpu_on_random_parameters(case, dim, dtype):
    cpu, gpu, z = build_pair(case, dim, dtype, n=300)
    exact = in_float64(case, dim, cpu)
    rng = np.random.default_rng(7)
    tol = RTOL_CPU[dtype]
    x, ld = cpu.forward(z)
    for got, want, ref in zip(gpu.forward(cp.asarray(z)), (x, ld), exact.forward(*f64(z))):
        as_close_as_cpu(got, want, ref, tol)
    zi, ldi = cpu.inverse(x)
    for got, want, ref in zip(gpu.inverse(cp.asarray(x)), (zi, ldi), exact.inverse(*f64(x))):
        as_close_as_cpu(got, want, ref, tol)
    g = rng.standard_normal(z.shape).astype(cpu.dtype)
    gld = rng.standard_normal(z.shape[0]).astype(cpu.dtype)
    for name, v in (("backward", z), ("inverse_backward", x)):
        gv, gp = getattr(cpu, name)(v, g, gld)
        gvg, gpg = getattr(gpu, name)(cp.asarray(v), cp.asarray(g), cp.asarray(gld))
        assert isinstance(gvg, cp.ndarray) and isinstance(gpg, cp.ndarray)
        assert gpg.shape == (cpu.num_params,)
        gv_ref, gp_ref = getattr(exact, name)(*f64(v, g, gld))
        as_close_as_cpu(gvg, gv, gv_ref, tol)
        as_close_as_cpu(gpg, gp, gp_ref, tol)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_quadratic_loss_and_grad_agrees_with_cpu(case, dim, dtype):
    # On the GPU the loss composes the map and its VJP; on the CPU Real NVP
    # and row-wise runs fuse them.
    cpu, gpu, z = build_pair(case, dim, dtype, n=300)
    exact = in_float64(case, dim, cpu)
    x = cpu.forward(z)[0]
    for v, inverse in ((z, False), (x, True)):
        loss, gv, gp = cpu.quadratic_loss_and_grad(v, 0.7, -1.3, inverse=inverse)
        loss_g, gvg, gpg = gpu.quadratic_loss_and_grad(cp.asarray(v), 0.7, -1.3,
                                                       inverse=inverse)
        assert isinstance(loss_g, float) and isinstance(gvg, cp.ndarray)
        np.testing.assert_allclose(loss_g, loss, rtol=10 * RTOL_CPU[dtype])
        _, gv_ref, gp_ref = exact.quadratic_loss_and_grad(*f64(v), 0.7, -1.3, inverse=inverse)
        as_close_as_cpu(gvg, gv, gv_ref, RTOL_CPU[dtype])
        as_close_as_cpu(gpg, gp, gp_ref, RTOL_CPU[dtype])


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_parameter_gradients_are_deterministic(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype, n=5000)
    z = cp.asarray(z)
    g = cp.ones_like(z)
    first = flow.backward(z, g, 1.0)[1]
    again = flow.backward(z, g, 1.0)[1]
    cp.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_single_point_and_empty_batch(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    z = cp.asarray(z)
    x, log_det = flow.forward(z)
    x1, ld1 = flow.forward(z[3])
    assert x1.shape == (flow.dim,) and ld1.shape == ()
    close(x1, cp.asnumpy(x[3]), 1e-13)
    close(ld1, cp.asnumpy(log_det[3]), 1e-13)
    z1, ldi1 = flow.inverse(x[3])
    assert z1.shape == (flow.dim,) and ldi1.shape == ()
    g1, gp1 = flow.backward(z[3], cp.ones(flow.dim), 1.0)
    assert g1.shape == (flow.dim,) and gp1.shape == (flow.num_params,)
    assert flow.log_prob(x[3]).shape == ()

    empty = cp.zeros((0, flow.dim))
    for method in (flow.forward, flow.inverse):
        out, ld = method(empty)
        assert isinstance(out, cp.ndarray) and out.shape == (0, flow.dim) and ld.shape == (0,)
    cpu = case.make(dim, dtype, np.random.default_rng(0))
    for name in ("backward", "inverse_backward"):
        g, gp = getattr(flow, name)(empty, empty, cp.zeros(0))
        assert g.shape == (0, flow.dim)
        # The same as the CPU's (zero, or what the empty sum gives the chain rule).
        np.testing.assert_array_equal(cp.asnumpy(gp), getattr(cpu, name)(
            np.zeros((0, flow.dim)), np.zeros((0, flow.dim)), np.zeros(0))[1])
    assert flow.log_prob(empty).shape == (0,)
    assert flow.sample(0).shape == (0, flow.dim)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_distribution_methods(case, dim, dtype):
    cpu, flow, _ = build_pair(case, dim, dtype)
    x, logp = flow.sample_and_log_prob(50, rng=3)
    assert isinstance(x, cp.ndarray) and x.shape == (50, flow.dim) and logp.shape == (50,)
    assert x.dtype == flow.dtype and logp.dtype == flow.dtype
    # Base points are drawn on the host: a seed gives the same samples as on the CPU.
    x_cpu, logp_cpu = cpu.sample_and_log_prob(50, rng=3)
    close(x, x_cpu, RTOL_CPU[dtype])
    close(logp, logp_cpu, RTOL_CPU[dtype])
    close(flow.log_prob(x), cp.asnumpy(logp), 10 * RTOL_REF[dtype])


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_out_arrays_overlapping_the_inputs(case, dim, dtype):
    # On the GPU every overlap of an out= array with an input is copied
    # first (in place included): the results are those without out=.
    _, flow, z = build_pair(case, dim, dtype)
    z = cp.asarray(z)
    g = cp.asarray(np.random.default_rng(1).standard_normal(z.shape))
    x_ref, ld_ref = flow.forward(z)
    grad_z_ref, grad_params_ref = flow.backward(z, g, 1.0)
    buf = z.copy()
    x, ld = flow.forward(buf, out=(buf, cp.empty(len(z))))
    assert x is buf
    cp.testing.assert_array_equal(x, x_ref)
    cp.testing.assert_array_equal(ld, ld_ref)
    buf = z.copy()
    grad_z, grad_params = flow.backward(buf, g, 1.0, out=(buf, cp.empty(flow.num_params)))
    cp.testing.assert_array_equal(grad_z, grad_z_ref)
    cp.testing.assert_array_equal(grad_params, grad_params_ref)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_out_arrays_and_inputs_untouched(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    z = cp.asarray(z)
    before = z.copy()
    x_ref, ld_ref = flow.forward(z)
    out = (cp.empty_like(x_ref), cp.empty_like(ld_ref))
    x, ld = flow.forward(z, out=out)
    assert x is out[0] and ld is out[1]
    cp.testing.assert_array_equal(x, x_ref)
    cp.testing.assert_array_equal(ld, ld_ref)
    g = cp.ones_like(z)
    flow.backward(z, g, cp.ones(len(z)))
    flow.inverse_backward(x_ref, g, 1.0)
    cp.testing.assert_array_equal(z, before)
    cp.testing.assert_array_equal(g, cp.ones_like(z))
    # Non-contiguous and other-dtype CuPy inputs are converted.
    strided = cp.repeat(z, 2, axis=0)[::2]
    cp.testing.assert_array_equal(flow.forward(strided)[0], x_ref)
    cp.testing.assert_array_equal(flow.forward(cp.asfortranarray(z))[0], x_ref)
    assert flow.forward(z.astype(cp.float32))[0].dtype == flow.dtype


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_non_finite_row_only_affects_itself(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    z = cp.asarray(z)
    x_ref, ld_ref = flow.forward(z)
    bad = z.copy()
    bad[2, 0] = cp.nan
    bad[4, -1] = cp.inf
    x, ld = flow.forward(bad)
    keep = [0, 1, 3, 5, 6]
    cp.testing.assert_array_equal(x[keep], x_ref[keep])
    cp.testing.assert_array_equal(ld[keep], ld_ref[keep])
    assert not bool(cp.all(cp.isfinite(x[2])))


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_bad_input_raises_clear_errors(case, dim, dtype):
    _, flow, z = build_pair(case, dim, dtype)
    z = cp.asarray(z)
    with pytest.raises(TypeError, match="real"):
        flow.forward(z.astype(cp.complex128))
    with pytest.raises(ValueError, match=rf"\(N, {flow.dim}\)"):
        flow.forward(cp.zeros((3, flow.dim + 1)))
    with pytest.raises(ValueError, match="grad_x"):
        flow.backward(z, cp.zeros((len(z) + 1, flow.dim)), 0.0)
    with pytest.raises(ValueError, match="grad_log_det"):
        flow.backward(z, cp.zeros_like(z), cp.zeros(len(z) + 1))
    with pytest.raises(ValueError, match="out"):
        flow.forward(z, out=(cp.empty((len(z), flow.dim)), cp.empty(len(z) + 1)))


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_save_load_and_move_back(case, dim, dtype, tmp_path):
    cpu, flow, z = build_pair(case, dim, dtype)
    pf.save(flow, tmp_path / "flow.npz")
    loaded = pf.load(tmp_path / "flow.npz")
    np.testing.assert_array_equal(loaded.params, cpu.params)
    back = flow.to("cpu")
    assert back is flow and flow.device == "cpu" and isinstance(flow.params, np.ndarray)
    np.testing.assert_array_equal(flow.forward(z)[0], cpu.forward(z)[0])


# -- device mixing ----------------------------------------------------------------

@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_arrays_of_the_other_device_raise_type_error(case, dim, dtype):
    cpu, gpu, z = build_pair(case, dim, dtype)
    zc = cp.asarray(z)
    for call in (lambda: gpu.forward(z), lambda: gpu.inverse(z), lambda: gpu.log_prob(z),
                 lambda: gpu.backward(z, None, None), lambda: gpu.backward(zc, z, None),
                 lambda: gpu.inverse_backward(zc, None, np.zeros(len(z))),
                 lambda: gpu.forward(zc, out=(np.empty(z.shape), np.empty(len(z)))),
                 lambda: gpu.set_params(np.zeros(gpu.num_params))):
        with pytest.raises(TypeError, match="'cuda'"):
            call()
    for call in (lambda: cpu.forward(zc), lambda: cpu.inverse(zc),
                 lambda: cpu.backward(z, cp.zeros_like(zc), None),
                 lambda: cpu.forward(z, out=(cp.empty(z.shape), cp.empty(len(z))))):
        with pytest.raises(TypeError, match="'cpu'"):
            call()


# -- flow-specific ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_layers_stay_views_on_the_gpu(dtype):
    layers = [pf.Planar(3, dtype=dtype, rng=0), pf.Shift(3, dtype=dtype),
              pf.RealNVP(3, units=4, dtype=dtype, rng=1), pf.Radial(3, dtype=dtype, rng=2)]
    chain = pf.Chain(layers).to("cuda")
    assert all(f.device == "cuda" for f in layers)
    chain.params[3:6] = 0.5
    assert isinstance(layers[1].params, cp.ndarray)
    cp.testing.assert_array_equal(layers[0].params[3:6], cp.full(3, 0.5, dtype=dtype))
    layers[1].set_params(cp.arange(3))
    cp.testing.assert_array_equal(chain.params[7:10], cp.arange(3, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_planar_inverse_near_the_invertibility_boundary(dtype):
    # w.u very negative: w.uhat = softplus(w.u) - 1 is -1 to working precision,
    # and points with w.z + b near 0 sit at the (nearly) singular Jacobian.
    dim = 4
    rng = np.random.default_rng(11)
    cpu = pf.Planar(dim, dtype=dtype)
    w = rng.standard_normal(dim)
    for wu in (-5.0, -20.0, -60.0, -800.0):
        u = wu * w / (w @ w)
        cpu.set_params(np.concatenate([u, w, [0.3]]))
        gpu = pf.Planar(dim, dtype=dtype).set_params(cpu.params).to("cuda")
        z = rng.standard_normal((2000, dim)) * 1e-3
        z -= np.outer((z @ w + 0.3) / (w @ w), w) * rng.uniform(0.9, 1.1, (2000, 1))
        z = z.astype(dtype)
        x, _ = cpu.forward(z)
        zig, _ = gpu.inverse(cp.asarray(x))
        assert np.all(np.isfinite(cp.asnumpy(zig)))
        # z itself is ill-determined here (the Jacobian is nearly singular), but
        # the inverse is backward stable: f(f^-1(x)) reproduces x to rounding,
        # as on the CPU.
        tol = 100 * np.finfo(dtype).eps * max(1.0, np.abs(x).max())
        xr = cp.asnumpy(gpu.forward(zig)[0])
        np.testing.assert_allclose(xr, x, rtol=0, atol=tol)
        zi, _ = cpu.inverse(x)
        np.testing.assert_allclose(cpu.forward(zi)[0], x, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_batch(dtype):
    # The emulator, far slower, takes enough rows for many tiles per block.
    n = 10 ** 5 if EMULATED else 10 ** 7
    flow = pf.Chain([pf.Planar(2, dtype=dtype, rng=0), pf.Radial(2, dtype=dtype, rng=1),
                     pf.ElementwiseScale(2, dtype=dtype)])
    flow.params[:] = np.random.default_rng(2).uniform(-1, 1, flow.num_params)
    cpu = pf.Chain([pf.Planar(2, dtype=dtype), pf.Radial(2, dtype=dtype),
                    pf.ElementwiseScale(2, dtype=dtype)]).set_params(flow.params)
    flow.to("cuda")
    z = cp.random.default_rng(3).standard_normal((n, 2), dtype=dtype)
    x, ld = flow.forward(z)
    g, gp = flow.backward(z, cp.ones_like(z), 1.0)
    pick = np.r_[0:1000, n - 1000:n]
    zs = cp.asnumpy(z[pick])
    x_cpu, ld_cpu = cpu.forward(zs)
    close(x[pick], x_cpu, RTOL_CPU[dtype])
    close(ld[pick], ld_cpu, RTOL_CPU[dtype])
    close(g[pick], cpu.backward(zs, np.ones_like(zs), 1.0)[0], RTOL_CPU[dtype])
    # The batch-summed gradient: the CPU on the whole batch (float64 only: it is slow).
    if dtype == "float64":
        close(gp, cpu.backward(cp.asnumpy(z), np.ones((n, 2)), 1.0)[1], 1e-10)


def every_method_matches_cpu(cpu, gpu, z, rtol=1e-11):
    """The four kernels of flows ``cpu`` and ``gpu`` (the same parameters)
    agree on the points ``z`` and random cotangents."""
    rng = np.random.default_rng(2)
    z = z.astype(cpu.dtype)
    x = cpu.forward(z)[0]
    g = rng.standard_normal(z.shape).astype(cpu.dtype)
    gld = rng.standard_normal(len(z)).astype(cpu.dtype)
    for name, args in (("forward", (z,)), ("inverse", (x,)), ("backward", (z, g, gld)),
                       ("inverse_backward", (x, g, gld))):
        for got, want in zip(getattr(gpu, name)(*map(cp.asarray, args)),
                             getattr(cpu, name)(*args)):
            close(got, want, rtol)


@pytest.mark.parametrize("make,dtype", [
    (lambda dt: pf.Chain([pf.Planar(64, rng=0, dtype=dt), pf.Radial(64, rng=1, dtype=dt),
                          pf.ElementwiseScale(64, dtype=dt)]), "float64"),
    (lambda dt: pf.Chain([pf.Planar(200, rng=0, dtype=dt), pf.Shift(200, dtype=dt)]), "float64"),
    (lambda dt: pf.CholeskyProduct(20, dtype=dt), "float64"),
    (lambda dt: pf.Chain([pf.Planar(128, rng=0, dtype=dt), pf.Radial(128, rng=1, dtype=dt)]),
     "float32"),
    (lambda dt: pf.Chain([pf.Planar(400, rng=0, dtype=dt), pf.Shift(400, dtype=dt)]), "float32"),
    (lambda dt: pf.CholeskyProduct(28, dtype=dt), "float32"),
], ids=["rowwise-64", "rowwise-200", "cholesky-20", "rowwise-128-f32", "rowwise-400-f32",
        "cholesky-28-f32"])
def test_rows_too_wide_for_shared_memory_match_cpu(make, dtype):
    # The thread regions leave shared memory for the global scratch buffer:
    # the VJPs' regions (64 entries in float64, 128 in float32), or all of them
    # (200 and the 210 entries of n = 20; 400 and the 406 of n = 28 in float32).
    cpu = make(dtype)
    if cpu.num_params:
        cpu.params[:] = np.random.default_rng(0).uniform(-0.3, 0.3, cpu.num_params)
    gpu = make(dtype).set_params(cpu.params).to("cuda")
    z = np.random.default_rng(1).standard_normal((300, cpu.dim)) * 0.5
    every_method_matches_cpu(cpu, gpu, z, RTOL_CPU[dtype] if dtype == "float32" else 1e-11)


@pytest.mark.parametrize("flow_kind", ["chain", "realnvp"])
def test_drivers_memory_caps_match_cpu(flow_kind, monkeypatch):
    # The caps that split big batches, made tiny: the chain VJP's grid shrinks
    # to one block (its stack of layer inputs over budget) and Real NVP runs
    # in chunks of 1024 rows, accumulating parameter gradients over chunks.
    import pyflowcore.cuda.chain
    import pyflowcore.cuda.realnvp
    monkeypatch.setattr(pyflowcore.cuda.chain, "STACK_BUDGET", 1)
    monkeypatch.setattr(pyflowcore.cuda.realnvp, "CHUNK_BYTES", 1)
    dim = 3
    if flow_kind == "chain":
        def make():
            return pf.Chain([pf.Planar(dim, rng=0), pf.Radial(dim, rng=1), pf.Planar(dim, rng=2)])
    else:
        def make():
            return pf.RealNVP(dim, num_masks=4, units=5, rng=0)
    cpu = make()
    gpu = make().set_params(cpu.params).to("cuda")
    every_method_matches_cpu(cpu, gpu, np.random.default_rng(1).standard_normal((2500, dim)))


def test_chain_of_many_planar_layers_matches_cpu():
    # Enough layers that the work coefficients and accumulators leave shared memory.
    dim, K = 24, 40
    cpu = pf.Chain([pf.Planar(dim, rng=k) for k in range(K)])
    cpu.params[:] = np.random.default_rng(0).standard_normal(cpu.num_params) * 0.3
    gpu = pf.Chain([pf.Planar(dim) for _ in range(K)]).set_params(cpu.params).to("cuda")
    z = np.random.default_rng(1).standard_normal((3000, dim))
    close(gpu.forward(cp.asarray(z))[1], cpu.forward(z)[1], 1e-11)
    g, gp = cpu.backward(z, np.ones_like(z), 1.0)
    gg, gpg = gpu.backward(cp.asarray(z), cp.ones((3000, dim)), 1.0)
    close(gg, g, 1e-11)
    close(gpg, gp, 1e-11)


# -- fitting on the GPU ------------------------------------------------------------

def moons_pair():
    def make():
        return pf.Chain([pf.RealNVP(2, num_masks=2, units=8, rng=0), pf.Planar(2, rng=1),
                         pf.ElementwiseScale(2), pf.Shift(2)])
    cpu = make()
    return cpu, make().to("cuda"), pf.datasets.two_moons(400, rng=0)


def test_nll_and_grad_agrees_with_cpu():
    cpu, gpu, x = moons_pair()
    loss, grad = pf.fitting.nll_and_grad(cpu, x)
    loss_g, grad_g = pf.fitting.nll_and_grad(gpu, cp.asarray(x))
    assert isinstance(loss_g, float) and isinstance(grad_g, cp.ndarray)
    np.testing.assert_allclose(loss_g, loss, rtol=1e-12)
    close(grad_g, grad, 1e-11)


@pytest.mark.parametrize("method,kwargs", [
    ("adam", {"steps": 20, "batch_size": 64, "rng": 1}),
    ("adam", {"steps": 12, "batch_size": None, "clip_norm": 0.5}),
    ("lbfgs", {"steps": 10}),
])
def test_fit_follows_the_cpu(method, kwargs):
    # The same steps as on the CPU (the batch order is drawn on the host);
    # float64 and a few steps, so that the rounding of the two devices'
    # gradients cannot move the iterates apart.
    cpu, gpu, x = moons_pair()
    val = pf.datasets.two_moons(100, rng=5)
    res = pf.fit(cpu, x, method, validation_data=val, progress=False, **kwargs)
    res_g = pf.fit(gpu, cp.asarray(x), method, validation_data=cp.asarray(val), progress=False,
                   **kwargs)
    assert res_g.success and res_g.n_iter == res.n_iter and res_g.best_iter == res.best_iter
    assert isinstance(res_g.params, cp.ndarray) and gpu.device == "cuda"
    np.testing.assert_allclose(res_g.losses, res.losses, rtol=1e-8)
    np.testing.assert_allclose(res_g.val_losses, res.val_losses, rtol=1e-8)
    close(gpu.params, cpu.params, 1e-7)
    assert res.losses[-1] < res.losses[0]


def test_fit_checks_the_device_of_the_data():
    cpu, gpu, x = moons_pair()
    with pytest.raises(TypeError, match="'cuda'"):
        pf.fit(gpu, x, steps=1)
    with pytest.raises(TypeError, match="'cuda'"):
        pf.fit(gpu, cp.asarray(x), steps=1, validation_data=x[:10])
    with pytest.raises(TypeError, match="'cpu'"):
        pf.fit(cpu, cp.asarray(x), steps=1)
    bad = cp.asarray(x)
    bad[3, 1] = cp.nan
    with pytest.raises(ValueError, match="NaN values in 1 row"):
        pf.fit(gpu, bad, steps=1)


def gaussian_log_density(x):
    """N(m, diag(s^2)) up to a constant, with its gradient, in any array module."""
    m, s = 0.5, 1.7
    return -0.5 * (((x - m) / s) ** 2).sum(axis=1), -(x - m) / s ** 2


@pytest.mark.parametrize("method,kwargs", [("adam", {"steps": 15}), ("lbfgs", {"steps": 8})])
def test_fit_variational_follows_the_cpu(method, kwargs):
    def make():
        return pf.Chain([pf.Planar(2, rng=0), pf.ElementwiseScale(2), pf.Shift(2)])
    cpu, gpu = make(), make().to("cuda")
    res = pf.fit_variational(cpu, gaussian_log_density, 128, method, rng=3, progress=False,
                             n_elbo_samples=500, **kwargs)
    res_g = pf.fit_variational(gpu, gaussian_log_density, 128, method, rng=3, progress=False,
                               n_elbo_samples=500, **kwargs)
    assert res_g.n_iter == res.n_iter and isinstance(res_g.params, cp.ndarray)
    np.testing.assert_allclose(res_g.losses, res.losses, rtol=1e-8)
    np.testing.assert_allclose([res_g.elbo, res_g.elbo_stderr], [res.elbo, res.elbo_stderr],
                               rtol=1e-8)
    close(gpu.params, cpu.params, 1e-7)
    z = np.random.default_rng(4).standard_normal((64, 2))
    loss, grad = pf.fitting.kl_and_grad(cpu, gaussian_log_density, z)
    loss_g, grad_g = pf.fitting.kl_and_grad(gpu, gaussian_log_density, cp.asarray(z))
    np.testing.assert_allclose(loss_g, loss, rtol=1e-10)
    close(grad_g, grad, 1e-10)


def test_fit_variational_wants_the_density_on_the_flows_device():
    gpu = pf.Chain([pf.Planar(2, rng=0), pf.Shift(2)]).to("cuda")

    def on_host(x):
        v, g = gaussian_log_density(cp.asnumpy(x))
        return v, g
    with pytest.raises(TypeError, match="log_density.*'cuda'"):
        pf.fit_variational(gpu, on_host, 16, steps=1, progress=False)


def test_command_line_on_the_gpu(tmp_path, capsys):
    # fit, sample and log-prob with --device cuda give the CPU's results.
    from pyflowcore.cli import main
    x = pf.datasets.two_moons(300, rng=0)
    np.save(tmp_path / "moons.npy", x)
    outputs = {}
    for device in ("cpu", "cuda"):
        model = tmp_path / f"{device}.npz"
        common = ["--device", device]
        assert main(["fit", str(tmp_path / "moons.npy"), "--flow", "planar*2+scale+shift",
                     "--steps", "15", "--validation-split", "0.2", "--out", str(model),
                     "--no-progress", *common]) == 0
        assert main(["sample", str(model), "-n", "20", "--seed", "4",
                     "--out", str(tmp_path / f"s-{device}.npy"), *common]) == 0
        assert main(["log-prob", str(model), str(tmp_path / "moons.npy"),
                     "--out", str(tmp_path / f"lp-{device}.npy"), *common]) == 0
        outputs[device] = [pf.load(model).params] + [
            np.load(tmp_path / f"{kind}-{device}.npy") for kind in ("s", "lp")]
    capsys.readouterr()
    for got, want in zip(outputs["cuda"], outputs["cpu"]):
        close(got, want, 1e-8)
