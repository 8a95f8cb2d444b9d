import numpy as np
import pytest

import pyflowcore as pf


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


def test_rejects_non_flows_and_repeated_layers():
    with pytest.raises(TypeError, match="Flow"):
        pf.Chain([pf.Shift(2), "shift"])
    with pytest.raises(TypeError, match="sequence"):
        pf.Chain(pf.Shift(2))
    s = pf.Shift(2)
    with pytest.raises(ValueError, match="only once"):
        pf.Chain([s, s])
