"""RealNVP-specific checks; the generic battery runs on tests/reference/realnvp.py."""

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore.flows.realnvp import realnvp_masks

DTYPES = ["float64", "float32"]


def bits(s):
    return np.array([int(c) for c in s], dtype=np.uint8)


@pytest.mark.parametrize("dim,index,expected", [
    (8, 0, "11110000"),          # f = 1, first on
    (8, 5, "00110011"),          # frequencies 1, 1, 4, 4, 2, 2: mask 5 is f = 2, first off
    (8, 4, "11001100"),
    (8, 3, "01010101"),          # f = dim/2 = 4: w = 2, half = 1
    (17, 0, "1" * 9 + "0" * 8),  # w = 17 rounded up to 18, half = 9
    (17, 1, "0" * 9 + "1" * 8),
])
def test_spec_mask_examples(dim, index, expected):
    np.testing.assert_array_equal(realnvp_masks(dim, 6)[index], bits(expected))


def test_spec_dim5_four_masks():
    expected = np.array([bits(s) for s in ("11100", "00011", "10101", "01010")])
    np.testing.assert_array_equal(realnvp_masks(5, 4), expected)
    np.testing.assert_array_equal(pf.RealNVP(5, 4).masks, expected)


@pytest.mark.parametrize("dim", [2, 3, 5, 8, 16, 17, 33])
def test_mask_pairs_are_complementary_and_nontrivial(dim):
    masks = realnvp_masks(dim, 12)
    assert masks.shape == (12, dim) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    np.testing.assert_array_equal(masks[0::2] + masks[1::2], 1)
    np.testing.assert_array_equal(masks[0::2, 0], 1)
    # Every mask passes something and changes something.
    assert np.all(masks.sum(axis=1) >= 1) and np.all(masks.sum(axis=1) <= dim - 1)


def test_mask_frequency_sequence():
    # dim 32: f = 1, 16, 2, 8, 4, 4, 8, 2 -> run lengths 16, 1, 8, 2, 4, 4, 2, 8.
    masks = realnvp_masks(32, 16)
    for pair, half in enumerate([16, 1, 8, 2, 4, 4, 2, 8]):
        runs = np.diff(np.flatnonzero(np.diff(masks[2 * pair].astype(int)) != 0))
        assert np.all(runs == half), (pair, runs)


@pytest.mark.parametrize("dim,M,L,U", [(2, 2, 1, 32), (5, 4, 2, 3), (16, 8, 3, 7)])
def test_num_params_formula(dim, M, L, U):
    flow = pf.RealNVP(dim, M, L, U)
    assert flow.num_params == 2 * M * (2 * dim * U + dim + U + (L - 1) * (U + 1) * U)
    assert flow.params.shape == (flow.num_params,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_initial_flow_is_identity_with_glorot_hidden_weights(dtype):
    dim, M, L, U = 5, 4, 2, 6
    flow = pf.RealNVP(dim, M, L, U, dtype=dtype, rng=0)
    z = np.random.default_rng(1).standard_normal((9, dim)).astype(dtype)
    x, log_det = flow.forward(z)
    np.testing.assert_array_equal(x, z)
    np.testing.assert_array_equal(log_det, 0)
    # Layout walk: A_1, b_1, A_2, b_2, A_out, b_out for each of the 2M nets.
    p = flow.params.astype(np.float64)
    net = p.reshape(2 * M, -1)
    A1, b1 = net[:, :U * dim], net[:, U * dim:U * dim + U]
    A2 = net[:, U * dim + U:U * dim + U + U * U]
    rest = net[:, U * dim + U + U * U:]
    lim1, lim2 = np.sqrt(6 / (dim + U)), np.sqrt(6 / (2 * U))
    assert np.all(np.abs(A1) <= lim1) and np.all(A1 != 0) and A1.std() > lim1 / 4
    assert np.all(np.abs(A2) <= lim2) and np.all(A2 != 0)
    np.testing.assert_array_equal(b1, 0)
    np.testing.assert_array_equal(rest, 0)   # b_2, A_out, b_out
    np.testing.assert_array_equal(pf.RealNVP(dim, M, L, U, dtype=dtype, rng=0).params,
                                  flow.params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["backward", "inverse_backward"])
def test_gradients_of_masked_weights_are_exactly_zero(dtype, direction):
    dim, M, L, U = 5, 4, 2, 3
    flow = pf.RealNVP(dim, M, L, U, dtype=dtype, rng=0)
    rng = np.random.default_rng(2)
    flow.set_params(0.5 * rng.standard_normal(flow.num_params))
    v = rng.standard_normal((600, dim))
    _, grad = getattr(flow, direction)(v, rng.standard_normal(v.shape),
                                       rng.standard_normal(len(v)))
    nets = grad.reshape(M, 2, -1)
    hid = (L - 1) * (U + 1) * U
    for m, b in enumerate(flow.masks.astype(bool)):
        for k in range(2):
            A1 = nets[m, k, :U * dim].reshape(U, dim)
            A_out = nets[m, k, U * dim + U + hid:U * dim + U + hid + dim * U].reshape(dim, U)
            b_out = nets[m, k, -dim:]
            assert np.all(A1[:, ~b] == 0) and np.all(A1[:, b] != 0)
            assert np.all(A_out[b] == 0) and np.all(A_out[~b] != 0)
            assert np.all(b_out[b] == 0) and np.all(b_out[~b] != 0)


def test_gradients_do_not_depend_on_block_size():
    # A batch spanning several chunks and blocks, with a ragged last block.
    flow = pf.RealNVP(16, 4, 2, 8, rng=0)
    rng = np.random.default_rng(3)
    flow.set_params(0.3 * rng.standard_normal(flow.num_params))
    z = rng.standard_normal((2501, 16))
    g, gl = rng.standard_normal(z.shape), rng.standard_normal(len(z))
    ref = [flow.forward(z), flow.backward(z, g, gl), flow.inverse_backward(z, g, gl)]
    flow._block_rows = 7
    got = [flow.forward(z), flow.backward(z, g, gl), flow.inverse_backward(z, g, gl)]
    for a, b in zip(ref, got):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=1), "dim must be an integer >= 2"),
    (dict(dim=4, num_masks=3), "num_masks must be an even integer >= 2"),
    (dict(dim=4, num_masks=0), "num_masks must be an integer >= 2"),
    (dict(dim=4, num_layers=0), "num_layers must be an integer >= 1"),
    (dict(dim=4, units=0), "units must be an integer >= 1"),
])
def test_bad_architecture_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pf.RealNVP(**kwargs)
    if "num_masks" in kwargs or kwargs.get("dim") == 1:
        with pytest.raises(ValueError, match=match):
            realnvp_masks(kwargs["dim"], kwargs.get("num_masks", 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,M,L,U", [(2, 2, 1, 3), (5, 4, 2, 7), (16, 8, 2, 40)])
def test_simd_and_blas_paths_agree(dtype, dim, M, L, U):
    # Every copy of realnvp_cpu.h's GEMM this CPU runs (AVX2, AVX-512) and
    # the BLAS fallback compute the same map; odd sizes exercise the
    # kernels' masked tails and row tiles.
    from pyflowcore._kernels import realnvp as k
    rng = np.random.default_rng(3)
    n = 700   # > MIN_ROWS_PARALLEL, not a multiple of the block height
    z = rng.standard_normal((n, dim)).astype(dtype)
    gx = rng.standard_normal((n, dim)).astype(dtype)
    gld = rng.standard_normal(n).astype(dtype)
    # Scale 0.1: at 0.3 the 8-coupling map is so ill-conditioned that either
    # path is only ~1e-12 from the float64 reference.
    theta = 0.1 * rng.standard_normal(pf.RealNVP(dim, M, L, U).num_params)
    out = {}
    old = k.use_simd_level()
    try:
        for level in range(k.simd_level() + 1):
            assert k.set_simd_level(level) >= 0 and k.use_simd_level() == level
            flow = pf.RealNVP(dim, M, L, U, dtype=dtype)
            flow.set_params(theta.astype(dtype))
            x, ld = flow.forward(z)
            zb, ldi = flow.inverse(x)
            out[level] = (x, ld, zb, ldi) + flow.backward(z, gx, gld) \
                + flow.inverse_backward(x, gx, gld)
    finally:
        k.set_simd_level(old)
    if k.simd_level() == 0:
        pytest.skip("this CPU runs only the BLAS path")
    if k.simd_level() >= 2:
        # The AVX2 and AVX-512 GEMMs run the same FMAs in the same order (and
        # the transcendentals take the CPU's best copy at either level).
        for a, b in zip(out[1], out[2]):
            np.testing.assert_array_equal(a, b)
    tol = 1e-11 if dtype == "float64" else 2e-4
    for level in range(1, k.simd_level() + 1):
        for a, b in zip(out[0], out[level]):
            scale = max(1.0, float(np.abs(a).max()))
            np.testing.assert_allclose(b, a, rtol=tol, atol=tol * scale)

