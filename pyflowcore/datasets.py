"""Toy data sets and target densities for trying flows out.

Generators (each ``(n, rng=None, noise=...)``, returning an ``(n, 2)``
float64 array made by code, no downloads):

``two_moons``
    two interleaving half circles;
``rings``
    concentric circles;
``banana``
    draws from the density of ``banana_log_density``;
``gaussian_mixture``
    draws from the density of ``gaussian_mixture_log_density``.

Target densities for ``pyflowcore.fit_variational`` (each ``f(x)`` returning
``(values, gradients)``: the log-density of every row and its gradient with
respect to the row):

``banana_log_density``
    a curved, normalised 2-D density;
``gaussian_mixture_log_density``
    a normalised mixture of isotropic Gaussians in any dimension.

Both are normalised, so ``log Z = 0`` and the ELBO of a variational fit is
``-KL(q || p)``.  Pass other shape parameters with ``functools.partial``.

Every function checks its arguments: a parameter of the wrong type raises
``TypeError``, a bad value (NaN, infinite, out of range, an ``n`` too large
for any array) ``ValueError``; each message names the parameter.
"""

import math

import numpy as np

from pyflowcore._validation import as_real_array, check_finite_float, check_positive_int, check_rng

__all__ = ["two_moons", "rings", "banana", "gaussian_mixture",
           "banana_log_density", "gaussian_mixture_log_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def _check_noise(noise, name="noise"):
    noise = check_finite_float(noise, name)
    if not noise >= 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {noise}")
    return noise


def _check_scale(value, name):
    value = check_finite_float(value, name)
    if not value > 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _check_n(n, dim=2):
    """``n`` as an int >= 0 for which an ``(n, dim)`` float64 array can exist.

    Beyond the largest array size NumPy would fail with "Python int too
    large to convert to C long" or "Maximum allowed dimension exceeded";
    below it, an array too large for memory raises NumPy's MemoryError, which
    says how much it tried to allocate.
    """
    n = check_positive_int(n, "n", minimum=0)
    limit = np.iinfo(np.intp).max // (8 * max(dim, 1))
    if n > limit:
        raise ValueError(f"n={n} is too large: ({n}, {dim}) float64 values exceed the largest "
                         f"array NumPy can make here (n <= {limit})")
    return n


def _real_array(value, name):
    """``value`` as a float64 array; the error names ``name`` (TypeError for
    non-numbers such as strings, ValueError for ragged nesting)."""
    return np.asarray(as_real_array(value, name, "float64"), dtype=np.float64)


def two_moons(n, rng=None, noise=0.1):
    """Two interleaving half circles.

    The upper moon is ``(cos t, sin t)``, the lower ``(1 - cos t, 0.5 - sin t)``,
    ``t ~ U(0, pi)``; every point gets ``N(0, noise^2)`` added to each
    coordinate.  Rows are in random order; the moons hold ``ceil(n/2)`` and
    ``floor(n/2)`` points.

    Parameters
    ----------
    n : int
        Number of points (0 allowed).
    rng : None, int or numpy.random.Generator
    noise : float
        Standard deviation of the Gaussian noise.

    Returns
    -------
    ndarray of shape (n, 2), float64
    """
    n = _check_n(n)
    noise = _check_noise(noise)
    rng = check_rng(rng)
    n_upper = (n + 1) // 2
    t = rng.uniform(0.0, math.pi, size=n)
    x = np.empty((n, 2))
    x[:n_upper, 0] = np.cos(t[:n_upper])
    x[:n_upper, 1] = np.sin(t[:n_upper])
    x[n_upper:, 0] = 1.0 - np.cos(t[n_upper:])
    x[n_upper:, 1] = 0.5 - np.sin(t[n_upper:])
    x += noise * rng.standard_normal((n, 2))
    return x[rng.permutation(n)]


def rings(n, rng=None, noise=0.08, radii=(1.0, 2.0)):
    """Concentric circles.

    Each point picks a ring with probability proportional to its radius (so
    the density along the circles is uniform), an angle ``U(0, 2 pi)``, and
    gets ``N(0, noise^2)`` added to each coordinate.

    Parameters
    ----------
    n : int
    rng : None, int or numpy.random.Generator
    noise : float
    radii : sequence of float
        Radii of the circles, each > 0.

    Returns
    -------
    ndarray of shape (n, 2), float64
    """
    n = _check_n(n)
    noise = _check_noise(noise)
    radii = _real_array(radii, "radii").reshape(-1)
    if radii.size == 0 or not np.all(np.isfinite(radii) & (radii > 0)):
        raise ValueError(f"radii must be a non-empty sequence of finite numbers > 0, got {radii}")
    rng = check_rng(rng)
    r = radii[rng.choice(radii.size, size=n, p=radii / radii.sum())]
    t = rng.uniform(0.0, 2.0 * math.pi, size=n)
    x = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    x += noise * rng.standard_normal((n, 2))
    return x


def banana(n, rng=None, noise=0.5, curvature=1.0):
    """Draws from the banana density of ``banana_log_density``.

    ``x1 ~ N(0, 1)``, ``x2 = curvature * (x1^2 - 1) + noise * e``,
    ``e ~ N(0, 1)``.

    Parameters
    ----------
    n : int
    rng : None, int or numpy.random.Generator
    noise : float
        Spread of ``x2`` around the parabola, > 0.
    curvature : float
        Finite.

    Returns
    -------
    ndarray of shape (n, 2), float64
    """
    n = _check_n(n)
    noise = _check_scale(noise, "noise")
    curvature = check_finite_float(curvature, "curvature")
    e = check_rng(rng).standard_normal((n, 2))
    x = np.empty((n, 2))
    x[:, 0] = e[:, 0]
    x[:, 1] = curvature * (e[:, 0] ** 2 - 1.0) + noise * e[:, 1]
    return x


def _as_rows(x, dim, name="x"):
    arr = as_real_array(x, name, np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr).astype(np.float64, copy=False)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"(N, {dim}) or ({dim},)" if dim is not None else "(N, dim) or (dim,)"
        raise ValueError(f"{name} must have shape {want}, got shape {np.shape(x)}")
    return arr, single


def banana_log_density(x, noise=0.5, curvature=1.0):
    """Log-density of the banana distribution and its gradient.

    ``log p(x) = log N(x1; 0, 1) + log N(x2; c (x1^2 - 1), s^2)``
    with ``c = curvature`` and ``s = noise``; normalised (it integrates to 1).

    With ``r = (x2 - c (x1^2 - 1)) / s^2``:
    ``d log p / dx1 = -x1 + 2 c x1 r`` and ``d log p / dx2 = -r``.

    Parameters
    ----------
    x : array_like of shape (N, 2) or (2,)
    noise : float
    curvature : float
        Finite.

    Returns
    -------
    values : ndarray of shape (N,) or ()
    gradients : ndarray of shape (N, 2) or (2,)
    """
    x, single = _as_rows(x, 2)
    s = _check_scale(noise, "noise")
    c = check_finite_float(curvature, "curvature")
    x1, x2 = x[:, 0], x[:, 1]
    resid = x2 - c * (x1 * x1 - 1.0)
    values = -0.5 * x1 * x1 - 0.5 * (resid / s) ** 2 - math.log(s) - _LOG_2PI
    r = resid / (s * s)
    grads = np.stack([-x1 + 2.0 * c * x1 * r, -r], axis=1)
    if single:
        return values[0], grads[0]
    return values, grads


_DEFAULT_MEANS = ((-2.0, 0.0), (2.0, 0.0))


def _mixture_args(means, scales, weights):
    means = _real_array(means, "means")
    if means.ndim != 2 or means.shape[0] == 0 or not np.all(np.isfinite(means)):
        raise ValueError(f"means must be a finite (K, dim) array, got shape {means.shape}")
    k = means.shape[0]
    scales = _real_array(scales, "scales")
    scales = np.broadcast_to(scales, (k,)).copy() if scales.ndim == 0 or scales.shape == (k,) \
        else None
    if scales is None or not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"scales must be a number or ({k},) numbers, each > 0")
    if weights is None:
        weights = np.full(k, 1.0 / k)
    weights = _real_array(weights, "weights")
    if weights.shape != (k,) or not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"weights must be ({k},) numbers, each > 0")
    return means, scales, weights / weights.sum()


def gaussian_mixture(n, rng=None, noise=None, means=_DEFAULT_MEANS, scales=0.5, weights=None):
    """Draws from ``sum_k w_k N(mu_k, s_k^2 I)``.

    Parameters
    ----------
    n : int
    rng : None, int or numpy.random.Generator
    noise : float, optional
        If given, replaces ``scales`` (one standard deviation for every
        component), for the common ``(n, rng, noise)`` signature.
    means : array_like of shape (K, dim)
        Default: two components at ``(-2, 0)`` and ``(2, 0)``.
    scales : float or array_like of shape (K,)
    weights : array_like of shape (K,), optional
        Positive; normalised to sum to 1 (default equal).

    Returns
    -------
    ndarray of shape (n, dim), float64
    """
    n = check_positive_int(n, "n", minimum=0)
    if noise is not None:
        scales = _check_scale(noise, "noise")
    means, scales, weights = _mixture_args(means, scales, weights)
    n = _check_n(n, means.shape[1])
    rng = check_rng(rng)
    k = rng.choice(means.shape[0], size=n, p=weights)
    return means[k] + scales[k, None] * rng.standard_normal((n, means.shape[1]))


def gaussian_mixture_log_density(x, means=_DEFAULT_MEANS, scales=0.5, weights=None):
    """Log-density of a mixture of isotropic Gaussians and its gradient.

    ``log p(x) = logsumexp_k [log w_k + log N(x; mu_k, s_k^2 I)]``, and
    ``d log p / dx = sum_k r_k(x) (mu_k - x) / s_k^2`` with the
    responsibilities ``r_k(x)`` (the softmax of the bracket).

    Parameters
    ----------
    x : array_like of shape (N, dim) or (dim,)
    means : array_like of shape (K, dim)
    scales : float or array_like of shape (K,)
    weights : array_like of shape (K,), optional

    Returns
    -------
    values : ndarray of shape (N,) or ()
    gradients : ndarray of shape (N, dim) or (dim,)
    """
    means, scales, weights = _mixture_args(means, scales, weights)
    dim = means.shape[1]
    x, single = _as_rows(x, dim)
    diff = means[None, :, :] - x[:, None, :]                    # (N, K, dim)
    sq = np.einsum("nkd,nkd->nk", diff, diff)
    var = scales * scales
    logc = np.log(weights) - dim * np.log(scales) - 0.5 * dim * _LOG_2PI - 0.5 * sq / var
    top = logc.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(logc - top)
    total = e.sum(axis=1)
    values = np.log(total) + top[:, 0]
    resp = e / total[:, None]
    grads = np.einsum("nk,nkd->nd", resp / var, diff)
    if single:
        return values[0], grads[0]
    return values, grads
