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


@pytest.mark.parametrize("dim, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("3", TypeError)])
def test_bad_dim(dim, exc):
    with pytest.raises(exc, match="dim"):
        pf.Shift(dim)


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
