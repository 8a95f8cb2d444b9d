"""Construction arguments and the shared input checks."""

import numpy as np
import pytest

import pyflowcore as pf


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64")])
def test_dtype_spellings(dtype):
    flow = pf.Shift(2, dtype=dtype)
    assert flow.dtype == np.dtype(dtype) and flow.params.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "int64", "complex128", "banana"])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="float32.*float64"):
        pf.Shift(2, dtype=dtype)


@pytest.mark.parametrize("cls", [pf.Shift, pf.ElementwiseScale, pf.Planar, pf.Radial, pf.RealNVP])
@pytest.mark.parametrize("dim, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("3", TypeError), (None, TypeError),
                                      ([3], TypeError), (2 ** 31, ValueError),
                                      (np.int64(2 ** 40), ValueError)])
def test_bad_dim(cls, dim, exc):
    with pytest.raises(exc, match="dim"):
        cls(dim)


def test_cholesky_dim_too_large_for_the_kernels():
    assert pf.CholeskyProduct(65535).dim == 2 ** 31 - 2 ** 15
    with pytest.raises(ValueError, match=r"at most 2\*\*31 - 1"):
        pf.CholeskyProduct(65536)


@pytest.mark.parametrize("make", [lambda rng: pf.Shift(2, rng=rng),
                                  lambda rng: pf.ElementwiseScale(2, rng=rng),
                                  lambda rng: pf.CholeskyProduct(2, rng=rng),
                                  lambda rng: pf.Planar(2, rng=rng)])
@pytest.mark.parametrize("rng", ["abc", object(), np.random.RandomState(0)])
def test_bad_rng(make, rng):
    with pytest.raises(TypeError, match="rng"):
        make(rng)


def test_base_log_prob_checks_its_points():
    flow = pf.Planar(3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        flow.base_log_prob(np.ones(5))
    with pytest.raises(TypeError, match="real"):
        flow.base_log_prob(np.ones(3, dtype=complex))
    assert flow.base_log_prob(np.zeros(3)).shape == ()
    np.testing.assert_allclose(flow.base_log_prob([[1.0, 2.0, 2.0]]),
                               [-4.5 - 1.5 * np.log(2 * np.pi)])


def test_int_and_bool_inputs_are_converted():
    flow = pf.Shift(2)
    x, _ = flow.forward(np.array([[1, 2]], dtype=np.int32))
    assert x.dtype == np.float64
    x, _ = flow.forward(np.array([[True, False]]))
    np.testing.assert_array_equal(x, [[1.0, 0.0]])


def test_ragged_input():
    with pytest.raises(ValueError, match="real array"):
        pf.Shift(2).forward([[1.0, 2.0], [3.0]])


def test_sample_arguments():
    flow = pf.Shift(2)
    with pytest.raises(ValueError, match="n"):
        flow.sample(-1)
    with pytest.raises(TypeError, match="rng"):
        flow.sample(3, rng="seed")
    gen = np.random.default_rng(0)
    assert flow.sample(3, rng=gen).shape == (3, 2)
    np.testing.assert_array_equal(flow.sample(4, rng=7), flow.sample(4, rng=7))


@pytest.mark.parametrize("flow", [pf.Planar(3, rng=0), pf.Chain([pf.Planar(3, rng=0), pf.Shift(3)]),
                                  pf.RealNVP(3, rng=0)], ids=["planar", "chain", "realnvp"])
def test_out_arrays_must_not_overlap_each_other(flow):
    # Two results cannot both hold their values in shared memory; the fast
    # path of row-wise flows hands such arrays to the generic path, which
    # refuses them.
    z = np.random.default_rng(0).standard_normal((4, 3))
    buf = np.zeros(12 + flow.num_params)
    with pytest.raises(ValueError, match="overlap"):
        flow.forward(z, out=(buf[:12].reshape(4, 3), buf[:4]))
    with pytest.raises(ValueError, match="overlap"):
        flow.inverse(z, out=(buf[:12].reshape(4, 3), buf[8:12]))
    with pytest.raises(ValueError, match="overlap"):
        flow.backward(z, np.ones((4, 3)), 1.0, out=(buf[:12].reshape(4, 3),
                                                    buf[11:11 + flow.num_params]))
    with pytest.raises(ValueError, match="overlap"):
        flow.forward(z[0], out=(buf[:3], buf[2:3].reshape(())))


def test_out_must_be_a_tuple_of_arrays():
    flow = pf.Shift(2)
    with pytest.raises(TypeError, match="tuple"):
        flow.forward(np.zeros((1, 2)), out=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="C-contiguous"):
        flow.forward(np.zeros((2, 2)), out=(np.zeros((2, 4))[:, ::2], np.zeros(2)))


def test_device_argument():
    flow = pf.Shift(2)
    assert flow.to("cpu") is flow
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        flow.to("tpu")
    if not pf.cuda_available():
        with pytest.raises(RuntimeError, match="GPU"):
            flow.to("cuda")


def test_load_refuses_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a pyflowcore file"):
        pf.load(path)
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        pf.load(bad)


def test_load_refuses_a_plain_npy(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="cannot read"):
        pf.load(path)
