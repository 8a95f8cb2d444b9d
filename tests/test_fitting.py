"""Maximum-likelihood and variational fitting (``pyflowcore.fit``,
``pyflowcore.fit_variational``)."""

import functools
import math

import numpy as np
import pytest

import pyflowcore as pf
from pyflowcore import datasets
from pyflowcore.fitting import _Adam, elbo, kl_and_grad, nll_and_grad

HAS_REALNVP = hasattr(pf, "RealNVP")
HAS_PLANAR = hasattr(pf, "Planar")
needs_realnvp = pytest.mark.skipif(not HAS_REALNVP, reason="pyflowcore.RealNVP is not built yet")
needs_planar = pytest.mark.skipif(not HAS_PLANAR, reason="pyflowcore.Planar is not built yet")


def realnvp_chain(dim=2, masks=4, units=16, dtype="float64", seed=0):
    return pf.Chain([pf.RealNVP(dim, num_masks=masks, units=units, dtype=dtype, rng=seed),
                     pf.ElementwiseScale(dim, dtype=dtype), pf.Shift(dim, dtype=dtype)])


def planar_chain(dim=2, k=8, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return pf.Chain([pf.Planar(dim, dtype=dtype, rng=rng) for _ in range(k)]
                    + [pf.ElementwiseScale(dim, dtype=dtype), pf.Shift(dim, dtype=dtype)])


def affine_chain(dim=2, dtype="float64", seed=0):
    return pf.Chain([pf.ElementwiseScale(dim, dtype=dtype), pf.Shift(dim, dtype=dtype)])


FLOWS = [
    pytest.param(realnvp_chain, id="realnvp", marks=needs_realnvp),
    pytest.param(planar_chain, id="planar", marks=needs_planar),
]


def randomise(flow, seed=1):
    """Non-trivial parameters: scales near 1, everything else small and random."""
    rng = np.random.default_rng(seed)
    layers = flow.layers if isinstance(flow, pf.Chain) else [flow]
    for layer in layers:
        if isinstance(layer, pf.ElementwiseScale):
            layer.params[:] = 1 + 0.3 * rng.uniform(-1, 1, layer.num_params)
        else:
            layer.params[:] = 0.4 * rng.standard_normal(layer.num_params)
    return flow


def gaussian_log_lik(train, test):
    """Held-out mean log-likelihood of the maximum-likelihood Gaussian of ``train``."""
    mu = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    diff = test - mu
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return float(np.mean(-0.5 * maha - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]))


@pytest.fixture(scope="module")
def moons():
    # Under 512 rows per batch, so the kernels run serially: fast and steady
    # on a busy machine.
    return datasets.two_moons(400, rng=1), datasets.two_moons(400, rng=2)


# -- the exact gradients ------------------------------------------------------
def fd_gradient(loss, theta, h=1e-6):
    grad = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        grad[i] = (loss(theta + e) - loss(theta - e)) / (2 * h)
    return grad


GRAD_FLOWS = [
    pytest.param(lambda: affine_chain(), id="scale+shift"),
    pytest.param(lambda: realnvp_chain(masks=2, units=4), id="realnvp", marks=needs_realnvp),
    pytest.param(lambda: planar_chain(k=3), id="planar", marks=needs_planar),
]


@pytest.mark.parametrize("make", GRAD_FLOWS)
def test_mle_gradient_matches_finite_differences(make, rng):
    flow = randomise(make())
    x = datasets.two_moons(30, rng=rng)
    theta0 = flow.params.copy()

    def loss(theta):
        flow.set_params(theta)
        return -float(np.mean(flow.log_prob(x)))

    fd = fd_gradient(loss, theta0)
    flow.set_params(theta0)
    value, grad = nll_and_grad(flow, x)
    np.testing.assert_allclose(value, loss(theta0), rtol=1e-12)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", GRAD_FLOWS)
def test_reverse_kl_gradient_matches_finite_differences(make, rng):
    flow = randomise(make())
    z = rng.standard_normal((30, 2))
    target = functools.partial(datasets.banana_log_density, noise=0.7)
    theta0 = flow.params.copy()

    def loss(theta):
        flow.set_params(theta)
        x, log_det = flow.forward(z)
        log_q = flow.base_log_prob(z) - log_det
        return float(np.mean(log_q - target(x)[0]))

    fd = fd_gradient(loss, theta0)
    flow.set_params(theta0)
    value, grad = kl_and_grad(flow, target, z)
    np.testing.assert_allclose(value, loss(theta0), rtol=1e-12)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


# -- maximum likelihood ---------------------------------------------------------
FIT_SETTINGS = {
    "lbfgs": dict(method="lbfgs", steps=80),
    "adam": dict(method="adam", steps=400, batch_size=200, learning_rate=2e-2, rng=0),
}


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
@pytest.mark.parametrize("make", FLOWS)
def test_fit_beats_a_single_gaussian_on_two_moons(make, method, moons):
    train, test = moons
    flow = make()
    before = float(np.mean(flow.log_prob(test)))
    result = pf.fit(flow, train, **FIT_SETTINGS[method], progress=False)
    assert result.success, result.message
    assert 1 <= result.n_iter <= FIT_SETTINGS[method]["steps"]
    assert result.losses.shape == (result.n_iter,) and np.all(np.isfinite(result.losses))
    np.testing.assert_array_equal(result.params, flow.params)
    held_out = float(np.mean(flow.log_prob(test)))
    gauss = gaussian_log_lik(train, test)
    # Two moons are far from Gaussian: a fitted flow wins by ~0.4 nats/point.
    assert held_out > gauss + 0.2, (held_out, gauss)
    assert held_out > before


def test_lbfgs_loss_history_decreases_and_matches_the_flow(moons):
    train, _ = moons
    flow = affine_chain()
    result = pf.fit(flow, train, method="lbfgs")
    assert result.success and "CONVERGENCE" in result.message
    assert np.all(np.diff(result.losses) <= 1e-12)
    np.testing.assert_allclose(result.losses[-1], -np.mean(flow.log_prob(train)), rtol=1e-10)
    # scale+shift is a diagonal Gaussian: the optimum is the data's mean and std.
    np.testing.assert_allclose(np.abs(flow.params[:2]), train.std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(flow.params[2:], train.mean(axis=0), atol=1e-4)


def test_lbfgs_options_are_passed_through(moons):
    result = pf.fit(affine_chain(), moons[0], method="lbfgs", options={"maxiter": 3})
    assert result.n_iter == 3 and result.success and "ITERATIONS" in result.message


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_keeps_the_dtype_and_lowers_the_loss(dtype, moons):
    flow = affine_chain(dtype=dtype)
    start = nll_and_grad(flow, moons[0])[0]
    result = pf.fit(flow, moons[0], steps=200, batch_size=100, learning_rate=0.05, rng=0)
    assert flow.params.dtype == np.dtype(dtype) and result.params.dtype == np.dtype(dtype)
    assert nll_and_grad(flow, moons[0])[0] < start - 0.1


def test_adam_is_reproducible_for_a_seed_and_does_not_touch_the_data(moons):
    train = moons[0].copy()
    runs = [pf.fit(affine_chain(), train, steps=30, batch_size=64, rng=7).params for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(train, moons[0])


def test_epochs_count_mini_batches(moons):
    result = pf.fit(affine_chain(), moons[0], epochs=3, batch_size=150, rng=0)
    assert result.n_iter == 3 * 3  # ceil(400 / 150) batches per epoch


def test_adam_matches_the_textbook_update(rng):
    lr, b1, b2, eps = 0.05, 0.8, 0.99, 1e-6
    adam = _Adam(np.zeros(3), lr, (b1, b2), eps, None)
    theta, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t in range(1, 8):
        g = rng.standard_normal(3)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(adam.step(g), theta, rtol=1e-12, atol=1e-15)


def test_gradient_clipping_rescales_long_gradients():
    adam = _Adam(np.zeros(2), 0.1, (0.9, 0.999), 1e-8, clip_norm=1.0)
    adam.step(np.array([3.0, 4.0]))            # norm 5: clipped to (0.6, 0.8)
    np.testing.assert_allclose(adam.m, 0.1 * np.array([0.6, 0.8]))
    adam.step(np.array([0.3, 0.4]))            # norm 0.5: unchanged
    np.testing.assert_allclose(adam.m, 0.9 * 0.1 * np.array([0.6, 0.8]) + 0.1 * np.array([0.3, 0.4]))


@pytest.mark.skipif(not (HAS_REALNVP or HAS_PLANAR), reason="needs RealNVP or Planar")
def test_early_stopping_restores_the_best_parameters():
    train = datasets.two_moons(16, rng=3)   # tiny: the flow overfits
    val = datasets.two_moons(400, rng=4)
    flow = realnvp_chain(units=32) if HAS_REALNVP else planar_chain(k=16)
    history = {0: flow.params.copy()}
    result = pf.fit(flow, train, steps=3000, batch_size=None, learning_rate=3e-2,
                    validation_data=val, patience=5, eval_every=10, rng=0,
                    callback=lambda k, loss, f: history.__setitem__(k, f.params.copy()))
    assert result.success and "early stopping" in result.message
    assert result.n_iter < 3000
    assert result.val_losses.shape == (result.n_iter // 10 + 1,)
    best = int(np.argmin(result.val_losses))
    assert result.best_iter == 10 * best < result.n_iter
    # The restored parameters are those of the best validation loss...
    np.testing.assert_array_equal(flow.params, history[result.best_iter])
    np.testing.assert_array_equal(result.params, flow.params)
    np.testing.assert_allclose(-np.mean(flow.log_prob(val)), result.val_losses.min(), rtol=1e-12)
    # ...not the last iterate, which had overfitted.
    assert result.val_losses[-1] > result.val_losses.min()
    assert not np.array_equal(history[result.n_iter], flow.params)


def test_validation_with_lbfgs_keeps_the_best(moons):
    train, val = moons
    flow = affine_chain()
    result = pf.fit(flow, train, method="lbfgs", validation_data=val, options={"maxiter": 20})
    assert result.val_losses.shape == (result.n_iter + 1,)
    np.testing.assert_allclose(-np.mean(flow.log_prob(val)), result.val_losses.min(), rtol=1e-12)


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_callback_can_stop_the_fit(method, moons):
    calls = []

    def callback(k, loss, flow):
        calls.append((k, loss))
        return k == 4

    result = pf.fit(affine_chain(), moons[0], method=method, steps=50, callback=callback)
    assert result.n_iter == 4 and [k for k, _ in calls] == [1, 2, 3, 4]
    assert result.success and "callback" in result.message
    np.testing.assert_allclose([loss for _, loss in calls], result.losses)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_display(progress, capsys, moons):
    pf.fit(affine_chain(), moons[0], steps=20, progress=progress)
    err = capsys.readouterr().err
    assert ("fit" in err and "20/20" in err) if progress else err == ""


@pytest.mark.parametrize("bad, exc, match", [
    (np.array([[0.0, np.nan]] * 3), ValueError, "NaN"),
    (np.array([[0.0, 1.0], [np.inf, 0.0]]), ValueError, "inf.*row 1"),
    (np.zeros((5, 3)), ValueError, r"shape \(N, 2\)"),
    (np.zeros(2), ValueError, r"shape \(N, 2\)"),
    (np.zeros((0, 2)), ValueError, "at least one point"),
    (np.zeros((3, 2), dtype=complex), TypeError, "real"),
    ([["a", "b"]], TypeError, "real"),
])
def test_bad_data(bad, exc, match):
    with pytest.raises(exc, match=match):
        pf.fit(affine_chain(), bad)


def test_data_overflowing_the_flows_dtype():
    x = np.zeros((5, 2))
    x[3, 0] = 1e300
    with pytest.raises(ValueError, match="float32.*row 3"):
        pf.fit(pf.Chain([pf.Shift(2, dtype="float32")]), x)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(method="sgd"), ValueError, "adam.*lbfgs"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=10, epochs=2), ValueError, "not both"),
    (dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(patience=3), ValueError, "validation_data"),
    (dict(validation_data=np.zeros((3, 3))), ValueError, "validation_data"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(callback=3), TypeError, "callback"),
    (dict(method="lbfgs", epochs=3), ValueError, "epochs"),
    (dict(options={"maxiter": 3}), ValueError, "options"),
])
def test_bad_settings(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pf.fit(affine_chain(), np.zeros((4, 2)), **kwargs)


def test_bad_flow():
    with pytest.raises(TypeError, match="Flow"):
        pf.fit("realnvp", np.zeros((4, 2)))


def test_int_and_list_data_are_accepted():
    result = pf.fit(affine_chain(), [[0, 1], [2, 3], [1, 1]], steps=3)
    assert result.n_iter == 3


# -- variational inference ------------------------------------------------------
VI_SETTINGS = {
    "adam": dict(method="adam", steps=300, n_samples=128, learning_rate=2e-2),
    "lbfgs": dict(method="lbfgs", steps=60, n_samples=256),
}


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
@pytest.mark.parametrize("make", [pytest.param(lambda: realnvp_chain(units=16), id="realnvp",
                                               marks=needs_realnvp),
                                  pytest.param(lambda: planar_chain(k=6), id="planar",
                                               marks=needs_planar)])
def test_variational_fit_lowers_the_kl_to_the_banana(make, method):
    flow = make()
    target = datasets.banana_log_density
    z = np.random.default_rng(11).standard_normal((2000, 2))
    before = kl_and_grad(flow, target, z)[0]
    elbo_before, se_before = elbo(flow, target, 4000, rng=12)
    result = pf.fit_variational(flow, target, rng=0, n_elbo_samples=4000, **VI_SETTINGS[method])
    after = kl_and_grad(flow, target, z)[0]
    assert result.success, result.message
    assert result.losses.shape == (result.n_iter,)
    # The banana density is normalised, so loss = KL(q || p) >= 0 and ELBO = -KL.
    assert after < 0.5 * before, (before, after)
    assert result.elbo > elbo_before + 5 * math.hypot(se_before, result.elbo_stderr)
    assert result.elbo <= 0.05 and result.elbo_stderr > 0


def test_variational_fit_of_a_gaussian_target():
    # q is Gaussian under scale+shift, so q = p is reachable: there every term
    # log q(x) - log p(x) is 0 and the ELBO is exactly 0 with no spread.
    target = functools.partial(datasets.gaussian_mixture_log_density,
                               means=[[1.0, -2.0]], scales=0.5)
    flow = affine_chain()
    result = pf.fit_variational(flow, target, n_samples=2000, method="lbfgs", rng=0)
    assert result.success
    # The fixed draws' optimum is within sampling error (~1/sqrt(2000)) of p.
    np.testing.assert_allclose(np.abs(flow.params[:2]), 0.5, rtol=0.05)
    np.testing.assert_allclose(flow.params[2:], [1.0, -2.0], atol=0.05)
    assert -1e-3 < result.elbo <= 0
    flow.set_params([0.5, 0.5, 1.0, -2.0])
    value, se = elbo(flow, target, 100, rng=0)
    assert abs(value) < 1e-12 and se < 1e-12


def test_variational_nonfinite_target_stops_and_keeps_finite_params():
    calls = {"n": 0}

    def target(x):
        calls["n"] += 1
        values, grads = datasets.banana_log_density(x)
        if calls["n"] >= 4:
            values = values.copy()
            values[0] = np.nan
        return values, grads

    flow = affine_chain()
    history = {}
    result = pf.fit_variational(flow, target, steps=50, n_elbo_samples=0, rng=0,
                                callback=lambda k, loss, f: history.__setitem__(k, f.params.copy()))
    # Evaluations 1-3 were finite; the 4th, at the parameters after step 3,
    # was not, so those after step 2 (the last with a finite loss) are kept.
    assert not result.success and "non-finite" in result.message
    assert result.n_iter == 3 and result.losses.shape == (3,) and result.elbo is None
    np.testing.assert_array_equal(flow.params, history[2])


@pytest.mark.parametrize("target, match", [
    (lambda x: x[:, 0], "pair"),
    (lambda x: (x[:, 0], x[:, :1]), r"gradients of shape \(8, 2\)"),
    (lambda x: (x, x), r"values of shape \(8,\)"),
    (lambda x: (np.zeros(len(x)), np.full(x.shape, 1j)), "gradients.*real"),
    (lambda x: (np.zeros(len(x), dtype=complex), x), "values.*real"),
    (lambda x: (np.zeros(len(x)), np.full(x.shape, "a")), "gradients.*real"),
])
def test_bad_log_density(target, match):
    with pytest.raises((TypeError, ValueError), match=match):
        pf.fit_variational(affine_chain(), target, n_samples=8, steps=2)


def test_variational_bad_settings():
    with pytest.raises(TypeError, match="callable"):
        pf.fit_variational(affine_chain(), "banana")
    with pytest.raises(ValueError, match="n_samples"):
        pf.fit_variational(affine_chain(), datasets.banana_log_density, n_samples=0)
    with pytest.raises(ValueError, match="adam.*lbfgs"):
        pf.fit_variational(affine_chain(), datasets.banana_log_density, method="newton")
