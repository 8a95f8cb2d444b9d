"""Radial-specific tests; the generic battery runs on tests/reference/radial.py."""

import math

import numpy as np
import pytest

import pyflowcore as pf
from tests.finite_differences import vjp_and_finite_differences
from tests.reference.radial import make_radial, make_radial_contracting, radial_reference

DTYPES = ["float64", "float32"]
EPS = {"float64": 1e-12, "float32": 1e-5}
# |z - z0| scales per dtype, from underflow-prone to overflow-prone.
SCALES = {"float64": (1e-150, 1e-8, 1.0, 1e8, 1e150), "float32": (1e-18, 1e-4, 1.0, 1e4, 1e18)}


def radial(dim, log_alpha, s, z0, dtype="float64"):
    """A flow with alpha = exp(log_alpha) and alpha + beta = softplus(beta_raw) = s."""
    beta_raw = math.log(math.expm1(s)) if s < 30 else s + math.log1p(-math.exp(-s))
    flow = pf.Radial(dim, dtype=dtype)
    flow.set_params(np.concatenate([[log_alpha, beta_raw], z0]))
    return flow


def points(rng, n, dim, z0, scale):
    d = rng.standard_normal((n, dim))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return z0 + d * scale


def rowmax(a):
    return np.abs(a).max(axis=1)


# -- construction -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 5, 16])
def test_initial_values_and_layout(dim, dtype):
    flow = pf.Radial(dim, dtype=dtype, rng=7)
    assert flow.num_params == dim + 2 and flow.params.dtype == np.dtype(dtype)
    # Glorot-uniform, drawn in layout order: scalars as (1, 1), z0 as (dim, 1).
    rng = np.random.default_rng(7)
    expected = np.concatenate([[rng.uniform(-math.sqrt(3), math.sqrt(3))],
                               [rng.uniform(-math.sqrt(3), math.sqrt(3))],
                               rng.uniform(-math.sqrt(6 / (dim + 1)), math.sqrt(6 / (dim + 1)), dim)])
    np.testing.assert_array_equal(flow.params, expected.astype(dtype))
    assert np.shares_memory(flow.z0, flow.params)
    np.testing.assert_array_equal(flow.z0, flow.params[2:])
    np.testing.assert_allclose(flow.alpha, np.exp(flow.params[0]), rtol=1e-6)
    np.testing.assert_allclose(flow.beta, -flow.alpha + np.log1p(np.exp(flow.params[1])), rtol=1e-5)


def test_construction_is_reproducible():
    a = pf.Radial(5, rng=3)
    b = pf.Radial(5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, pf.Radial(5, rng=4).params)
    with pytest.raises(TypeError, match="rng"):
        pf.Radial(5, rng="seed")


# -- accuracy ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [make_radial, make_radial_contracting])
def test_forward_is_accurate_at_every_distance(make, dtype):
    # Against the formula in wider precision, at distances from the centre
    # over 36 (float32) or 300 (float64) decades: x within 3 ulps of its row's
    # scale, log_det within 2 ulps of dim + |log_det| (its terms' weights;
    # measured: 1.9 and 0.9).  The block kernels' r and 1 / (alpha + r) are
    # estimates and corrections in the AVX-512 copy: uncorrected, 2^-14
    # relative, they would be ~10^3 ulps off.
    rng = np.random.default_rng(7)
    dim, n = 16, 512
    wide = np.longdouble if dtype == "float64" else np.float64
    decades = 150 if dtype == "float64" else 18
    for _ in range(5):
        flow = make(dim, dtype, rng)
        distance = 10.0 ** rng.uniform(-decades, decades, (n, 1))
        z = points(rng, n, dim, flow.params[2:].astype(np.float64), distance).astype(dtype)
        x, log_det = flow.forward(z)
        x_ref, log_det_ref = radial_reference(flow.params.astype(wide), z.astype(wide))
        eps = np.finfo(dtype).eps
        scale = np.abs(x_ref).max(axis=1, keepdims=True)
        assert np.all(np.abs(x - x_ref) <= 3 * eps * scale)
        assert np.all(np.abs(log_det - log_det_ref) <= 2 * eps * (dim + np.abs(log_det_ref)))


# -- invertibility ----------------------------------------------------------

@pytest.mark.parametrize("log_alpha", [-20.0, 0.0, 20.0])
@pytest.mark.parametrize("beta_raw", [-1000.0, -40.0, -3.0, 0.0, 3.0, 40.0, 1000.0])
def test_beta_never_below_minus_alpha(log_alpha, beta_raw):
    flow = pf.Radial(3)
    # z0 = 0, so that even r = 1e-12 alpha is representable as z - z0.
    flow.set_params([log_alpha, beta_raw, 0.0, 0.0, 0.0])
    assert flow.beta >= -flow.alpha
    # The radial profile rho(r) = r (1 + beta / (alpha + r)) is then
    # non-decreasing, so the flow is invertible; the log-determinant is
    # finite away from z0 even when beta = -alpha exactly.
    r = np.geomspace(1e-12, 1e12, 200) * math.exp(log_alpha)
    z = flow.z0 + r[:, None] * np.array([0.6, 0.0, 0.8])
    x, log_det = flow.forward(z)
    rho = np.linalg.norm(x - flow.z0, axis=1)
    assert np.all(np.diff(rho) >= 0)
    assert np.all(np.isfinite(log_det))


def test_beta_is_minus_alpha_plus_softplus_for_random_params():
    rng = np.random.default_rng(0)
    flow = pf.Radial(2)
    for _ in range(100):
        theta = rng.standard_normal(4) * 10
        flow.set_params(theta)
        expected = -math.exp(theta[0]) + np.logaddexp(0, theta[1])
        assert flow.beta >= -flow.alpha
        np.testing.assert_allclose(flow.beta, expected, rtol=1e-12, atol=1e-12 * flow.alpha)


# Hard regimes: (log_alpha, (alpha + beta) / alpha).
HARD = [
    (0.0, 1e-10),    # beta near -alpha: contraction by 1e-10 near z0
    (0.0, 1e-3),
    (-25.0, 1e-6),   # alpha tiny
    (25.0, 1e-6),    # alpha huge
    (-25.0, 1e6),    # alpha tiny, strong expansion
    (25.0, 1.0),     # alpha huge, beta = 0
    (0.0, 1e8),      # beta huge
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 16])
@pytest.mark.parametrize("log_alpha,s_rel", HARD)
def test_inverse_round_trip_in_hard_cases(log_alpha, s_rel, dim, dtype):
    # z0 = 0: the rounding of z0 + (z - z0) is then relative per entry, and
    # a strong contraction does not amplify it (with z0 != 0 it would, by the
    # inverse Jacobian, which no implementation can avoid).
    alpha = math.exp(log_alpha)
    flow = radial(dim, log_alpha, alpha * s_rel, np.zeros(dim), dtype)
    rng = np.random.default_rng(1)
    batches = [points(rng, 8, dim, 0.0, scale * min(alpha, 1.0)).astype(dtype)
               for scale in SCALES[dtype]]
    # Each scale alone (8 rows: the row functions), then all at once (40
    # rows: the vectorised block kernels, which hand the rows whose squared
    # distance under- or overflows to the row functions).
    for z in batches + [np.concatenate(batches)]:
        x, log_det = flow.forward(z)
        z_back, log_det_inv = flow.inverse(x)
        assert np.all(np.isfinite(x)) and np.all(np.isfinite(z_back))
        tol = EPS[dtype] * np.maximum(rowmax(z), rowmax(x))
        assert np.all(rowmax(z_back - z) <= tol), rowmax(z_back - z) / tol
        np.testing.assert_allclose(log_det_inv, -log_det, rtol=0,
                                   atol=100 * EPS[dtype] * max(1.0, np.abs(log_det).max()))


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("log_alpha,s_rel", [(0.0, 0.5), (-5.0, 3.0), (5.0, 0.5), (0.0, 1e4)])
def test_inverse_round_trip_off_origin(log_alpha, s_rel, dim):
    # With z0 != 0 and 1 + beta h >= 1/2 the round trip is accurate relative
    # to the magnitudes involved, at every scale of |z - z0|.
    alpha = math.exp(log_alpha)
    rng = np.random.default_rng(2)
    z0 = rng.uniform(-1, 1, dim)
    flow = radial(dim, log_alpha, alpha * s_rel, z0)
    batches = [points(rng, 8, dim, z0, scale) for scale in SCALES["float64"]]
    for z in batches + [np.concatenate(batches)]:   # row functions, then blocks
        x, log_det = flow.forward(z)
        z_back, log_det_inv = flow.inverse(x)
        tol = 1e-13 * (rowmax(z) + rowmax(x) + np.abs(z0).max())
        assert np.all(rowmax(z_back - z) <= tol), rowmax(z_back - z) / tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s_rel", [1e-8, 0.3, 1.0, 50.0])
def test_inverse_at_the_centre_is_exact(s_rel, dtype):
    dim = 4
    z0 = np.array([0.25, -1.5, 3.0, 1e-3])
    flow = radial(dim, 0.7, math.exp(0.7) * s_rel, z0, dtype)
    z0 = flow.z0.copy()
    z, log_det_inv = flow.inverse(z0)
    np.testing.assert_array_equal(z, z0)
    # At r = 0 both factors of the determinant are (alpha + beta) / alpha.
    np.testing.assert_allclose(log_det_inv, -dim * math.log(s_rel), rtol=EPS[dtype] * 10)
    # The same in a batch that takes the block kernel.
    zs, lds = flow.inverse(np.tile(z0, (40, 1)))
    np.testing.assert_array_equal(zs, np.tile(z0, (40, 1)))
    np.testing.assert_allclose(lds, -dim * math.log(s_rel), rtol=EPS[dtype] * 10)
    x, log_det = flow.forward(z0)
    np.testing.assert_array_equal(x, z0)
    np.testing.assert_allclose(log_det, -log_det_inv, rtol=EPS[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta_raw", [0.5, -30.0, -60.0, -400.0])
def test_inverse_vjp_at_the_centre(beta_raw, dtype):
    # At x = z0, z = z0 for all parameters and log_det_inv = -dim log(s /
    # alpha), s = softplus(beta_raw): d/dlog_alpha = dim, d/dbeta_raw =
    # -dim sigmoid(beta_raw) / s; the radial term (the kink) is 0.  With a
    # tiny s that term's l_r / g2 ~ 1 / s^2 overflowed and times u = 0 gave
    # NaN (float64 from beta_raw = -400, float32 from -50).
    if dtype == "float32" and beta_raw < -80:
        pytest.skip("softplus(beta_raw) underflows float32")
    dim = 3
    flow = pf.Radial(dim, dtype=dtype)
    flow.set_params([0.7, beta_raw, 0.25, -1.5, 3.0])
    x = np.tile(flow.z0, (40, 1))     # rows of a block, which go to the row function
    s = np.logaddexp(0.0, beta_raw)
    expected = [dim, -dim / (1.0 + math.exp(-beta_raw)) / s, 0.0, 0.0, 0.0]
    for rows in (x[:1], x):
        grad_x, grad_params = flow.inverse_backward(rows, None, 1.0)
        np.testing.assert_allclose(grad_params, len(rows) * np.array(expected),
                                   rtol=EPS[dtype] * 10, atol=EPS[dtype] * 10 * len(rows))
        np.testing.assert_array_equal(grad_x, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_at_a_tiny_length_scale(dtype):
    # alpha ~ |z - z0| ~ lam: the gradients are ~1 / lam, finite, while h^2
    # ~ 1 / lam^2 overflows (float64 lam = 1e-155, float32 1e-20).  Reference
    # in the scaled variables r = lam rho, alpha = lam a, s / lam.
    lam = 1e-155 if dtype == "float64" else 1e-20
    dim, beta_raw = 2, 0.5
    flow = pf.Radial(dim, dtype=dtype)
    flow.set_params([math.log(lam), beta_raw, 0.0, 0.0])
    z = np.array([[0.6, -0.8]]) * lam
    a = float(np.exp(np.asarray(math.log(lam), dtype).astype(np.float64))) / lam
    zs = np.asarray(z, dtype).astype(np.float64) / lam
    rho = float(np.hypot(*zs[0]))
    sl = math.log1p(math.exp(beta_raw)) / lam            # s / lam
    n = rho * (2 * a + rho) + sl * a                      # numerator of g2 (scaled)
    dl_drho = (dim - 1) * (1 / (sl + rho) - 1 / (a + rho)) + (2 * a + 2 * rho) / n - 2 / (a + rho)
    grad_z = dl_drho / lam * zs[0] / rho
    grad_log_alpha = a * (-(dim + 1) / (a + rho) + (2 * rho + sl) / n)
    grad_beta_raw = (1 / (1 + math.exp(-beta_raw))) / lam * ((dim - 1) / (sl + rho) + a / n)
    expected = np.concatenate([[grad_log_alpha, grad_beta_raw], -grad_z])
    rtol = 1e-12 if dtype == "float64" else 1e-5
    got_z, got_params = flow.backward(z, None, 1.0)
    np.testing.assert_allclose(got_z[0], grad_z, rtol=rtol)
    np.testing.assert_allclose(got_params, expected, rtol=rtol)
    x = flow.forward(z)[0]
    assert np.all(np.isfinite(np.concatenate(flow.inverse_backward(x, None, 1.0), axis=None)))


def test_collapsed_centre_when_beta_is_minus_alpha():
    # softplus(-1000) underflows to 0, so beta = -alpha exactly: z0 is a fixed
    # point with a singular Jacobian; the inverse still returns z0 there.
    flow = pf.Radial(2)
    flow.set_params([0.0, -1000.0, 1.0, 2.0])
    z, log_det_inv = flow.inverse([1.0, 2.0])
    np.testing.assert_array_equal(z, [1.0, 2.0])
    assert log_det_inv == np.inf
    zs, lds = flow.inverse(np.tile([1.0, 2.0], (40, 1)))   # the block kernel
    np.testing.assert_array_equal(zs, np.tile([1.0, 2.0], (40, 1)))
    assert np.all(lds == np.inf)
    x = np.array([[1.0 + 1e-3, 2.0], [4.0, -2.0]])
    np.testing.assert_allclose(flow.forward(flow.inverse(x)[0])[0], x, rtol=1e-12)


def test_non_finite_rows_in_inverse_only_affect_themselves():
    flow = pf.Radial(3, rng=0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    ref_z, ref_ld = flow.inverse(x)
    bad = x.copy()
    bad[1, 2] = np.inf
    bad[3, 0] = -np.inf
    bad[4, 1] = np.nan
    z, ld = flow.inverse(bad)
    np.testing.assert_array_equal(z[[0, 2]], ref_z[[0, 2]])
    np.testing.assert_array_equal(ld[[0, 2]], ref_ld[[0, 2]])
    assert not np.all(np.isfinite(z[[1, 3, 4]]), axis=1).any()


# -- gradients --------------------------------------------------------------

@pytest.mark.parametrize("direction", ["backward", "inverse_backward"])
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("log_alpha,s_rel", [(0.0, 0.02), (-3.0, 0.05), (2.0, 20.0)])
def test_vjp_vs_finite_differences_moderately_hard(log_alpha, s_rel, dim, direction):
    # Strong contraction (or expansion) with points at r ~ alpha, where the
    # radial profile bends most; z0 away from the origin.
    alpha = math.exp(log_alpha)
    rng = np.random.default_rng(3)
    z0 = rng.uniform(-1, 1, dim)
    flow = radial(dim, log_alpha, alpha * s_rel, z0)
    z = points(rng, 6, dim, z0, alpha * rng.uniform(0.3, 3.0, (6, 1)))
    grad_v, grad_params, fd_v, fd_p = vjp_and_finite_differences(
        flow, z, direction, rng, h_points=1e-6 * min(alpha, 1.0))
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-6, atol=1e-6 * np.abs(fd_v).max())
    np.testing.assert_allclose(grad_params, fd_p, rtol=1e-6, atol=1e-6 * np.abs(fd_p).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_point_gradient_at_the_centre(dtype):
    # The map itself is differentiable at z0 with Jacobian (alpha+beta)/alpha I
    # (only the log-determinant has a kink there).
    flow = pf.Radial(3, dtype=dtype)
    flow.set_params([0.4, -0.5, 0.2, -0.1, 0.3])
    ratio = np.log1p(np.exp(-0.5)) / np.exp(0.4)
    g = np.array([1.0, -2.0, 0.5])
    grad_z, _ = flow.backward(flow.z0, g, 0.0)
    np.testing.assert_allclose(grad_z, ratio * g, rtol=10 * EPS[dtype])
    grad_x, _ = flow.inverse_backward(flow.z0, g, 0.0)
    np.testing.assert_allclose(grad_x, g / ratio, rtol=10 * EPS[dtype])
    for method in (flow.backward, flow.inverse_backward):
        gv, gp = method(flow.z0, g, 1.0)
        assert np.all(np.isfinite(gv)) and np.all(np.isfinite(gp))


def test_gradients_are_reproducible_across_chunks():
    # Several row chunks: the sums are added in chunk order, so repeated calls
    # agree bitwise, and they agree with a float64 sum of per-row gradients.
    flow = pf.Radial(4, rng=1)
    rng = np.random.default_rng(5)
    z = rng.standard_normal((3000, 4)) * 2
    g = rng.standard_normal(z.shape)
    gld = rng.standard_normal(3000)
    _, gp1 = flow.backward(z, g, gld)
    _, gp2 = flow.backward(z, g, gld)
    np.testing.assert_array_equal(gp1, gp2)
    parts = sum(flow.backward(z[k:k + 500], g[k:k + 500], gld[k:k + 500])[1]
                for k in range(0, 3000, 500))
    np.testing.assert_allclose(gp1, parts, rtol=1e-12, atol=1e-12 * np.abs(parts).max())
