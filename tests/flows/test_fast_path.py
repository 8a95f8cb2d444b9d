"""The C-level fast path of the row-wise flows' ``forward`` and ``inverse``.

For row-wise flows and chains of them, ``Flow.forward`` / ``inverse`` first
offer their arguments to ``RowwiseRun.forward_fast`` / ``inverse_fast``,
which take only exact NumPy arrays of the flow's dtype and shape,
C-contiguous (``out=`` arrays writable too), and return ``None`` for
anything else, which then goes through the generic path.  Checked here: the
fast path is taken when it should be and gives bitwise the results of the
generic path, at batch sizes on both sides of the row / block and serial /
parallel switches, with and without ``out=``; every other input
(array-likes, other dtypes, layouts, byte orders, unfit ``out=`` arrays,
bad shapes) still works or fails as before; parameter updates in place are
seen at once; concurrent calls agree.
"""

import threading

import numpy as np
import pytest

import pyflowcore as pf

DTYPES = ["float64", "float32"]
KINDS = {
    "planar": pf.Planar,
    "radial": pf.Radial,
    "scale": pf.ElementwiseScale,
    "shift": pf.Shift,
}
# Across SMALL_BATCH (32, row functions / block kernel), BLOCK_ROWS (128) and
# MIN_ROWS_PARALLEL (512, serial loops / prange).
SIZES = [0, 1, 5, 31, 32, 64, 129, 600]


def make(kind, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    flow = KINDS[kind](dim, dtype=dtype, rng=rng)
    flow.set_params(rng.normal(0.0, 0.5, flow.num_params))
    return flow, rng


def generic(flow, method, v, out=None):
    """``flow.forward`` / ``inverse`` through the generic path only."""
    saved = flow._forward_fast, flow._inverse_fast
    flow._forward_fast = flow._inverse_fast = None
    try:
        return getattr(flow, method)(v, out=out)
    finally:
        flow._forward_fast, flow._inverse_fast = saved


def assert_same(a, b):
    """Bitwise equality of results (NaN matches NaN), dtype and shape included."""
    for u, v in zip(a, b, strict=True):
        assert type(u) is np.ndarray and type(v) is np.ndarray
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v, strict=True)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fast_path_is_bitwise_the_generic_path(kind, dtype, n):
    flow, rng = make(kind, 5, dtype)
    z = rng.standard_normal((n, 5)).astype(dtype)
    if n > 3:
        z[3] = np.nan  # a NaN row stays in its own outputs on both paths
    assert flow._forward_fast(flow.params, z) is not None
    fast = flow.forward(z)
    assert_same(fast, generic(flow, "forward", z))
    assert fast[0].shape == (n, 5) and fast[1].shape == (n,)
    x = fast[0]
    assert flow._inverse_fast(flow.params, x) is not None
    assert_same(flow.inverse(x), generic(flow, "inverse", x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_single_point_takes_the_fast_path(kind, dtype):
    flow, rng = make(kind, 4, dtype)
    z = rng.standard_normal(4).astype(dtype)
    assert flow._forward_fast(flow.params, z) is not None
    x, log_det = flow.forward(z)
    assert x.shape == (4,) and log_det.shape == () and x.dtype == log_det.dtype == flow.dtype
    assert_same((x, log_det), generic(flow, "forward", z))
    assert_same(flow.inverse(x), generic(flow, "inverse", x))


def other_forms(z):
    """The same points in forms the fast path leaves to the generic one."""
    flipped = z.astype(z.dtype.newbyteorder())
    unaligned = np.frombuffer(b"\0" + z.tobytes(), dtype=z.dtype, offset=1).reshape(z.shape)
    assert not unaligned.flags.aligned

    class Sub(np.ndarray):
        pass

    return {
        "list": z.tolist(),
        "other dtype": z.astype(np.float32 if z.dtype == np.float64 else np.float64),
        "integers": np.round(z * 4).astype(np.int64),
        "fortran": np.asfortranarray(z),
        "strided": np.repeat(z, 2, axis=0)[::2],
        "byteswapped": flipped,
        "unaligned": unaligned,
        "subclass": z.view(Sub),
    }


@pytest.mark.parametrize("form", list(other_forms(np.zeros((3, 2)))))
@pytest.mark.parametrize("dtype", DTYPES)
def test_other_inputs_take_the_generic_path(form, dtype):
    flow, rng = make("planar", 3, dtype)
    z = rng.standard_normal((6, 3)).astype(dtype)
    other = other_forms(z)[form]
    assert flow._forward_fast(flow.params, other) is None
    assert flow._inverse_fast(flow.params, other) is None
    converted = np.ascontiguousarray(np.asarray(other), dtype=flow.dtype)
    assert_same(flow.forward(other), flow.forward(converted))
    assert_same(flow.inverse(other), flow.inverse(converted))


@pytest.mark.parametrize("n", [None, 1, 40, 600])
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_arrays_take_the_fast_path(dtype, n):
    # n None: one point, out=((dim,), ()).  The out= arrays themselves come
    # back, filled bitwise as without them.
    flow, rng = make("planar", 3, dtype)
    shape = (3,) if n is None else (n, 3)
    z = rng.standard_normal(shape).astype(dtype)
    for method, v in (("forward", z), ("inverse", flow.forward(z)[0])):
        out = (np.empty(shape, dtype), np.empty(shape[:-1], dtype))
        fast = getattr(flow, "_" + method + "_fast")(flow.params, v, out)
        assert fast[0] is out[0] and fast[1] is out[1]
        assert_same(out, generic(flow, method, v))
        out = (np.full(shape, np.nan, dtype), np.full(shape[:-1], np.nan, dtype))
        res = getattr(flow, method)(v, out=out)
        assert res[0] is out[0] and res[1] is out[1]
        assert_same(out, generic(flow, method, v))
        # The generic path returns the out= arrays too, one point included.
        res = generic(flow, method, v, out)
        assert res[0] is out[0] and res[1] is out[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_may_name_the_input(dtype):
    flow, rng = make("radial", 4, dtype)
    z = rng.standard_normal((70, 4)).astype(dtype)
    expected = flow.forward(z)
    buf = z.copy()
    x, log_det = flow.forward(buf, out=(buf, np.empty(70, dtype)))
    assert x is buf
    assert_same((x, log_det), expected)


def unfit_outs(dtype):
    """out= tuples the fast path leaves to the generic one, which raises."""
    x, ld = np.empty((6, 3), dtype), np.empty(6, dtype)
    other = np.float32 if dtype == "float64" else np.float64
    readonly = np.empty((6, 3), dtype)
    readonly.flags.writeable = False
    return {
        "list": [x, ld],
        "one array": (x,),
        "other dtype": (np.empty((6, 3), other), ld),
        "wrong rows": (np.empty((5, 3), dtype), ld),
        "wrong log_det": (x, np.empty(5, dtype)),
        "log_det 2-d": (x, np.empty((6, 1), dtype)),
        "fortran": (np.asfortranarray(np.empty((3, 6), dtype).T), ld),
        "strided": (np.empty((12, 3), dtype)[::2], ld),
        "readonly": (readonly, ld),
    }


@pytest.mark.parametrize("form", sorted(unfit_outs("float64")))
@pytest.mark.parametrize("dtype", DTYPES)
def test_unfit_out_arrays_raise_as_before(form, dtype):
    flow, rng = make("planar", 3, dtype)
    z = rng.standard_normal((6, 3)).astype(dtype)
    out = unfit_outs(dtype)[form]
    assert flow._forward_fast(flow.params, z, out) is None
    assert flow._inverse_fast(flow.params, z, out) is None
    for method in (flow.forward, flow.inverse):
        with pytest.raises((TypeError, ValueError), match="out"):
            method(z, out=out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [None, 1, 40, 600])
def test_a_chain_of_rowwise_layers_takes_the_fast_path(n, dtype):
    rng = np.random.default_rng(2)
    layers = [pf.Planar(3, dtype=dtype, rng=rng), pf.Radial(3, dtype=dtype, rng=rng),
              pf.ElementwiseScale(3, dtype=dtype), pf.Shift(3, dtype=dtype)]
    chain = pf.Chain(layers)
    chain.set_params(rng.normal(0.0, 0.5, chain.num_params))
    z = rng.standard_normal((3,) if n is None else (n, 3)).astype(dtype)
    assert chain._forward_fast(chain.params, z) is not None
    x, log_det = chain.forward(z)
    assert_same((x, log_det), generic(chain, "forward", z))
    assert chain._inverse_fast(chain.params, x) is not None
    assert_same(chain.inverse(x), generic(chain, "inverse", x))
    # One layer of another family: the chain's units run one after another.
    mixed = pf.Chain([pf.Planar(3, dtype=dtype), pf.RealNVP(3, 2, 1, 4, dtype=dtype)])
    assert mixed._forward_fast is None and mixed._inverse_fast is None


@pytest.mark.parametrize("bad", [np.zeros((4, 2)), np.zeros(2), np.zeros((2, 3, 3)),
                                 np.zeros(()), np.zeros((3, 3)).T[:, :2]])
def test_wrong_shapes_raise_as_before(bad):
    flow, _ = make("planar", 3, "float64")
    for method in (flow.forward, flow.inverse):
        with pytest.raises(ValueError, match=r"must have shape \(N, 3\) or \(3,\)"):
            method(bad)


def test_wrong_dtypes_raise_as_before():
    flow, _ = make("radial", 3, "float64")
    with pytest.raises(TypeError, match="real numeric array"):
        flow.forward(np.zeros((2, 3), dtype=complex))
    with pytest.raises(TypeError, match="real numeric array"):
        flow.inverse(np.array([["a", "b", "c"]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameter_updates_are_seen(dtype):
    # Nothing derived from the parameters is kept between calls.
    flow, rng = make("planar", 4, dtype)
    z = rng.standard_normal((3, 4)).astype(dtype)
    before = flow.forward(z)
    flow.params[:] = rng.normal(0.0, 0.5, flow.num_params)
    after = flow.forward(z)
    assert not np.array_equal(before[0], after[0])
    fresh = pf.Planar(4, dtype=dtype).set_params(flow.params.copy())
    assert_same(after, fresh.forward(z))
    assert_same(flow.inverse(after[0]), fresh.inverse(after[0]))


def test_layers_of_a_chain_read_the_chain_parameters():
    rng = np.random.default_rng(1)
    layers = [pf.Planar(3, rng=rng), pf.Radial(3, rng=rng)]
    chain = pf.Chain(layers)
    chain.set_params(rng.normal(0.0, 0.5, chain.num_params))
    z = rng.standard_normal((5, 3))
    x0, ld0 = layers[0].forward(z)
    x1, ld1 = layers[1].forward(x0)
    x, log_det = chain.forward(z)
    np.testing.assert_allclose(x, x1, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(log_det, ld0 + ld1, rtol=1e-13, atol=1e-13)


def test_readonly_input_is_fine():
    flow, rng = make("planar", 3, "float64")
    z = rng.standard_normal((4, 3))
    z.flags.writeable = False
    assert_same(flow.forward(z), generic(flow, "forward", z))


@pytest.mark.parametrize("n", [1, 64, 300])
def test_concurrent_calls_agree(n):
    # 1 and 64 rows keep the GIL; 300 release it, each thread running the
    # block kernels in its own thread_scratch.
    flow, rng = make("planar", 6, "float64")
    inputs = [rng.standard_normal((n, 6)) for _ in range(4)]
    expected = [generic(flow, "forward", z) for z in inputs]
    errors = []

    def work(k):
        try:
            for _ in range(200):
                assert_same(flow.forward(inputs[k]), expected[k])
                np.testing.assert_allclose(flow.inverse(expected[k][0])[0], inputs[k],
                                           rtol=1e-9, atol=1e-9)
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
