"""The toy data sets and target densities of ``pyflowcore.datasets``."""

import functools

import numpy as np
import pytest

from pyflowcore import datasets

GENERATORS = [datasets.two_moons, datasets.rings, datasets.banana, datasets.gaussian_mixture]


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_shape_and_dtype(gen, n):
    x = gen(n, rng=0)
    assert x.shape == (n, 2) and x.dtype == np.float64
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("gen", GENERATORS)
def test_deterministic_for_a_seed(gen):
    np.testing.assert_array_equal(gen(50, rng=3), gen(50, rng=3))
    np.testing.assert_array_equal(gen(50, rng=np.random.default_rng(3)), gen(50, rng=3))
    assert not np.array_equal(gen(50, rng=3), gen(50, rng=4))


@pytest.mark.parametrize("gen", GENERATORS)
def test_bad_arguments(gen):
    with pytest.raises(ValueError, match="n must be"):
        gen(-1)
    with pytest.raises(TypeError, match="n must be"):
        gen(2.5)
    with pytest.raises(ValueError, match="noise"):
        gen(5, noise=-1.0)
    with pytest.raises(TypeError, match="rng"):
        gen(5, rng="seed")


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("value, exc", [
    (float("nan"), ValueError), (float("inf"), ValueError), ("a", TypeError), (True, TypeError),
])
def test_bad_noise_is_named(gen, value, exc):
    with pytest.raises(exc, match="noise"):
        gen(5, noise=value)


@pytest.mark.parametrize("call, match", [
    (lambda v: datasets.banana(3, curvature=v), "curvature"),
    (lambda v: datasets.banana_log_density([0.0, 0.0], curvature=v), "curvature"),
    (lambda v: datasets.banana_log_density([0.0, 0.0], noise=v), "noise"),
    (lambda v: datasets.gaussian_mixture(3, noise=v), "noise"),
])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_float_parameters_must_be_finite(call, match, value):
    with pytest.raises(ValueError, match=f"{match} must be a finite number"):
        call(value)


def test_zero_dimensional_arrays_still_count_as_numbers():
    np.testing.assert_array_equal(datasets.banana(4, rng=0, noise=np.array(0.5),
                                                  curvature=np.float32(1.0)),
                                  datasets.banana(4, rng=0))


@pytest.mark.parametrize("gen", GENERATORS)
@pytest.mark.parametrize("n", [10 ** 20, 2 ** 62])
def test_n_too_large_for_any_array(gen, n):
    with pytest.raises(ValueError, match=f"n={n} is too large"):
        gen(n)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: datasets.rings(3, radii="a"), TypeError, "radii"),
    (lambda: datasets.rings(3, radii=[1.0, [2.0]]), ValueError, "radii"),
    (lambda: datasets.gaussian_mixture(3, means="a"), TypeError, "means"),
    (lambda: datasets.gaussian_mixture(3, scales="a"), TypeError, "scales"),
    (lambda: datasets.gaussian_mixture(3, weights=["a", "b"]), TypeError, "weights"),
    (lambda: datasets.gaussian_mixture_log_density([0.0, 0.0], means=[[0.0], [1.0, 2.0]]),
     ValueError, "means"),
])
def test_array_parameters_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_two_moons_without_noise_lie_on_the_half_circles():
    x = datasets.two_moons(101, rng=0, noise=0.0)
    upper = np.isclose(np.hypot(x[:, 0], x[:, 1]), 1.0) & (x[:, 1] >= 0)
    lower = np.isclose(np.hypot(x[:, 0] - 1.0, x[:, 1] - 0.5), 1.0) & (x[:, 1] <= 0.5)
    assert np.all(upper | lower)
    assert upper.sum() == 51 and lower.sum() == 50


def test_rings_without_noise_lie_on_the_circles():
    x = datasets.rings(400, rng=0, noise=0.0, radii=(1.0, 3.0))
    r = np.hypot(x[:, 0], x[:, 1])
    on_inner = np.isclose(r, 1.0)
    assert np.all(on_inner | np.isclose(r, 3.0))
    # Points per ring are proportional to the radius: 1/4 on the inner ring.
    assert 60 < on_inner.sum() < 140
    with pytest.raises(ValueError, match="radii"):
        datasets.rings(5, radii=(1.0, -2.0))


def test_banana_samples_follow_the_banana_density():
    x = datasets.banana(20000, rng=0, noise=0.5, curvature=1.5)
    # x1 ~ N(0, 1) and x2 - 1.5 (x1^2 - 1) ~ N(0, 0.5^2).
    resid = x[:, 1] - 1.5 * (x[:, 0] ** 2 - 1.0)
    assert abs(x[:, 0].mean()) < 0.03 and abs(x[:, 0].std() - 1) < 0.03
    assert abs(resid.mean()) < 0.02 and abs(resid.std() - 0.5) < 0.02


def test_gaussian_mixture_samples():
    means = [[-3.0, 0.0, 1.0], [3.0, 0.0, -1.0]]
    x = datasets.gaussian_mixture(4000, rng=1, means=means, scales=[0.2, 0.4], weights=[1, 3])
    assert x.shape == (4000, 3)
    right = x[:, 0] > 0
    assert abs(right.mean() - 0.75) < 0.03
    np.testing.assert_allclose(x[right].std(axis=0), 0.4, rtol=0.08)
    np.testing.assert_allclose(x[~right].mean(axis=0), means[0], atol=0.03)


DENSITIES = [
    pytest.param(datasets.banana_log_density, 2, id="banana"),
    pytest.param(functools.partial(datasets.banana_log_density, noise=0.3, curvature=-2.0), 2,
                 id="banana-args"),
    pytest.param(datasets.gaussian_mixture_log_density, 2, id="mixture"),
    pytest.param(functools.partial(datasets.gaussian_mixture_log_density,
                                   means=[[0, 1, 2], [1, -1, 0], [3, 0, 0]],
                                   scales=[0.5, 1.0, 2.0], weights=[0.2, 0.3, 0.5]), 3,
                 id="mixture-3d"),
]


@pytest.mark.parametrize("density,dim", DENSITIES)
def test_gradients_match_finite_differences(density, dim, rng):
    x = rng.normal(size=(6, dim)) * 1.5
    values, grads = density(x)
    assert values.shape == (6,) and grads.shape == (6, dim)
    h = 1e-6
    for j in range(dim):
        e = np.zeros(dim)
        e[j] = h
        fd = (density(x + e)[0] - density(x - e)[0]) / (2 * h)
        np.testing.assert_allclose(grads[:, j], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("density,dim", DENSITIES)
def test_single_point_and_array_likes(density, dim):
    v, g = density([0.5] * dim)
    assert v.shape == () and g.shape == (dim,)
    vb, gb = density(np.full((1, dim), 0.5))
    np.testing.assert_allclose(v, vb[0])
    np.testing.assert_allclose(g, gb[0])
    with pytest.raises(ValueError, match=f"shape \\(N, {dim}\\)"):
        density(np.zeros((3, dim + 1)))
    with pytest.raises(TypeError, match="real"):
        density(np.zeros((3, dim), dtype=complex))


@pytest.mark.parametrize("density", [
    datasets.banana_log_density,
    functools.partial(datasets.banana_log_density, noise=0.3, curvature=0.5),
    datasets.gaussian_mixture_log_density,
])
def test_densities_are_normalised(density):
    # A Riemann sum on a box holding all but ~1e-11 of the mass (the banana's
    # x2 reaches c (x1^2 - 1), up to ~40 for |x1| <= 7).
    g1, h1 = np.linspace(-7, 7, 561, retstep=True)
    g2, h2 = np.linspace(-8, 42, 2001, retstep=True)
    xx, yy = np.meshgrid(g1, g2)
    values, _ = density(np.stack([xx.ravel(), yy.ravel()], axis=1))
    np.testing.assert_allclose(np.exp(values).sum() * h1 * h2, 1.0, rtol=1e-6)


def test_mixture_far_from_every_component_stays_finite():
    values, grads = datasets.gaussian_mixture_log_density([[1e3, 0.0]], scales=0.1)
    assert np.isfinite(values).all() and np.isfinite(grads).all()
    # Far out the nearest component dominates: grad = (mu - x) / s^2.
    np.testing.assert_allclose(grads[0], [(2.0 - 1e3) / 0.01, 0.0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(means=[1.0, 2.0]), "means"),
    (dict(scales=[1.0, 2.0, 3.0]), "scales"),
    (dict(scales=0.0), "scales"),
    (dict(weights=[1.0, -1.0]), "weights"),
])
def test_mixture_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.gaussian_mixture_log_density(np.zeros((2, 2)), **kwargs)
