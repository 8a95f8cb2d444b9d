"""Checks specific to CholeskyProduct and the tril converters.

The generic battery (reference agreement, finite-difference Jacobian and
VJPs, round trips, dtypes, threads, ...) runs on the case in
``tests/reference/cholesky.py``; here: the packing order, the image (positive
definite matrices), the per-row NaN policy of the inverse, in-place outputs,
the parallel path, and the converters.
"""

import math

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore.flows.cholesky import matrix_to_tril, tril_to_matrix
from tests.flows.test_common import numerical_jacobian

DTYPES = ["float64", "float32"]
TOL = {"float64": 1e-12, "float32": 1e-5}


def test_spec_ordering_example():
    # z = (z_11, z_21, z_22, z_31, z_32, z_33): unit diagonal, so
    # L = [[1, 0, 0], [2, 1, 0], [3, 4, 1]] and Sigma = L L^T by hand.
    flow = pf.CholeskyProduct(3)
    x, log_det = flow.forward([0.0, 2.0, 0.0, 3.0, 4.0, 0.0])
    np.testing.assert_allclose(x, [1.0, 2.0, 5.0, 3.0, 10.0, 26.0], rtol=1e-15)
    np.testing.assert_allclose(log_det, 3 * math.log(2.0), rtol=1e-15)
    # A diagonal entry is exponentiated: L = [[2, 0], [1, 1]], Sigma = [[4, 2], [2, 2]],
    # log_det = 2 log 2 + (2 log L_11 + 1 log L_22) + (z_11 + z_22) = 5 log 2.
    x, log_det = pf.CholeskyProduct(2).forward([math.log(2.0), 1.0, 0.0])
    np.testing.assert_allclose(x, [4.0, 2.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(log_det, 5 * math.log(2.0), rtol=1e-15)


def test_dim_and_no_parameters():
    flow = pf.CholeskyProduct(4, dtype="float32", rng=0)
    assert flow.n == 4 and flow.dim == 10 and flow.num_params == 0
    assert flow.params.shape == (0,) and flow.params.dtype == np.float32
    _, grad_params = flow.backward(np.zeros(10), np.ones(10), 1.0)
    assert grad_params.shape == (0,)
    assert repr(flow) == "CholeskyProduct(n=4, dtype='float32')"


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                      (True, TypeError), ("3", TypeError)])
def test_bad_order_is_refused(bad, err):
    with pytest.raises(err, match="n must be an integer >= 1"):
        pf.CholeskyProduct(bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_image_is_positive_definite_and_matches_cholesky(n, dtype, rng):
    flow = pf.CholeskyProduct(n, dtype=dtype)
    z = rng.standard_normal((20, flow.dim)).astype(dtype)
    x, _ = flow.forward(z)
    S = tril_to_matrix(x, n).astype(np.float64)
    assert np.all(np.linalg.eigvalsh(S) > 0)
    if dtype == "float32":
        # Refactorising the rounded Sigma amplifies float32 rounding by
        # Sigma's condition number (1e4 and more at n = 8), so the factor
        # check below is only well posed in float64.
        return
    # numpy's Cholesky factor of Sigma is L(z).
    L = np.linalg.cholesky(S)
    rows, cols = np.tril_indices(n)
    L_z = np.zeros_like(L)
    L_z[:, rows, cols] = z
    L_z[:, np.arange(n), np.arange(n)] = np.exp(np.diagonal(L_z, axis1=1, axis2=2))
    np.testing.assert_allclose(L, L_z, rtol=1e-10, atol=1e-10)


def test_log_det_matches_jacobian_for_a_larger_matrix(rng):
    # The generic test covers n <= 4; n = 6 exercises every loop bound again.
    flow = pf.CholeskyProduct(6)
    z = 0.5 * rng.standard_normal((3, flow.dim))
    jac = numerical_jacobian(lambda v: flow.forward(v)[0], z)
    sign, logabs = np.linalg.slogdet(jac)
    assert np.all(sign != 0)
    np.testing.assert_allclose(flow.forward(z)[1], logabs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_order_one(dtype):
    # n = 1: x = exp(2 z), log_det = log 2 + 2 z; inverse z = log(x) / 2.
    flow = pf.CholeskyProduct(1, dtype=dtype)
    z = np.array([[-1.5], [0.0], [0.7]], dtype=dtype)
    x, log_det = flow.forward(z)
    np.testing.assert_allclose(x, np.exp(2 * z), rtol=TOL[dtype])
    np.testing.assert_allclose(log_det, math.log(2.0) + 2 * z[:, 0], rtol=TOL[dtype], atol=TOL[dtype])
    z_back, ldi = flow.inverse(x)
    np.testing.assert_allclose(z_back, z, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(ldi, -log_det, rtol=TOL[dtype], atol=TOL[dtype])
    # d/dz [g exp(2z) + h (log 2 + 2z)] = 2 g x + 2 h.
    g, h = np.array([[0.3], [-1.0], [2.0]]), np.array([1.0, 0.5, -2.0])
    grad_z, _ = flow.backward(z, g, h)
    np.testing.assert_allclose(grad_z, 2 * g * x + 2 * h[:, None], rtol=10 * TOL[dtype])
    # d/dx [g log(x)/2 - h (log 2 + log x)] = (g/2 - h) / x.
    grad_x, _ = flow.inverse_backward(x, g, h)
    np.testing.assert_allclose(grad_x, (g / 2 - h[:, None]) / x, rtol=10 * TOL[dtype])


def _mixed_batch(n, rng):
    """A batch of packed matrices; rows 1, 3 and 4 are not positive definite."""
    flow = pf.CholeskyProduct(n)
    x = flow.forward(rng.standard_normal((6, flow.dim)))[0]
    S = tril_to_matrix(x, n)
    S[1] = -S[1]                                   # negative definite
    S[3, -1, -1] = S[3, -1, :-1] @ np.linalg.solve(S[3, :-1, :-1], S[3, :-1, -1])  # singular
    S[4] = 0.0
    S[4, 0, 0], S[4, -1, 0], S[4, 0, -1] = 1.0, 2.0, 2.0   # indefinite (or 0 pivot)
    return matrix_to_tril(S), [0, 2, 5], [1, 3, 4]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_inverse_of_a_non_positive_definite_row_is_nan_in_that_row_only(n, rng):
    flow = pf.CholeskyProduct(n)
    x, good, bad = _mixed_batch(n, rng)
    z, ldi = flow.inverse(x)
    assert np.all(np.isnan(z[bad])) and np.all(np.isnan(ldi[bad]))
    for i in good:
        z_i, ldi_i = flow.inverse(x[i])
        np.testing.assert_array_equal(z[i], z_i)
        np.testing.assert_array_equal(ldi[i], ldi_i)
        assert np.all(np.isfinite(z_i))
    logp = flow.log_prob(x)
    assert np.all(np.isnan(logp[bad])) and np.all(np.isfinite(logp[good]))
    grad_x, _ = flow.inverse_backward(x, np.ones_like(x), 1.0)
    assert np.all(np.isnan(grad_x[bad])) and np.all(np.isfinite(grad_x[good]))
    # Non-finite entries are refused the same way.
    x_inf = x[good].copy()
    x_inf[0, 0] = np.inf
    x_inf[1, -2] = -np.inf
    z_inf, ldi_inf = flow.inverse(x_inf)
    assert np.all(np.isnan(z_inf[:2])) and np.all(np.isnan(ldi_inf[:2]))
    assert np.all(np.isfinite(z_inf[2]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 4])
def test_outputs_may_overwrite_inputs(n, dtype, rng):
    # out= naming the input array itself runs the kernels in place; the
    # header orders its loops for that.
    flow = pf.CholeskyProduct(n, dtype=dtype)
    z = rng.standard_normal((5, flow.dim)).astype(dtype)
    g = rng.standard_normal((5, flow.dim)).astype(dtype)
    h = rng.standard_normal(5).astype(dtype)
    x, log_det = flow.forward(z)
    z_back, ldi = flow.inverse(x)
    grad_z, _ = flow.backward(z, g, h)
    grad_x, _ = flow.inverse_backward(x, g, h)
    empty = np.empty(0, dtype=dtype)

    buf = z.copy()
    flow.forward(buf, out=(buf, np.empty(5, dtype=dtype)))
    np.testing.assert_array_equal(buf, x)
    flow.inverse(buf, out=(buf, np.empty(5, dtype=dtype)))
    np.testing.assert_array_equal(buf, z_back)
    buf = g.copy()
    flow.backward(z, buf, h, out=(buf, empty))
    np.testing.assert_array_equal(buf, grad_z)
    buf = g.copy()
    flow.inverse_backward(x, buf, h, out=(buf, empty))
    np.testing.assert_array_equal(buf, grad_x)


def test_parallel_path_matches_row_by_row(rng):
    # 1500 rows take the OpenMP path (and the per-thread scratch of
    # inverse_backward); slices of 100 rows stay on the calling thread.
    flow = pf.CholeskyProduct(4)
    z = rng.standard_normal((1500, flow.dim))
    g = rng.standard_normal(z.shape)
    h = rng.standard_normal(len(z))
    x, _ = flow.forward(z)
    x[700] = -x[700]  # one non-positive-definite row in the middle
    whole = [flow.forward(z), flow.inverse(x), flow.backward(z, g, h)[:1],
             flow.inverse_backward(x, g, h)[:1]]
    pieces = [[], [], [], []]
    for s in range(0, len(z), 100):
        sl = slice(s, s + 100)
        pieces[0].append(flow.forward(z[sl]))
        pieces[1].append(flow.inverse(x[sl]))
        pieces[2].append(flow.backward(z[sl], g[sl], h[sl])[:1])
        pieces[3].append(flow.inverse_backward(x[sl], g[sl], h[sl])[:1])
    for got, parts in zip(whole, pieces):
        for k, arr in enumerate(got):
            np.testing.assert_array_equal(arr, np.concatenate([p[k] for p in parts]))
    assert np.all(np.isnan(whole[3][0][700])) and np.isfinite(whole[3][0][[699, 701]]).all()


def test_last_layer_of_a_chain(rng):
    shift = pf.Shift(3)
    shift.set_params([0.1, -0.2, 0.3])
    chol = pf.CholeskyProduct(2)
    chain = pf.Chain([shift, chol])
    z = rng.standard_normal((4, 3))
    x, log_det = chain.forward(z)
    x_ref, ld_ref = chol.forward(z + shift.params)
    np.testing.assert_allclose(x, x_ref, rtol=1e-14)
    np.testing.assert_allclose(log_det, ld_ref, rtol=1e-14)
    np.testing.assert_allclose(chain.inverse(x)[0], z, rtol=1e-12, atol=1e-12)


# -- converters ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_tril_converters_round_trip(n, dtype, rng):
    m = n * (n + 1) // 2
    x = rng.standard_normal((3, m)).astype(dtype)
    S = tril_to_matrix(x, n)
    assert S.shape == (3, n, n) and S.dtype == dtype
    np.testing.assert_array_equal(S, np.transpose(S, (0, 2, 1)))
    rows, cols = np.tril_indices(n)
    for k, (i, j) in enumerate(zip(rows, cols)):
        assert np.all(S[:, i, j] == x[:, k])
    back = matrix_to_tril(S)
    assert back.shape == (3, m) and back.dtype == dtype
    np.testing.assert_array_equal(back, x)
    # One matrix / one vector.
    assert tril_to_matrix(x[1], n).shape == (n, n)
    np.testing.assert_array_equal(matrix_to_tril(S[1]), x[1])
    # Empty batches.
    assert tril_to_matrix(np.zeros((0, m)), n).shape == (0, n, n)
    assert matrix_to_tril(np.zeros((0, n, n))).shape == (0, m)


def test_tril_converters_take_array_likes():
    S = tril_to_matrix([1, 2, 3], 2)
    assert S.dtype == np.float64
    np.testing.assert_array_equal(S, [[1.0, 2.0], [2.0, 3.0]])
    np.testing.assert_array_equal(matrix_to_tril([[1, 2], [3, 4]]), [1.0, 3.0, 4.0])
    # Only the lower triangle is read; the upper one may hold anything.
    S = np.array([[1.0, np.nan], [2.0, 3.0]])
    np.testing.assert_array_equal(matrix_to_tril(S), [1.0, 2.0, 3.0])
    F = np.asfortranarray(np.arange(9.0).reshape(3, 3))
    np.testing.assert_array_equal(matrix_to_tril(F), [0.0, 3.0, 4.0, 6.0, 7.0, 8.0])


def test_tril_converters_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 6\) or \(6,\) for n=3"):
        tril_to_matrix(np.zeros(5), 3)
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(3,\) for n=2"):
        tril_to_matrix(np.zeros((2, 2, 3)), 2)
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        tril_to_matrix(2.0, 1)
    with pytest.raises(TypeError, match="n must be an integer"):
        tril_to_matrix(np.zeros(3), 2.0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        tril_to_matrix(np.zeros(0), 0)
    with pytest.raises(TypeError, match="real"):
        tril_to_matrix(np.zeros(3, dtype=complex), 2)
    with pytest.raises(ValueError, match="square"):
        matrix_to_tril(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        matrix_to_tril(np.zeros(4))
    with pytest.raises(ValueError, match="square"):
        matrix_to_tril(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="n >= 1"):
        matrix_to_tril(np.zeros((0, 0)))
    with pytest.raises(TypeError, match="real"):
        matrix_to_tril(np.array([["a", "b"], ["c", "d"]]))
