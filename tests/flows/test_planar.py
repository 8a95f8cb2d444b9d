"""Planar-specific checks: initialisation, the uhat reparameterisation, the
iterative inverse in its hard regimes, and the log-determinant in the tails.

The generic battery (reference agreement, Jacobians, VJPs, ...) runs on the
case in ``tests/reference/planar.py``.
"""

import math
import zlib

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore.flows._base import glorot_uniform
from tests.finite_differences import vjp_and_finite_differences
from tests.reference.planar import planar_reference, planar_uhat

DTYPES = ["float64", "float32"]
DIMS = [1, 2, 5, 16]
# Round-trip tolerance relative to the size of the row (|z|, |x|): float64 to
# ~1e-12 as SPEC's "full precision" demands, float32 the same multiple of eps.
EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}
ROUND_TRIP = {"float64": 1e-12, "float32": 1e-12 / EPS["float64"] * EPS["float32"]}


def planar(u, w, b, dtype="float64"):
    flow = pf.Planar(len(u), dtype=dtype)
    flow.set_params(np.concatenate([u, w, [b]]))
    return flow


def m_of(a):
    """m(a) = -1 + softplus(a), in float64."""
    return -1.0 + np.logaddexp(0.0, a)


def parts(flow):
    p = flow.params.astype(np.float64)
    d = flow.dim
    return p[:d], p[d:2 * d], p[2 * d]


# -- construction --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_initial_values_follow_spec(dim, dtype):
    flow = pf.Planar(dim, dtype=dtype, rng=123)
    assert flow.num_params == 2 * dim + 1 and flow.params.dtype == np.dtype(dtype)
    u, w, b = flow.params[:dim], flow.params[dim:2 * dim], flow.params[2 * dim]
    np.testing.assert_array_equal(u, 0)
    assert b == 0
    expected = glorot_uniform(np.random.default_rng(123), (dim,), dim, 1, dtype)
    np.testing.assert_array_equal(w, expected)
    assert np.all(np.abs(w) <= math.sqrt(6.0 / (dim + 1))) and np.any(w != 0)


@pytest.mark.parametrize("dim", DIMS)
def test_construction_is_reproducible(dim):
    a = pf.Planar(dim, rng=np.random.default_rng(9))
    b = pf.Planar(dim, rng=np.random.default_rng(9))
    c = pf.Planar(dim, rng=9)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.params, c.params)
    if dim > 1:
        assert not np.array_equal(a.params, pf.Planar(dim, rng=10).params)


# -- the uhat reparameterisation -------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_uhat_matches_numpy_reference(dim, dtype):
    rng = np.random.default_rng(dim)
    for scale_w in (1e-8, 1.0, 1e3):
        w = rng.standard_normal(dim) * scale_w
        flow = planar(rng.standard_normal(dim), w, 0.0, dtype)
        u64, w64, _ = parts(flow)
        expected = planar_uhat(u64, w64)
        size = np.abs(u64).max() + abs(m_of(w64 @ u64) - w64 @ u64) / np.linalg.norm(w64)
        np.testing.assert_allclose(flow.uhat, expected, rtol=0, atol=50 * EPS[dtype] * size)


def adversarial_params(rng, dim):
    """(u, w) pairs that push w.uhat to -1 or stress the scaling of w."""
    out = []
    for _ in range(5):
        w = rng.standard_normal(dim)
        out += [(rng.standard_normal(dim), w),       # random
                (-10.0 * w, w),                     # the brief's u = -10 w
                (-1e3 * w / (w @ w), w),            # w.u = -1000: m underflows to -1
                (np.log(1e-12) * w / (w @ w), w),   # w.uhat = -1 + 1e-12
                (1e3 * w, 1e-8 * w),                # tiny w
                (rng.standard_normal(dim), 1e3 * w),
                (-rng.standard_normal(dim) ** 2 * 1e6, w)]
    return out


@pytest.mark.parametrize("dim", DIMS)
def test_w_dot_uhat_is_at_least_minus_one(dim):
    rng = np.random.default_rng(100 + dim)
    for u, w in adversarial_params(rng, dim):
        flow = planar(u, w, 0.0)
        uhat = flow.uhat
        m = m_of(w @ u)
        # The computed uhat reproduces m(w.u) >= -1 up to the rounding of one
        # dot product, even where u + k w/|w|^2 cancels heavily.
        rounding = 8 * EPS["float64"] * np.abs(w) @ np.abs(uhat)
        assert w @ uhat >= -1.0 - rounding
        assert abs(w @ uhat - m) <= rounding + 8 * EPS["float64"] * abs(m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_w_leaves_u_unchanged_and_log_det_zero(dtype):
    u = np.array([0.5, -2.0, 1.5])
    flow = planar(u, np.zeros(3), 0.7, dtype)
    np.testing.assert_array_equal(flow.uhat, u.astype(dtype))
    z = np.random.default_rng(0).standard_normal((6, 3))
    x, log_det = flow.forward(z)
    np.testing.assert_allclose(x, z + np.tanh(0.7) * u, rtol=10 * EPS[dtype])
    np.testing.assert_array_equal(log_det, 0)
    z_back, log_det_inv = flow.inverse(x)
    np.testing.assert_allclose(z_back, z.astype(dtype), rtol=0, atol=20 * EPS[dtype])
    np.testing.assert_array_equal(log_det_inv, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [8, 15, 16, 17])
@pytest.mark.parametrize("n", [0, 1, 33, 300])
def test_lone_layer_forward_in_place_at_row_widths(dim, n, dtype):
    """A lone layer at the row widths around one 64-byte vector (8 doubles,
    16 floats): empty and one-row batches, a short block and several, against
    the formula, and in place (``out=`` aliasing z) bitwise equal to out of
    place.  (test_common's block-shape battery covers dims 8 and 16 at more
    batch sizes, out of place.)"""
    rng = np.random.default_rng(dim * 1000 + n)
    flow = planar(rng.standard_normal(dim), rng.standard_normal(dim) / np.sqrt(dim),
                  rng.uniform(-0.5, 0.5), dtype)
    z = rng.standard_normal((n, dim)).astype(dtype)
    z_before = z.copy()
    x, log_det = flow.forward(z)
    np.testing.assert_array_equal(z, z_before)
    x_ref, ld_ref = planar_reference(flow.params.astype(np.float64), z.astype(np.float64))
    tol = 20 * EPS[dtype]
    scale = max(1.0, np.abs(x_ref).max(initial=0))
    np.testing.assert_allclose(x, x_ref, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(log_det, ld_ref, rtol=tol, atol=tol)
    in_place = z.copy()
    x2, log_det2 = flow.forward(in_place, out=(in_place, np.empty(n, dtype=dtype)))
    assert x2 is in_place
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(log_det2, log_det)


# -- the inverse in hard regimes -------------------------------------------------

def hard_case(name, dim, rng):
    """Parameters and base points for one hard regime of the inverse."""
    w = rng.standard_normal(dim)
    w /= np.linalg.norm(w)
    u = rng.standard_normal(dim)
    b = rng.uniform(-0.5, 0.5)
    z = 2.0 * rng.standard_normal((200, dim))
    if name == "w.uhat=-1 exactly":
        u = -1e3 * w                                  # softplus(-1000) underflows to 0
    elif name == "w.uhat=-1+1e-12":
        u = np.log(1e-12) * w                         # softplus(w.u) = 1e-12
    elif name == "w.uhat=-1, |w.x|~1e6":
        u = -1e3 * w
        z += np.outer(rng.choice([-1.0, 1.0], len(z)) * 1e6 * rng.uniform(0.5, 1.0, len(z)), w)
    elif name == "|w.x|~1e6":
        z += np.outer(rng.choice([-1.0, 1.0], len(z)) * 1e6 * rng.uniform(0.5, 1.0, len(z)), w)
    elif name == "|w|=1e3":
        w *= 1e3
    elif name == "|w|=1e3, w.uhat=-1":
        u = -w
        w *= 1e3
    elif name == "|w|=1e-8":
        w *= 1e-8
    elif name == "|w|=1e-8, w.uhat=-1+1e-12":
        # w.z + b is ~b for every row: keep it off the degenerate s = 0.
        w *= 1e-8
        u = np.log(1e-12) * w / (w @ w)
        b = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
    elif name == "b=40":
        b = 40.0
    elif name == "b=-1e3, w.uhat=-1":
        b, u = -1e3, -1e3 * w
    return u, w, b, z


HARD = ["w.uhat=-1 exactly", "w.uhat=-1+1e-12", "w.uhat=-1, |w.x|~1e6", "|w.x|~1e6",
        "|w|=1e3", "|w|=1e3, w.uhat=-1", "|w|=1e-8", "|w|=1e-8, w.uhat=-1+1e-12", "b=40",
        "b=-1e3, w.uhat=-1"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", HARD)
@pytest.mark.parametrize("dim", [1, 5, 16])
def test_inverse_round_trip_in_hard_cases(name, dim, dtype):
    rng = np.random.default_rng([zlib.crc32(name.encode()), dim])
    u, w, b, z = hard_case(name, dim, rng)
    flow = planar(u, w, b, dtype)
    z = z.astype(dtype)
    x, log_det = flow.forward(z)
    z_back, log_det_inv = flow.inverse(x)
    assert np.all(np.isfinite(z_back)) and np.all(np.isfinite(log_det_inv))
    tol = ROUND_TRIP[dtype]
    z64, x64 = z.astype(np.float64), x.astype(np.float64)
    size = 1.0 + np.abs(z64).max(axis=1) + np.abs(x64).max(axis=1)
    # x -> z -> x reproduces x everywhere: the solve is backward stable.
    x_again, _ = flow.forward(z_back)
    err_x = np.abs(x_again.astype(np.float64) - x64).max(axis=1)
    assert np.all(err_x <= tol * size), err_x.max()
    # z -> x -> z to full precision wherever the map is well conditioned.  Where
    # 1 + h' w.uhat -> 0 (w.uhat = -1 and w.z + b near 0) z is only determined
    # to the rounding of x divided by that factor, as for any algorithm.
    u64, w64, b64 = parts(flow)
    c = w64 @ planar_uhat(u64, w64)
    d = 1.0 + (1.0 - np.tanh(z64 @ w64 + b64) ** 2) * c
    good = d >= 0.05
    assert good.mean() > 0.5
    err_z = np.abs(z_back.astype(np.float64) - z64).max(axis=1)
    assert np.all(err_z[good] <= tol * size[good]), err_z[good].max()
    scale_ld = 1.0 + np.abs(log_det.astype(np.float64))
    np.testing.assert_allclose(log_det_inv[good], -log_det[good], rtol=0,
                               atol=float(tol * 100 * scale_ld.max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_at_the_degenerate_root(dtype):
    # w.uhat = -1 exactly and w.z + b = 0 (or nearly): G(s) = s - tanh(s) - Y
    # has a triple root at 0; the solve must still end, finite and backward
    # stable, and the log-determinant is -inf only at s = 0 exactly.
    dim = 4
    rng = np.random.default_rng(3)
    w = rng.standard_normal(dim)
    flow = planar(-1e3 * w / (w @ w), w, 0.0, dtype)
    w = flow.params[dim:2 * dim].astype(np.float64)
    z = rng.standard_normal((40, dim))
    z -= np.outer(z @ w, w) / (w @ w)                    # s = 0
    # float32 rounds w.z to ~1e-7 absolute: smaller offsets would land on 0.
    low = -12 if dtype == "float64" else -5
    z[10:] += np.outer(rng.choice([-1, 1], 30) * np.logspace(low, -1, 30), w / (w @ w))
    x, log_det = flow.forward(z.astype(dtype))
    z_back, log_det_inv = flow.inverse(x)
    assert np.all(np.isfinite(z_back))
    x_again, _ = flow.forward(z_back)
    size = 1.0 + np.abs(x).max(axis=1)
    assert np.all(np.abs(x_again - x).max(axis=1) <= ROUND_TRIP[dtype] * size)
    assert np.all(log_det[10:] > -np.inf) and not np.any(np.isnan(log_det))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_terminates_on_non_finite_rows_and_params(dtype):
    rng = np.random.default_rng(4)
    flow = planar(rng.standard_normal(3), rng.standard_normal(3), 0.2, dtype)
    x = rng.standard_normal((6, 3))
    x[1, 0] = np.inf
    x[2, 1] = -np.inf
    x[3, 2] = np.nan
    x[4] = [1e300, -1e300, 1e300] if dtype == "float64" else [1e38, -1e38, 1e38]
    z, log_det_inv = flow.inverse(x)
    keep = [0, 5]
    ref, ref_ld = flow.inverse(x[keep])
    np.testing.assert_array_equal(z[keep], ref)
    np.testing.assert_array_equal(log_det_inv[keep], ref_ld)
    for row in (1, 2, 3):
        assert not np.all(np.isfinite(z[row]))
    grad_x, _ = flow.inverse_backward(x[keep], np.ones((2, 3)), np.ones(2))
    assert np.all(np.isfinite(grad_x))
    bad = flow.params.copy()
    bad[0] = np.nan
    flow.set_params(bad)
    z, log_det_inv = flow.inverse(x)
    assert np.all(np.isnan(log_det_inv))


# -- gradients in a moderately hard case -----------------------------------------

@pytest.mark.parametrize("direction", ["backward", "inverse_backward"])
@pytest.mark.parametrize("dim", [2, 5])
def test_vjp_finite_differences_near_minus_one(direction, dim):
    # w.uhat = m(-4.5) ~ -0.989, |w| = 2, b = 0.3: strong contraction along w,
    # with base points where 1 + h' w.uhat ranges over ~[0.03, 1].
    rng = np.random.default_rng(11 + dim)
    w = rng.standard_normal(dim)
    w *= 2.0 / np.linalg.norm(w)
    u = -4.5 * w / (w @ w) + 0.3 * rng.standard_normal(dim)
    u -= (w @ u + 4.5) * w / (w @ w)
    flow = planar(u, w, 0.3)
    z = rng.standard_normal((6, dim))
    s = z @ w + 0.3
    z += np.outer(np.where(np.abs(s) < 0.25, np.where(s >= 0, 0.25, -0.25) - s, 0.0), w / (w @ w))
    grad_v, grad_params, fd_v, fd_params = vjp_and_finite_differences(flow, z, direction, rng)
    np.testing.assert_allclose(grad_v, fd_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_params, fd_params, rtol=1e-5,
                               atol=1e-5 * np.abs(fd_params).max())


def log_det_gradient(u, w, b, z):
    """d log D / d(u, w, b) for one point, in float64 from the formulas with
    c = m(w.u) differentiated as a function of w.u (dc/du = sigmoid(w.u) w,
    dc/dw = sigmoid(w.u) u) and D = t^2 + h' softplus(w.u):
      dlogD/ds = -2 t h' c / D,  s = w.z + b."""
    from scipy.special import expit
    wu = float(w @ u)
    s = float(w @ z + b)
    t, hp = np.tanh(s), 1.0 / np.cosh(s) ** 2
    sp = np.logaddexp(0.0, wu)
    d = t * t + hp * sp
    dc = hp * expit(wu) / d                      # dlogD/dc dc/d(w.u)
    ds = -2.0 * t * hp * (sp - 1.0) / d
    return np.concatenate([dc * w, dc * u + ds * z, [ds]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [0.0, 2.0**-20, 2.0**-10, 0.5])
@pytest.mark.parametrize("wu", [-20.0, -40.0, -80.0, -700.0])
def test_log_det_gradient_near_the_boundary(wu, s, dtype):
    # w.uhat = m(w.u) -> -1: dL/dc = g h'/D is huge (1/softplus(w.u) at
    # s = 0) and dc/du = sigmoid(w.u) w tiny; taken through uhat, where
    # sigmoid(w.u) is 1 + k'(w.u) by cancellation, the gradient was 0 or
    # 1024 instead of 1 at w.u = -40, s = 0.
    if dtype == "float32" and wu < -80:
        pytest.skip("softplus(w.u) underflows float32")
    w = np.array([1.0, 0.5])
    u = wu * w / (w @ w) + np.array([0.5, -1.0])     # w.u = wu, u not along w
    z = np.array([0.25, 0.5])
    b = s - w @ z                                     # s = w.z + b, exact in float32
    flow = planar(u, w, b, dtype)
    expected = log_det_gradient(*(np.asarray(a, dtype).astype(np.float64)
                                  for a in (u, w, b, z)))
    rtol = 1e-12 if dtype == "float64" else 1e-5
    grad = flow.backward(z[None], None, 1.0)[1]
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    loss_grad = flow.quadratic_loss_and_grad(z[None], 0.0, 1.0)[2]
    np.testing.assert_allclose(loss_grad, expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())
    if s == 0.0:
        # t = 0: the inverse's VJP of log_det_inv = -log D has no grad_x
        # term, so its parameter part is minus the forward's.
        x = flow.forward(z[None])[0]
        grad_inv = flow.inverse_backward(x, None, 1.0)[1]
        np.testing.assert_allclose(grad_inv, -expected, rtol=rtol,
                                   atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_with_a_tiny_w(dtype):
    # k / |w|^2 alone overflows for |w| ~ 1e-155 (float32: 1e-21), where the
    # gradient, with t ~ |w| tiny too, is ~1 / |w|.
    scale = 1e-155 if dtype == "float64" else 1e-21
    u, w, z = np.array([0.5, -0.3]), np.array([0.7, 0.4]) * scale, np.array([[0.3, 0.2]])
    flow = planar(u, w, 0.0, dtype)
    grad = flow.backward(z, np.ones((1, 2)), 1.0)[1]
    assert np.all(np.isfinite(grad))
    # x = z + uhat t and uhat = u + k(w.u) w / |w|^2, k(0) = log 2 - 1: with
    # w -> w + e_i, dL/dw_i is dominated by the derivative of k w t / |w|^2.
    wn, zn = (np.asarray(a, dtype).astype(np.float64) / scale for a in (w, z[0] * scale))
    k = np.log(2.0) - 1.0
    # t = tanh(w.z) ~ w.z (|w.z| <= 1e-155): uhat t ~ k w (w.z) / |w|^2 + u (w.z),
    # so d(sum x)/dw = k [z (sum w) + (w.z) 1] / |w|^2 - 2 k (w.z)(sum w) w / |w|^4
    # + O(1); scaled back by 1/scale.
    sw, wz, nn = wn.sum(), wn @ zn, wn @ wn
    lead = k * (zn * sw + wz) / nn - 2 * k * wz * sw * wn / nn**2
    np.testing.assert_allclose(grad[2:4] * scale, lead, rtol=1e-3)


# -- the log-determinant ----------------------------------------------------------

def careful_log_det(s, c, sp):
    """log(1 + h'(s) c) in float64, h' = 1/cosh^2 (not 1 - tanh^2), with
    log1p near 1 and the cancellation-free t^2 + h' softplus(w.u) below."""
    with np.errstate(over="ignore"):
        hp = 1.0 / np.cosh(s) ** 2          # cosh overflows to inf: hp = 0 exactly
    q = hp * c
    return np.where(q > -0.5, np.log1p(q), np.log(np.tanh(s) ** 2 + hp * sp))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [2.0, 0.5, -0.5, -0.999])
def test_log_det_finite_and_accurate_in_the_tails(c, dtype):
    # 1 - tanh^2(s) ~ 4 exp(-2|s|) rounds to 0 past |s| ~ 19 when computed
    # as written; the kernel keeps it, so log_det ~ h' c is right to relative
    # precision far into the tails (down to underflow), and finite throughout.
    w = np.array([0.6, -0.8, 0.0])
    u = np.log(np.expm1(c + 1.0)) * w     # w.u = a with m(a) = c
    flow = planar(u, w, 0.25, dtype)
    big = 1e150 if dtype == "float64" else 1e30
    s = np.concatenate([np.linspace(-60, 60, 61), [-1e4, 1e6, big]])
    z = (np.outer(s - 0.25, w) + np.array([0.0, 0.0, 1.0])).astype(dtype)
    x, log_det = flow.forward(z)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(log_det))
    u64, w64, b64 = parts(flow)
    c64 = m_of(w64 @ u64)
    s64 = z.astype(np.float64) @ w64 + b64
    expected = careful_log_det(s64, c64, 1.0 + c64)
    np.testing.assert_allclose(log_det, expected, rtol=200 * EPS[dtype],
                               atol=np.finfo(dtype).tiny)
    _, ref_ld = planar_reference(flow.params.astype(np.float64), z.astype(np.float64))
    np.testing.assert_allclose(log_det, ref_ld, rtol=1e-6 if dtype == "float32" else 1e-12,
                               atol=1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_det_with_w_dot_uhat_minus_one(dtype):
    # D = tanh^2 + h' softplus(w.u) is a sum of non-negative terms: no
    # cancellation when w.uhat rounds to -1 while softplus(w.u) = 1e-12 > 0.
    w = np.array([1.0, 0.0])
    for wu in (-1e3, np.log(1e-12)):
        flow = planar(wu * w, w, 0.0, dtype)
        s = np.array([1e-7, 1e-3, 0.1, 1.0, 5.0, 30.0])
        z = np.stack([s, np.zeros_like(s)], axis=1).astype(dtype)
        _, log_det = flow.forward(z)
        sp = float(np.logaddexp(0.0, float(np.asarray(wu, dtype))))
        expected = careful_log_det(z[:, 0].astype(np.float64), sp - 1.0, sp)
        np.testing.assert_allclose(log_det, expected, rtol=100 * EPS[dtype])
