"""The checks every flow must pass, run on every case of ``tests.reference``.

References are independent of the kernels: plain-NumPy formulas, finite
differences of the flow's own forward map, and ``numpy.linalg.slogdet``.
"""

import threading

import numpy as np
import pytest

import pyflowcore as pf
from tests.finite_differences import vjp_and_finite_differences
from tests.reference import all_cases

CASES = all_cases()
DTYPES = ["float64", "float32"]
# float32 results are compared with the float64 reference at this tolerance.
RTOL = {"float64": 1e-10, "float32": 2e-4}


def case_params(dtypes=DTYPES):
    return [pytest.param(case, dim, dtype, id=f"{case.name}-{dim}-{dtype}")
            for case in CASES for dim in case.dims for dtype in dtypes]


def build(case, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    flow = case.make(dim, dtype, rng)
    z = case.sample_z(rng, 7, flow.dim)
    return flow, z


def assert_close(actual, expected, dtype, scale=1.0):
    rtol = RTOL[np.dtype(dtype).name]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_forward_matches_reference(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    x, log_det = flow.forward(z)
    assert x.dtype == flow.dtype and log_det.dtype == flow.dtype
    assert x.shape == z.shape and log_det.shape == (z.shape[0],)
    x_ref, ld_ref = case.reference(flow.params.astype(np.float64), z.astype(flow.dtype).astype(np.float64))
    assert_close(x, x_ref, dtype, scale=np.abs(x_ref).max())
    assert_close(log_det, ld_ref, dtype, scale=max(1.0, np.abs(ld_ref).max()))


# Batch sizes around the CPU kernels' shapes: the row functions below 32 rows,
# block sweeps of 32, 64 or 128 rows (a short block takes the smallest that
# holds it), several blocks with a short last one, and the parallel loops;
# dims 1, 8, 16 and 19 (a lone planar layer's row-major sweeps: scalar
# columns; rows of one 64-byte vector, 8 doubles or 16 floats, updated in a
# register; whole vectors; vectors and a masked tail).
BATCH_SIZES = [31, 32, 33, 64, 65, 128, 300, 777]


@pytest.mark.parametrize("n", BATCH_SIZES)
@pytest.mark.parametrize("case,dim,dtype", [
    p for p in case_params() if p.values[1] in (1, 8, 16, 19) or p.values[0].name == "chain"])
def test_forward_and_inverse_at_every_block_shape(case, dim, dtype, n):
    rng = np.random.default_rng(n)
    flow = case.make(dim, dtype, rng)
    z = case.sample_z(rng, n, flow.dim).astype(flow.dtype)
    x, log_det = flow.forward(z)
    x_ref, ld_ref = case.reference(flow.params.astype(np.float64), z.astype(np.float64))
    assert_close(x, x_ref, dtype, scale=np.abs(x_ref).max())
    assert_close(log_det, ld_ref, dtype, scale=max(1.0, np.abs(ld_ref).max()))
    z_back, log_det_inv = flow.inverse(x)
    assert_close(z_back, z, dtype, scale=max(1.0, np.abs(z).max()) * 10)
    assert_close(log_det_inv, -log_det, dtype, scale=max(1.0, np.abs(log_det).max()) * 10)


def numerical_jacobian(fun, z, h=1e-6):
    """Central-difference Jacobian of a row-wise map, shape (N, dim_out, dim_in)."""
    cols = []
    for j in range(z.shape[1]):
        e = np.zeros_like(z)
        e[:, j] = h
        cols.append((fun(z + e) - fun(z - e)) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_log_det_is_log_abs_det_of_jacobian(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    jac = numerical_jacobian(lambda v: flow.forward(v)[0], z)
    sign, logabs = np.linalg.slogdet(jac)
    assert np.all(sign != 0)
    np.testing.assert_allclose(flow.forward(z)[1], logabs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_inverse_round_trip(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    z = z.astype(flow.dtype)
    x, log_det = flow.forward(z)
    z_back, log_det_inv = flow.inverse(x)
    assert z_back.dtype == flow.dtype and log_det_inv.dtype == flow.dtype
    assert_close(z_back, z, dtype, scale=max(1.0, np.abs(z).max()) * 10)
    assert_close(log_det_inv, -log_det, dtype, scale=max(1.0, np.abs(log_det).max()) * 10)


@pytest.mark.parametrize("direction", ["backward", "inverse_backward"])
@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_vjp_matches_finite_differences(case, dim, dtype, direction):
    flow, z = build(case, dim, dtype)
    grad_v, grad_params, fd_v, fd_params = vjp_and_finite_differences(
        flow, z, direction, np.random.default_rng(1))
    assert grad_params.shape == (flow.num_params,)
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_params, fd_params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_float32_vjp_agrees_with_float64(case, dim, dtype):
    flow64, z = build(case, dim, "float64")
    flow, _ = build(case, dim, dtype)
    rng = np.random.default_rng(2)
    g = rng.standard_normal(z.shape)
    gld = rng.standard_normal(z.shape[0])
    z = z.astype(flow.dtype).astype(np.float64)
    flow64.set_params(flow.params.astype(np.float64))
    for name in ("backward", "inverse_backward"):
        v = z if name == "backward" else flow64.forward(z)[0]
        ref_v, ref_p = getattr(flow64, name)(v, g, gld)
        got_v, got_p = getattr(flow, name)(v, g, gld)
        assert got_v.dtype == flow.dtype and got_p.dtype == flow.dtype
        tol = 50 * RTOL[dtype]
        np.testing.assert_allclose(got_v, ref_v, rtol=tol, atol=tol * max(1, np.abs(ref_v).max()))
        np.testing.assert_allclose(got_p, ref_p, rtol=tol, atol=tol * max(1, np.abs(ref_p).max(initial=0)))


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_single_point_and_empty_batch(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    x, log_det = flow.forward(z)
    x1, ld1 = flow.forward(z[3])
    assert x1.shape == (flow.dim,) and np.shape(ld1) == ()
    np.testing.assert_allclose(x1, x[3], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ld1, log_det[3], rtol=1e-13, atol=1e-13)
    z1, ldi1 = flow.inverse(x[3])
    assert z1.shape == (flow.dim,) and np.shape(ldi1) == ()
    g1, gp1 = flow.backward(z[3], np.ones(flow.dim), 1.0)
    assert g1.shape == (flow.dim,) and gp1.shape == (flow.num_params,)
    assert np.shape(flow.log_prob(x[3])) == ()

    empty = np.zeros((0, flow.dim))
    for method in (flow.forward, flow.inverse):
        out, ld = method(empty)
        assert out.shape == (0, flow.dim) and ld.shape == (0,)
    for method in (flow.backward, flow.inverse_backward):
        g, gp = method(empty, empty, np.zeros(0))
        assert g.shape == (0, flow.dim)
        np.testing.assert_array_equal(gp, np.zeros(flow.num_params))
    assert flow.log_prob(empty).shape == (0,)
    assert flow.sample(0).shape == (0, flow.dim)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_accepts_array_likes_and_never_modifies_input(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    x_ref, ld_ref = flow.forward(z)
    fortran = np.asfortranarray(z)
    strided = np.repeat(z, 2, axis=0)[::2]
    as_f32 = z.astype(np.float32)
    for variant in (z.tolist(), fortran, strided):
        before = np.array(variant, copy=True)
        x, ld = flow.forward(variant)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(ld, ld_ref)
        np.testing.assert_array_equal(np.asarray(variant), before)
    x32, _ = flow.forward(as_f32)
    assert x32.dtype == flow.dtype
    readonly = z.copy()
    readonly.setflags(write=False)
    flow.forward(readonly)
    flow.inverse(flow.forward(readonly)[0].copy())
    g = np.ones_like(z)
    g_before = g.copy()
    flow.backward(readonly, g, np.ones(len(z)))
    np.testing.assert_array_equal(g, g_before)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_bad_input_raises_clear_errors(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    with pytest.raises(TypeError, match="real"):
        flow.forward(z.astype(complex))
    with pytest.raises(TypeError, match="real"):
        flow.forward(np.array([["a"] * flow.dim]))
    with pytest.raises(TypeError, match="real"):
        flow.inverse(np.empty((2, flow.dim), dtype=object))
    with pytest.raises(ValueError, match=rf"\(N, {flow.dim}\)"):
        flow.forward(np.zeros((3, flow.dim + 1)))
    with pytest.raises(ValueError, match=rf"\(N, {flow.dim}\)"):
        flow.forward(np.zeros((2, 3, flow.dim)))
    with pytest.raises(ValueError, match=rf"\(N, {flow.dim}\)"):
        flow.forward(3.0)
    with pytest.raises(ValueError, match="grad_x"):
        flow.backward(z, np.zeros((len(z) + 1, flow.dim)), 0.0)
    with pytest.raises(ValueError, match="grad_log_det"):
        flow.backward(z, np.zeros_like(z), np.zeros(len(z) + 1))
    with pytest.raises(ValueError, match=rf"\({flow.num_params},\)"):
        flow.set_params(np.zeros(flow.num_params + 1))
    with pytest.raises(ValueError, match="out"):
        flow.forward(z, out=(np.empty((len(z), flow.dim)), np.empty(len(z) + 1)))


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_out_arrays_are_filled(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    x_ref, ld_ref = flow.forward(z)
    out = (np.empty_like(x_ref), np.empty_like(ld_ref))
    x, ld = flow.forward(z, out=out)
    assert x is out[0] and ld is out[1]
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(ld, ld_ref)


@pytest.mark.parametrize("n", [7, 65, 700])
@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_out_arrays_may_overlap_the_inputs(case, dim, dtype, n):
    # out= naming an input of the same role (z for x, grad_x for grad_z)
    # runs in place; any other overlap -- the points as gradient output, a
    # shifted view -- is copied first.  Results are those without out=.
    rng = np.random.default_rng(n)
    flow = case.make(dim, dtype, rng)
    z = case.sample_z(rng, n, flow.dim).astype(flow.dtype)
    g = rng.standard_normal(z.shape)
    h = rng.standard_normal(n)
    x, log_det = flow.forward(z)
    z_back, log_det_inv = flow.inverse(x)
    grad_z, grad_params = flow.backward(z, g, h)
    grad_x, grad_params_inv = flow.inverse_backward(x, g, h)
    empty_params = np.empty(flow.num_params)

    for method, v, expected in (("forward", z, (x, log_det)),
                                ("inverse", x, (z_back, log_det_inv))):
        buf = v.copy()
        res = getattr(flow, method)(buf, out=(buf, np.empty(n)))
        assert res[0] is buf
        np.testing.assert_array_equal(buf, expected[0])
        np.testing.assert_array_equal(res[1], expected[1])
        # The outputs one row further on: row r of the result lands on input
        # row r + 1, which the kernels have not read yet.
        big = np.concatenate([v, v[:1]])
        res = getattr(flow, method)(big[:-1], out=(big[1:], np.empty(n)))
        np.testing.assert_array_equal(big[1:], expected[0])
        # The log-determinants over the input's first values.
        buf = v.copy()
        ld_view = buf.reshape(-1)[:n]
        getattr(flow, method)(buf, out=(np.empty_like(v), ld_view))
        np.testing.assert_array_equal(ld_view, expected[1])

    for method, v, expected in (("backward", z, (grad_z, grad_params)),
                                ("inverse_backward", x, (grad_x, grad_params_inv))):
        buf = g.copy()
        res = getattr(flow, method)(v, buf, h, out=(buf, empty_params))
        assert res[0] is buf
        np.testing.assert_array_equal(buf, expected[0])
        np.testing.assert_array_equal(res[1], expected[1])
        buf = v.copy()
        getattr(flow, method)(buf, g, h, out=(buf, empty_params))
        np.testing.assert_array_equal(buf, expected[0])
        # The parameter gradients over the last log-determinant cotangent.
        buf = np.concatenate([h, np.empty(flow.num_params)])
        res = getattr(flow, method)(v, g, buf[:n],
                                    out=(np.empty_like(v), buf[n - 1:n - 1 + flow.num_params]))
        np.testing.assert_array_equal(res[0], expected[0])
        np.testing.assert_array_equal(res[1], expected[1])


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_out_arrays_may_be_the_flows_own_parameters(case, dim, dtype):
    # The kernels read the parameters while they write their outputs (a
    # planar VJP reads w while it sums dL/dw): an out= array that is the
    # parameter vector, or a view into it, gets the results without out=.
    flow, z = build(case, dim, dtype)
    z = z[:1].astype(flow.dtype)
    rng = np.random.default_rng(1)
    g = rng.standard_normal(z.shape).astype(flow.dtype)
    h = rng.standard_normal(1).astype(flow.dtype)
    theta = flow.params.copy()
    x = flow.forward(z)[0]
    calls = {
        "forward": lambda out: flow.forward(z[0], out=out),
        "inverse": lambda out: flow.inverse(x[0], out=out),
        "backward": lambda out: flow.backward(z, g, h, out=out),
        "inverse_backward": lambda out: flow.inverse_backward(x, g, h, out=out),
        "quadratic_loss_and_grad": lambda out: flow.quadratic_loss_and_grad(z, 0.5, 0.3,
                                                                           out=out)[1:],
    }
    for method, call in calls.items():
        flow.set_params(theta)
        expected = [a.copy() for a in call(None)]
        outs = [np.empty_like(a) for a in expected]
        for k in range(2):
            if outs[k].size > flow.num_params:
                continue
            flow.set_params(theta)
            out = list(outs)
            out[k] = flow.params[:outs[k].size].reshape(outs[k].shape)
            res = call(tuple(out))
            assert res[k] is out[k], method
            for a, b in zip(res, expected):
                np.testing.assert_array_equal(a, b, err_msg=f"{method}, out[{k}] the parameters")


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_non_finite_row_only_affects_itself(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    x_ref, ld_ref = flow.forward(z)
    bad = z.copy()
    bad[2, 0] = np.nan
    bad[4, -1] = np.inf
    x, ld = flow.forward(bad)
    keep = [0, 1, 3, 5, 6]
    np.testing.assert_array_equal(x[keep], x_ref[keep])
    np.testing.assert_array_equal(ld[keep], ld_ref[keep])
    assert not np.all(np.isfinite(x[2]))
    xb = x_ref.copy()
    xb[2, 0] = np.nan
    z_back, _ = flow.inverse(xb)
    np.testing.assert_allclose(z_back[keep], flow.inverse(x_ref)[0][keep], rtol=0, atol=0)
    assert np.isnan(z_back[2]).any()


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_distribution_methods_agree(case, dim, dtype):
    flow, _ = build(case, dim, dtype)
    x, logp = flow.sample_and_log_prob(50, rng=3)
    assert x.shape == (50, flow.dim) and logp.shape == (50,)
    assert x.dtype == flow.dtype and logp.dtype == flow.dtype
    np.testing.assert_array_equal(flow.sample(50, rng=3), x)
    assert_close(flow.log_prob(x), logp, dtype, scale=np.abs(logp).max() * 10)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_concurrent_calls_from_threads(case, dim, dtype):
    flow, _ = build(case, dim, dtype)
    rng = np.random.default_rng(4)
    zs = [case.sample_z(rng, 20_000, flow.dim) for _ in range(2)]
    expected = [flow.forward(z) for z in zs]
    results = [None, None]

    def work(k):
        results[k] = flow.forward(zs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (x, ld), (xe, lde) in zip(results, expected):
        np.testing.assert_array_equal(x, xe)
        np.testing.assert_array_equal(ld, lde)


@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_save_load_round_trip(case, dim, dtype, tmp_path):
    flow, z = build(case, dim, dtype)
    path = tmp_path / "flow.npz"
    pf.save(flow, path)
    loaded = pf.load(path)
    assert type(loaded) is type(flow) and loaded.dtype == flow.dtype and loaded.dim == flow.dim
    np.testing.assert_array_equal(loaded.params, flow.params)
    np.testing.assert_array_equal(loaded.forward(z)[0], flow.forward(z)[0])
    assert repr(loaded) == repr(flow)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_construction_is_reproducible(case, dim, dtype):
    a = case.make(dim, dtype, np.random.default_rng(5))
    b = case.make(dim, dtype, np.random.default_rng(5))
    np.testing.assert_array_equal(a.params, b.params)


def _quadratic_loss(flow, v, a, b, inverse):
    y, ld = (flow.inverse if inverse else flow.forward)(v)
    return 0.5 * a * np.sum(y.astype(np.float64) ** 2) + b * np.sum(ld, dtype=np.float64)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("n", [7, 300])
@pytest.mark.parametrize("case,dim,dtype", case_params())
def test_quadratic_loss_and_grad(case, dim, dtype, n, inverse):
    """The fused loss against the reference map; its gradients against the
    flow's VJP with the cotangents a y, b formed from the map's output."""
    rng = np.random.default_rng(n)
    flow = case.make(dim, dtype, rng)
    z = case.sample_z(rng, n, flow.dim).astype(flow.dtype)
    a, b = 0.7, -1.3
    x_ref, ld_ref = case.reference(flow.params.astype(np.float64), z.astype(np.float64))
    if inverse:
        v, y_ref, l_ref = flow.forward(z)[0], z.astype(np.float64), -ld_ref
    else:
        v, y_ref, l_ref = z, x_ref, ld_ref
    v_before = v.copy()
    loss, grad_v, grad_params = flow.quadratic_loss_and_grad(v, a, b, inverse=inverse)
    np.testing.assert_array_equal(v, v_before)
    assert isinstance(loss, float)
    assert grad_v.shape == v.shape and grad_v.dtype == flow.dtype
    assert grad_params.shape == (flow.num_params,) and grad_params.dtype == flow.dtype
    scale = 0.5 * a * np.sum(y_ref ** 2) + abs(b) * np.sum(np.abs(l_ref)) + 1.0
    # Through the inverse the float32 points are round-trip-accurate only.
    tol = RTOL[dtype] * (10 if inverse else 1)
    assert abs(loss - (0.5 * a * np.sum(y_ref ** 2) + b * np.sum(l_ref))) <= tol * scale

    y, _ = (flow.inverse if inverse else flow.forward)(v)
    ref_v, ref_params = (flow.inverse_backward if inverse else flow.backward)(v, a * y, b)
    tol = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(grad_v, ref_v, rtol=tol, atol=tol * np.abs(ref_v).max())
    np.testing.assert_allclose(grad_params, ref_params, rtol=tol,
                               atol=tol * np.abs(ref_params).max(initial=1.0))


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("case,dim", [p.values[:2] for p in case_params(["float64"])])
def test_quadratic_loss_and_grad_matches_finite_differences(case, dim, inverse):
    """Directional derivatives of the loss, computed from the flow's maps alone
    (to 2e-5: the Cholesky inverse's losses reach 1e4, with large third
    derivatives)."""
    rng = np.random.default_rng(3)
    flow = case.make(dim, "float64", rng)
    z = case.sample_z(rng, 40, flow.dim)
    v = flow.forward(z)[0] if inverse else z
    a, b, h = 0.7, -1.3, 1e-6
    _, grad_v, grad_params = flow.quadratic_loss_and_grad(v, a, b, inverse=inverse)
    du = rng.standard_normal(v.shape)
    fd = (_quadratic_loss(flow, v + h * du, a, b, inverse)
          - _quadratic_loss(flow, v - h * du, a, b, inverse)) / (2 * h)
    np.testing.assert_allclose(np.sum(grad_v * du), fd, rtol=2e-5, atol=1e-6)
    theta = flow.params.copy()
    dp = rng.standard_normal(theta.shape)
    try:
        flow.set_params(theta + h * dp)
        up = _quadratic_loss(flow, v, a, b, inverse)
        flow.set_params(theta - h * dp)
        down = _quadratic_loss(flow, v, a, b, inverse)
    finally:
        flow.set_params(theta)
    np.testing.assert_allclose(grad_params @ dp, (up - down) / (2 * h), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case,dim,dtype", case_params(["float64"]))
def test_quadratic_loss_and_grad_shapes_and_errors(case, dim, dtype):
    flow, z = build(case, dim, dtype)
    loss1, g1, gp1 = flow.quadratic_loss_and_grad(z[3], 0.5, 2.0)
    loss, g, _ = flow.quadratic_loss_and_grad(z[3:4], 0.5, 2.0)
    assert g1.shape == (flow.dim,) and gp1.shape == (flow.num_params,)
    np.testing.assert_allclose([loss1, *g1], [loss, *g[0]], rtol=1e-13)
    loss0, g0, gp0 = flow.quadratic_loss_and_grad(np.zeros((0, flow.dim)), 1.0, 1.0)
    assert loss0 == 0.0 and g0.shape == (0, flow.dim)
    np.testing.assert_array_equal(gp0, np.zeros(flow.num_params))
    out = (np.empty_like(z), np.empty(flow.num_params))
    _, g_out, gp_out = flow.quadratic_loss_and_grad(z, 1.0, 1.0, out=out)
    assert g_out is out[0] and gp_out is out[1]
    with pytest.raises(TypeError, match="sq_weight must be a real number"):
        flow.quadratic_loss_and_grad(z, "1", 1.0)
    with pytest.raises(TypeError, match="log_det_weight must be a real number"):
        flow.quadratic_loss_and_grad(z, 1.0, np.ones(3))
    with pytest.raises(ValueError, match="sq_weight must be a finite number"):
        flow.quadratic_loss_and_grad(z, np.nan, 1.0)
    with pytest.raises(ValueError, match=rf"\(N, {flow.dim}\)"):
        flow.quadratic_loss_and_grad(np.zeros((2, flow.dim + 1)), 1.0, 1.0)
    with pytest.raises(ValueError, match="out"):
        flow.quadratic_loss_and_grad(z, 1.0, 1.0,
                                     out=(np.empty_like(z), np.empty(flow.num_params + 1)))
