import numpy as np
import pytest

import pyflowcore as pf
from tests.finite_differences import vjp_and_finite_differences
from tests.reference.planar import planar_reference
from tests.reference.radial import radial_reference


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_params_are_views_into_the_chain_vector(dtype):
    scale, shift = pf.ElementwiseScale(3, dtype=dtype), pf.Shift(3, dtype=dtype)
    chain = pf.Chain([scale, shift])
    assert chain.num_params == 6 and chain.params.dtype == np.dtype(dtype)
    chain.params[:] = np.arange(1, 7)
    np.testing.assert_array_equal(scale.params, [1, 2, 3])
    np.testing.assert_array_equal(shift.params, [4, 5, 6])
    shift.params[0] = 40
    assert chain.params[3] == 40
    chain.set_params(np.ones(6))
    np.testing.assert_array_equal(shift.params, np.ones(3))


def test_initial_parameters_are_kept():
    shift = pf.Shift(2)
    shift.set_params([1.0, 2.0])
    chain = pf.Chain([pf.ElementwiseScale(2), shift])
    np.testing.assert_array_equal(chain.params, [1, 1, 1, 2])


def test_chain_of_chains_is_flat_and_shares_one_vector():
    a, b, c = pf.Shift(2), pf.ElementwiseScale(2), pf.Shift(2)
    inner = pf.Chain([a, b])
    outer = pf.Chain([inner, c])
    assert outer.layers == (a, b, c) and len(outer) == 3 and outer[1] is b
    outer.params[:] = np.arange(6.0)
    np.testing.assert_array_equal(inner.params, [0, 1, 2, 3])
    inner.params[0] = 10
    assert a.params[0] == 10 and outer.params[0] == 10


def test_applies_layers_in_list_order():
    scale, shift = pf.ElementwiseScale(1), pf.Shift(1)
    chain = pf.Chain([scale, shift])
    chain.set_params([2.0, 1.0])
    x, log_det = chain.forward([3.0])
    assert x[0] == 7.0  # 2 * 3 + 1, not 2 * (3 + 1)
    np.testing.assert_allclose(log_det, np.log(2.0))


@pytest.mark.parametrize("layers, match", [
    ([], "at least one"),
    ([pf.Shift(2), pf.Shift(3)], "same dim"),
    ([pf.Shift(2), pf.Shift(2, dtype="float32")], "same dim and dtype"),
])
def test_rejects_inconsistent_layers(layers, match):
    with pytest.raises(ValueError, match=match):
        pf.Chain(layers)


def test_cholesky_product_only_last():
    with pytest.raises(ValueError, match="last"):
        pf.Chain([pf.CholeskyProduct(2), pf.Planar(3)])
    assert len(pf.Chain([pf.Planar(3), pf.CholeskyProduct(2)])) == 2


def test_accepts_an_iterator_of_flows():
    chain = pf.Chain(pf.Planar(2, rng=k) for k in range(3))
    assert len(chain) == 3 and chain.num_params == 15


@pytest.mark.parametrize("make", [lambda: pf.Planar(2, rng=0), lambda: pf.RealNVP(2, rng=0),
                                  lambda: pf.Radial(2, rng=0)], ids=["planar", "realnvp", "radial"])
def test_an_earlier_chain_keeps_its_own_parameters(make):
    # A later chain built from the same layer rebinds the layer's params to
    # its vector; the earlier chain still computes with its own, whatever
    # kind of unit runs the layer.
    a = make()
    first = pf.Chain([a, pf.Shift(2)])
    twin = pf.Chain([make(), pf.Shift(2)])
    pf.Chain([a, pf.ElementwiseScale(2)])
    rng = np.random.default_rng(0)
    theta = rng.uniform(-0.5, 0.5, first.num_params)
    first.set_params(theta)
    twin.set_params(theta)
    z = rng.standard_normal((5, 2))
    for method in ("forward", "inverse"):
        for a_, b_ in zip(getattr(first, method)(z), getattr(twin, method)(z)):
            np.testing.assert_array_equal(a_, b_)
    for a_, b_ in zip(first.backward(z, z, 1.0), twin.backward(z, z, 1.0)):
        np.testing.assert_array_equal(a_, b_)


def test_rejects_non_flows_and_repeated_layers():
    with pytest.raises(TypeError, match="Flow"):
        pf.Chain([pf.Shift(2), "shift"])
    with pytest.raises(TypeError, match="sequence"):
        pf.Chain(pf.Shift(2))
    s = pf.Shift(2)
    with pytest.raises(ValueError, match="only once"):
        pf.Chain([s, s])


def rowwise_layers(dim, dtype, rng):
    """One of each row-wise flow, with random parameters, twice over."""
    kinds = [pf.ElementwiseScale, pf.Shift]
    kinds += [getattr(pf, name) for name in ("Planar", "Radial") if hasattr(pf, name)]
    layers = []
    for _ in range(2):
        for cls in kinds:
            f = cls(dim, dtype=dtype, rng=rng)
            f.set_params(rng.uniform(0.3, 1.2, f.num_params) * rng.choice([-1, 1], f.num_params))
            layers.append(f)
    return layers


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [5, 3000])
def test_fused_row_wise_run_matches_layer_by_layer(dtype, n):
    rng = np.random.default_rng(0)
    dim = 4
    layers = rowwise_layers(dim, dtype, rng)
    chain = pf.Chain(layers)
    assert len(chain._units.units) == 1, "the whole run of row-wise layers is one fused unit"
    z = rng.standard_normal((n, dim)).astype(dtype)
    g = rng.standard_normal((n, dim)).astype(dtype)
    gld = rng.standard_normal(n).astype(dtype)
    tol = 1e-12 if dtype == "float64" else 1e-4

    # forward and inverse, one layer at a time
    xs, log_det = [z], 0
    for f in layers:
        x, ld = f.forward(xs[-1])
        xs.append(x)
        log_det = log_det + ld
    x, ld = chain.forward(z)
    np.testing.assert_allclose(x, xs[-1], rtol=tol, atol=tol)
    np.testing.assert_allclose(ld, log_det, rtol=tol, atol=tol)
    z_back, ldi = chain.inverse(x)
    np.testing.assert_allclose(z_back, z, rtol=100 * tol, atol=100 * tol)
    np.testing.assert_allclose(ldi, -ld, rtol=100 * tol, atol=100 * tol)

    # backward: the chain rule by hand, last layer first
    grads, gz = [], g
    for f, inp in zip(reversed(layers), reversed(xs[:-1])):
        gz, gp = f.backward(inp, gz, gld)
        grads.insert(0, gp)
    grad_z, grad_params = chain.backward(z, g, gld)
    np.testing.assert_allclose(grad_z, gz, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad_params, np.concatenate(grads), rtol=tol, atol=tol * n)

    # inverse_backward: the inverse runs the last layer first, so its VJP goes first-to-last
    grads, gx = [], g
    for f, out in zip(layers, xs[1:]):
        gx, gp = f.inverse_backward(out, gx, gld)
        grads.append(gp)
    grad_x, grad_params = chain.inverse_backward(x, g, gld)
    np.testing.assert_allclose(grad_x, gx, rtol=100 * tol, atol=100 * tol)
    np.testing.assert_allclose(grad_params, np.concatenate(grads), rtol=100 * tol, atol=100 * tol * n)


def test_gradient_sums_are_bitwise_reproducible():
    rng = np.random.default_rng(1)
    chain = pf.Chain(rowwise_layers(3, "float64", rng))
    z = rng.standard_normal((10_000, 3))
    g = rng.standard_normal(z.shape)
    first = chain.backward(z, g, 1.0)[1]
    # Chunks are fixed by the batch size, so the sum order is too.
    np.testing.assert_array_equal(chain.backward(z, g, 1.0)[1], first)


def forward_layer_by_layer(layers, z):
    """x and the log-determinants' sum and sum of magnitudes (float64) with
    the layers run one at a time."""
    x, ld_sum, ld_terms = z, np.zeros(len(z)), np.zeros(len(z))
    for flow in layers:
        x, ld = flow.forward(x)
        ld_sum += ld
        ld_terms += np.abs(ld)
    return x, ld_sum, ld_terms


def assert_chain_is_its_layers(layers, z):
    """The chain's forward against its layers run one at a time, their
    log-determinants summed in float64; relative accuracy of log_det (no
    absolute slack: a nearly-identity chain's log_det is tiny).  x within
    two ulps per layer of its row's scale: through a run of radial layers
    the chain keeps the rows relative to the next layer's centre, rounded
    differently from the layers' own z0 + g (z - z0) (as accurately:
    test_radial_run_is_as_accurate_as_its_layers)."""
    x_ref, ld_ref, _ = forward_layer_by_layer(layers, z)
    x, log_det = pf.Chain(layers).forward(z)
    assert np.all(np.isfinite(log_det))
    rtol = 1e-13 if z.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(log_det, ld_ref, rtol=rtol, atol=0)
    scale = 1.0 + np.abs(x_ref).max(axis=1, keepdims=True)
    assert np.all(np.abs(x - x_ref) <= 2 * len(layers) * np.finfo(z.dtype).eps * scale)


def assert_block_inverse_is_the_row_inverse(chain, z):
    """From 32 rows on the inverse solves each layer for a block of rows at
    once (vectorised Newton or closed form, log-determinants multiplied up),
    below that it takes the scalar row functions.  The two agree -- planar
    solves stop at slightly different points, each within rounding of the
    root, which a layer with c = -0.999 amplifies by 1/D (up to ~1e3), hence
    the 1000 ulps -- and the inverse undoes the forward to that accuracy.
    Returns f(z)."""
    x, log_det = chain.forward(z)
    z_back, log_det_inv = chain.inverse(x)
    rows = [chain.inverse(x[i:i + 20]) for i in range(0, len(x), 20)]
    z_rows = np.concatenate([r[0] for r in rows])
    ld_rows = np.concatenate([r[1] for r in rows])
    tol = 1000 * np.finfo(z.dtype).eps
    scale = np.abs(z).max(axis=1, keepdims=True) + np.abs(x).max(axis=1, keepdims=True)
    assert np.all(np.abs(z_back - z_rows) <= tol * scale)
    assert np.all(np.abs(z_back - z) <= tol * scale)
    np.testing.assert_allclose(log_det_inv, ld_rows, rtol=tol, atol=tol)
    np.testing.assert_allclose(log_det_inv, -log_det, rtol=tol, atol=tol)
    return x


def assert_block_inverse_vjp_is_the_row_vjp(chain, x):
    """inverse_backward from 32 rows on (block kernels) against the row
    functions on slices of 20 rows, the parameter gradient summed over the
    slices in float64."""
    tol = 1000 * np.finfo(x.dtype).eps
    rng = np.random.default_rng(4)
    g = rng.standard_normal(x.shape).astype(x.dtype)
    gld = rng.standard_normal(len(x)).astype(x.dtype)
    grad_x, grad_params = chain.inverse_backward(x, g, gld)
    parts = [chain.inverse_backward(x[i:i + 20], g[i:i + 20], gld[i:i + 20])
             for i in range(0, len(x), 20)]
    gx_rows = np.concatenate([p[0] for p in parts])
    gp_rows = np.sum([p[1].astype(np.float64) for p in parts], axis=0)
    gx_scale = np.abs(gx_rows).max(axis=1, keepdims=True) + 1.0
    assert np.all(np.abs(grad_x - gx_rows) <= tol * gx_scale)
    np.testing.assert_allclose(grad_params, gp_rows, rtol=tol,
                               atol=tol * np.abs(gp_rows).max())


# c = w.uhat of each layer, by regime: the product of the layers' factors D
# near 1 (log1p accuracy must survive), far below 1 (t^2 + hp sp branch; the
# product underflows float32 unless renormalised), far above 1 (overflows it)
# and a mix of all.
PLANAR_REGIMES = {
    "near_identity": [1e-6],
    "near_identity_below": [-1e-6],
    "contracting": [-0.999],
    "expanding": [500.0],
    "mixed": [-0.999, 1e-6, 500.0, 2.0, -0.6, 0.3, -0.3],
}


def planar_regime_layers(regime, dtype, num_layers=16, dim=16):
    # Layer k acts on coordinate k only (w = a e_k), so each of the first dim
    # layers sees a fresh standard-normal pre-activation and its D stays in
    # its regime however far earlier layers moved the point.
    cs = PLANAR_REGIMES[regime]
    layers = []
    for k in range(num_layers):
        c = cs[k % len(cs)]
        a = 0.01 if c > 100 else 1.0
        w = a * np.eye(dim)[k % dim]
        u = np.log(np.expm1(c + 1.0)) * w / (w @ w)   # m(w.u) = c
        flow = pf.Planar(dim, dtype=dtype)
        flow.set_params(np.concatenate([u, w, [0.1]]))
        layers.append(flow)
    return layers


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("regime", sorted(PLANAR_REGIMES))
def test_planar_chain_log_det_is_the_sum_of_layer_log_dets(regime, dtype):
    # A chain of several planar layers multiplies their factors D up and
    # takes one logarithm per row; this must agree with the same layers run
    # one at a time, each taking its own (separately tested) logarithm, the
    # log-determinants summed in float64.
    layers = planar_regime_layers(regime, dtype)
    z = np.random.default_rng(3).standard_normal((300, 16)).astype(dtype)
    assert_chain_is_its_layers(layers, z)

    chain = pf.Chain(layers)
    x = assert_block_inverse_is_the_row_inverse(chain, z)

    # The inverse's VJP where the layers are well conditioned: with
    # c = -0.999 the VJP's d ~ 1/D^2 turns the two solvers' ulp-level
    # differences in t into differences far above rounding.
    if -0.999 not in PLANAR_REGIMES[regime]:
        assert_block_inverse_vjp_is_the_row_vjp(chain, x)


def dense_layers(kinds, dim, dtype, rng):
    """Layers by letter (P planar, R radial, S scale) with dense random
    parameters: w'.uhat of neighbouring planar layers is not zero."""
    classes = {"P": pf.Planar, "R": pf.Radial, "S": pf.ElementwiseScale}
    layers = []
    for kind in kinds:
        flow = classes[kind](dim, dtype=dtype, rng=rng)
        flow.set_params(rng.normal(0.0, 0.5, flow.num_params))
        layers.append(flow)
    return layers


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [33, 100, 300])
@pytest.mark.parametrize("kinds", ["PP", "PPP", "PPPPP", "PSPPRPPPSPPPP", "RPPRPSP"])
def test_planar_runs_of_any_length_are_their_layers(kinds, n, dtype):
    # The block forward takes a run of planar layers two at a time, the
    # second layer's w'.x' + b' formed from the pair's input as
    # (w'.x + b') + (w'.uhat) t; an odd run ends with a single layer.  Blocks
    # of 33, 100 and 128 rows.  x within an ulp per layer of the row's scale
    # (measured: half that), log_det within 2 ulps per layer of the sum of
    # the layers' |log_det| (these random layers' log-determinants cancel, so
    # no relative bound holds for the layers run one at a time either).
    rng = np.random.default_rng(7)
    layers = dense_layers(kinds, 16, dtype, rng)
    z = rng.standard_normal((n, 16)).astype(dtype)
    x_ref, ld_ref, ld_terms = forward_layer_by_layer(layers, z)
    x, log_det = pf.Chain(layers).forward(z)
    eps = np.finfo(dtype).eps
    scale = 1.0 + np.abs(x_ref).max(axis=1, keepdims=True)
    assert np.all(np.abs(x - x_ref) <= len(layers) * eps * scale)
    assert np.all(np.abs(log_det - ld_ref) <= 2 * len(layers) * eps * (1.0 + ld_terms))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("num_layers", [2, 5, 16])
def test_planar_pairs_are_as_accurate_as_their_layers(num_layers, dtype):
    # Against the formula in wider precision (longdouble for float64, float64
    # for float32): the chain's x within an ulp per layer of the row's scale
    # and log_det within 2 ulps per layer of the layers' summed |log_det|,
    # as the layers run one at a time (both measured at <= 0.9 ulps per
    # layer for x and <= 9 ulps of the sum for log_det over five seeds).
    rng = np.random.default_rng(11)
    layers = dense_layers("P" * num_layers, 16, dtype, rng)
    z = rng.standard_normal((300, 16)).astype(dtype)
    wide = np.longdouble if dtype == "float64" else np.float64
    x_wide, ld_wide, ld_terms = z.astype(wide), np.zeros(len(z), wide), np.zeros(len(z), wide)
    for flow in layers:
        x_wide, ld = planar_reference(flow.params.astype(wide), x_wide)
        ld_wide += ld
        ld_terms += np.abs(ld)
    eps = np.finfo(dtype).eps
    x_bound = num_layers * eps * (1 + np.abs(x_wide).max(axis=1, keepdims=True))
    ld_bound = 2 * num_layers * eps * (1 + ld_terms)
    x_layers, ld_layers, _ = forward_layer_by_layer(layers, z)
    for x, log_det in (pf.Chain(layers).forward(z), (x_layers, ld_layers)):
        assert np.all(np.abs(x - x_wide) <= x_bound)
        assert np.all(np.abs(log_det - ld_wide) <= ld_bound)


@pytest.mark.parametrize("direction", ["backward", "inverse_backward"])
@pytest.mark.parametrize("n", [40, 300])
def test_chain_vjps_match_finite_differences_in_blocks(direction, n):
    # Planar, scale, shift and radial layers on 40 rows (a short block) and 300 (full
    # blocks): the block kernels of the forward and of the inverse, and their
    # VJPs, against central differences.
    rng = np.random.default_rng(5)
    layers = [pf.Planar(3), pf.ElementwiseScale(3), pf.Radial(3), pf.Planar(3), pf.Shift(3),
              pf.Radial(3), pf.Planar(3)]
    for f in layers:
        f.set_params(rng.normal(0.0, 0.7, f.num_params))
    layers[1].set_params(rng.uniform(0.5, 1.5, 3) * rng.choice([-1.0, 1.0], 3))
    chain = pf.Chain(layers)
    z = rng.standard_normal((n, 3))
    grad_v, grad_params, fd_v, fd_params = vjp_and_finite_differences(
        chain, z, direction, np.random.default_rng(6))
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_params, fd_params, rtol=1e-5, atol=1e-6 * n)


# beta / alpha of each radial layer, by regime (beta >= -alpha is the
# invertibility bound): near identity, strongly contracting (g = 1 + beta h
# down to ~1e-3 near z0: g^(dim - 1) underflows float32 within a layer),
# expanding, and a mix with planar layers in the same chain.
RADIAL_REGIMES = {
    "near_identity": [1e-6],
    "near_identity_below": [-1e-6],
    "contracting": [-0.999],
    "expanding": [200.0],
    "mixed": [-0.999, 1e-6, 200.0, "planar", 0.5, -0.3],
}


def radial_with_ratio(dim, ratio, rng, dtype):
    flow = pf.Radial(dim, dtype=dtype)
    alpha = rng.uniform(0.5, 2.0)
    flow.set_params(np.concatenate([[np.log(alpha), np.log(np.expm1(alpha * (1.0 + ratio)))],
                                    rng.normal(0.0, 0.3, dim)]))
    return flow


def radial_regime_layers(regime, dtype, num_layers=16):
    dim, rng = 6, np.random.default_rng(4)
    ratios = RADIAL_REGIMES[regime]
    layers = []
    for k in range(num_layers):
        ratio = ratios[k % len(ratios)]
        if ratio == "planar":
            flow = pf.Planar(dim, dtype=dtype, rng=rng)
            flow.set_params(rng.normal(0.0, 0.5, flow.num_params))
        else:
            flow = radial_with_ratio(dim, ratio, rng, dtype)
        layers.append(flow)
    return layers


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("regime", sorted(RADIAL_REGIMES))
def test_radial_chain_log_det_is_the_sum_of_layer_log_dets(regime, dtype):
    # As for planar: the chain multiplies the factors g (weight dim - 1) and
    # g2 up and takes two logarithms per row at the end.
    layers = radial_regime_layers(regime, dtype)
    z = (0.3 * np.random.default_rng(4).standard_normal((300, 6))).astype(dtype)
    assert_chain_is_its_layers(layers, z)
    if -0.999 not in RADIAL_REGIMES[regime]:
        # A chain of strongly contracting radial layers amplifies every
        # rounding of its inverse (an FMA in the vectorised code, a multiply
        # and an add in the row function) by its inverse Jacobian: there the
        # two agree only to ~1e-12 (test_radial checks single layers).
        chain = pf.Chain(layers)
        x = assert_block_inverse_is_the_row_inverse(chain, z)
        assert_block_inverse_vjp_is_the_row_vjp(chain, x)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("regime", ["near_identity", "contracting", "expanding"])
def test_radial_run_is_as_accurate_as_its_layers(regime, dtype):
    # Through a run of radial layers the chain keeps the rows relative to the
    # next layer's centre; against the formula in wider precision (longdouble
    # for float64, float64 for float32) its x must stay within one ulp per
    # layer of the row's scale, as the layers run one at a time do (both
    # measured at <= 5 ulps for these 16 layers).
    layers = radial_regime_layers(regime, dtype)
    z = (0.3 * np.random.default_rng(4).standard_normal((300, 6))).astype(dtype)
    wide = np.longdouble if dtype == "float64" else np.float64
    x_wide = z.astype(wide)
    for flow in layers:
        x_wide = radial_reference(flow.params.astype(wide), x_wide)[0]
    x_layers = forward_layer_by_layer(layers, z)[0]
    bound = len(layers) * np.finfo(dtype).eps * (1 + np.abs(x_wide).max(axis=1, keepdims=True))
    for x in (pf.Chain(layers).forward(z)[0], x_layers):
        assert np.all(np.abs(x - x_wide) <= bound)


def layer_with_least_factor(kind, dim, least, rng, dtype):
    """A planar layer with sp = 1 + c = least, or a radial one with s/alpha
    = least: the least value its log-determinant factors take."""
    if kind == "planar":
        w = np.eye(dim)[0]
        params = np.concatenate([np.log(np.expm1(least)) * w, w, [0.1]])
    else:
        params = np.concatenate([[0.0, np.log(np.expm1(least))], rng.normal(0.0, 0.3, dim)])
    flow = (pf.Planar if kind == "planar" else pf.Radial)(dim, dtype=dtype)
    flow.set_params(params)
    return flow


@pytest.mark.parametrize("kind", ["planar", "radial"])
@pytest.mark.parametrize("dtype,least", [("float32", 2.0**-95), ("float32", 2.0**-85),
                                         ("float64", 2.0**-995), ("float64", 2.0**-985)])
def test_factor_bounds_at_the_range_edge(kind, dtype, least):
    # A layer whose least factor sits just outside (checked row by row) or
    # just inside (ChainLogDet::layer_factors: FACTORS_IN_RANGE)
    # log_sum_normal's range with the bound's 2^10 margin; in float64 such
    # a bound also renormalises the products at that layer, which checks
    # its rows either way.  Its log-det terms are huge (-65 per dimension
    # in float32) beside the others', so the chain's log_det is held to a
    # few ulps of the terms' magnitudes.
    dim, rng = 6, np.random.default_rng(1)
    layers = [layer_with_least_factor(kind, dim, least, rng, dtype),
              radial_with_ratio(dim, -0.7, rng, dtype), radial_with_ratio(dim, 2.0, rng, dtype)]
    z = (0.5 * rng.standard_normal((300, dim))).astype(dtype)
    x_ref, ld_ref, ld_terms = forward_layer_by_layer(layers, z)
    x, log_det = pf.Chain(layers).forward(z)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(log_det - ld_ref) <= 4 * eps * ld_terms)
    assert np.all(np.abs(x - x_ref) <= 4 * eps * (1 + np.abs(x_ref).max(axis=1, keepdims=True)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["planar_mixed", "radial_mixed"])
def test_non_finite_rows_in_a_block_only_affect_themselves(name, dtype):
    # The mixed chains hold layers whose factors are near one or bounded in
    # range (their products skip the range checks: a NaN is carried through
    # the products to the logarithm) beside, in float32, layers whose
    # products renormalise and whose rows are checked and flagged.  A NaN
    # row must come out NaN, log-determinant included, and leave every
    # other row of its block exactly as without it.
    build = planar_regime_layers if name.startswith("planar") else radial_regime_layers
    chain = pf.Chain(build(name.split("_")[1], dtype))
    z = (0.3 * np.random.default_rng(6).standard_normal((300, chain.dim))).astype(dtype)
    x_ref, ld_ref = chain.forward(z)
    bad = z.copy()
    bad[[7, 150], 1] = np.nan
    bad[200, 0] = np.inf
    x, ld = chain.forward(bad)
    keep = np.setdiff1d(np.arange(300), [7, 150, 200])
    np.testing.assert_array_equal(x[keep], x_ref[keep])
    np.testing.assert_array_equal(ld[keep], ld_ref[keep])
    assert np.isnan(ld[[7, 150]]).all() and np.isnan(x[[7, 150]]).any(axis=1).all()


def long_chain(name, dtype):
    """150 layers whose factors lie near their bounds: planar D ~ 500 or
    ~ 1e-3, radial g up to ~ 200 or down to ~ 1e-3; or 100 contracting
    radial layers (g ~ 0.4) each followed by a planar layer whose factor
    bound (sp = 1e-30, D in [1e-30, 1]) makes it renormalise its product,
    though its D stays ~ 1 (w = 1e4 e_k: |w.z| >> 1) and it hardly moves
    the points."""
    if name == "radial_planar":
        rng, dim = np.random.default_rng(4), 6
        layers = []
        for k in range(100):
            layers.append(radial_with_ratio(dim, -0.999, rng, dtype))
            w = 1e4 * np.eye(dim)[k % dim]
            planar = pf.Planar(dim, dtype=dtype)
            planar.set_params(np.concatenate([np.log(np.expm1(1e-30)) * w / (w @ w), w, [0.0]]))
            layers.append(planar)
        return layers
    kind, regime = name.split("_")
    build = planar_regime_layers if kind == "planar" else radial_regime_layers
    return build(regime, dtype, num_layers=150)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["planar_expanding", "planar_contracting", "radial_expanding",
                                  "radial_contracting", "radial_planar"])
def test_long_chains_renormalise_their_products_in_time(name, dtype):
    # The products are renormalised only at the layers where the bounds of
    # the factors multiplied in since the last time add up past a limit
    # (ChainLogDet::renormalise), which 150 layers pass several times.
    # Unless that happens in time, the contracting planar chain's product
    # (2^-1360 in all) underflows even in float64, and the planar chains
    # (2^143 expanding: D -> 1 once the points have moved out) and the
    # contracting radial ones underflow or overflow float32 -- with planar
    # layers in between (radial_planar), also where a planar layer's
    # renormalisation of its product were taken for the radial g's.
    layers = long_chain(name, dtype)
    z = np.random.default_rng(5).standard_normal((300, layers[0].dim)).astype(dtype)
    if name.startswith("radial"):
        z *= 0.3
    assert_chain_is_its_layers(layers, z)
    if name.endswith("expanding"):
        # The inverse multiplies the same factors up, last layer first (the
        # contracting chains are too ill-conditioned to invert to a few ulps).
        chain = pf.Chain(layers)
        x, log_det = chain.forward(z)
        tol = 1e-12 if dtype == "float64" else 1e-3
        np.testing.assert_allclose(chain.inverse(x)[1], -log_det, rtol=tol)


QUADRATIC_RUNS = {
    "rowwise": lambda dtype: rowwise_layers(4, dtype, np.random.default_rng(8)),
    "planar_mixed": lambda dtype: planar_regime_layers("mixed", dtype),
    "planar_expanding": lambda dtype: planar_regime_layers("expanding", dtype),
    "radial_mixed": lambda dtype: radial_regime_layers("mixed", dtype),
}


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("n", [31, 33, 129, 1500])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("run", sorted(QUADRATIC_RUNS))
def test_fused_quadratic_loss_is_the_map_then_its_vjp(run, dtype, n, inverse):
    # One fused run: the block VJP forms the cotangents a y, b and the
    # log-determinant sums itself (below 32 rows, the inverse's row VJP
    # does), over short and padded blocks and two chunks.
    chain = pf.Chain(QUADRATIC_RUNS[run](dtype))
    assert len(chain._units.units) == 1
    dim = chain.dim
    z = (0.3 * np.random.default_rng(n).standard_normal((n, dim))).astype(dtype)
    v = chain.forward(z)[0] if inverse else z
    a, b = 0.7, -1.3
    loss, grad_v, grad_params = chain.quadratic_loss_and_grad(v, a, b, inverse=inverse)
    y, ld = (chain.inverse if inverse else chain.forward)(v)
    expected = 0.5 * a * np.sum(y.astype(np.float64) ** 2) + b * np.sum(ld, dtype=np.float64)
    scale = 0.5 * a * np.sum(y.astype(np.float64) ** 2) + abs(b) * np.sum(np.abs(ld)) + 1.0
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert abs(loss - expected) <= tol * scale
    ref_v, ref_params = (chain.inverse_backward if inverse else chain.backward)(v, a * y, b)
    tol = 1e-11 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(grad_v, ref_v, rtol=tol, atol=tol * np.abs(ref_v).max())
    np.testing.assert_allclose(grad_params, ref_params, rtol=tol,
                               atol=tol * np.abs(ref_params).max())


def _lower_cpu_levels():
    from pyflowcore._kernels import vmath
    return [lv for lv in (vmath.BASELINE, vmath.AVX2) if lv < vmath.best_level()]


@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("level", _lower_cpu_levels())
def test_every_cpu_copy_of_the_block_kernels_agrees(level, dtype, dim):
    # The block kernels are compiled for baseline x86-64, AVX2 and AVX-512
    # and the widest the CPU runs is picked: the other tests check that one.
    # Here the narrower copies (other vector widths, their own code for the
    # GCC vector-extension sweeps, FMA contracted or not) must agree with it.
    from pyflowcore._kernels import rowwise
    rng = np.random.default_rng(dim)
    chain = pf.Chain(rowwise_layers(dim, dtype, rng))
    z = (0.5 * rng.standard_normal((300, dim))).astype(dtype)
    g = rng.standard_normal(z.shape).astype(dtype)
    x = chain.forward(z)[0]

    def evaluate():
        return [*chain.forward(z), *chain.inverse(x),
                *chain.backward(z, g, 0.5), *chain.inverse_backward(x, g, 0.5),
                *chain.quadratic_loss_and_grad(z, 0.7, -1.3),
                *chain.quadratic_loss_and_grad(x, 0.7, -1.3, inverse=True)]

    widest = evaluate()
    old = rowwise._set_max_cpu_level(level)
    try:
        narrower = evaluate()
    finally:
        rowwise._set_max_cpu_level(old)
    tol = 1e-11 if dtype == "float64" else 1e-4
    for a, b in zip(narrower, widest):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
