"""The same math as pyflowcore, written with array libraries, for comparison.

Used by ``pyflowcore.bench`` (and ``benchmarks/``) to time pyflowcore against
a vectorised NumPy implementation, PyTorch and JAX.  Each model is written
once, from SPEC.md's formulas, against a small table of array operations
(``Ops``), so NumPy, PyTorch (eager and ``torch.compile``) and JAX
(``jax.jit``) all run literally the same expressions; the benchmark checks
that every one agrees with pyflowcore before it times it.

Every model takes the flat parameter vector ``theta`` in SPEC.md section 2's
layout (for a chain: the layers' vectors concatenated in order), so that the
autograd backends return gradients directly comparable with pyflowcore's
``grad_params``.

The formulas, per layer, with ``z`` the layer's input and ``x`` its output:

Planar
    ``uhat = u + (m(w.u) - w.u) w / ||w||^2``, ``m(a) = -1 + softplus(a)``
    (correction 0 when ``w = 0``); ``x = z + uhat tanh(w.z + b)``;
    ``log_det = log|1 + (1 - tanh^2(w.z + b)) w.uhat|``.
Radial
    ``alpha = exp(log_alpha)``, ``beta = -alpha + softplus(beta_raw)``,
    ``r = ||z - z0||``, ``h = 1/(alpha + r)``, ``h' = -h^2``;
    ``x = z + beta h (z - z0)``;
    ``log_det = (dim - 1) log(1 + beta h) + log(1 + beta h + beta h' r)``.
Real NVP
    mask ``b`` (from ``pyflowcore.flows.realnvp.realnvp_masks``):
    ``x = b*z + (1 - b)*(z*exp(s(b*z)) + t(b*z))``,
    ``log_det = sum_j (1 - b_j) s_j``; ``s`` and ``t`` are tanh MLPs
    ``h_1 = tanh(A_1 v + b_1)``, ``h_l = tanh(A_l h_{l-1} + b_l)``,
    output ``A_out h_L + b_out``.

NumPy has no autograd: the planar chain's gradient is written by hand
(``numpy_planar_value_and_grad``), and the planar inverse, which has no
closed form, is a vectorised safeguarded Newton iteration
(``numpy_planar_log_prob``).  PyTorch and JAX are imported only by the
functions that build their ``Ops``; neither is a dependency of pyflowcore.
"""

import math

import numpy as np

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Ops:
    """The handful of element-wise operations the models need, for one array library.

    Everything else the models use (``@``, ``*``, slicing, ``.sum``,
    ``.reshape``, ``.T``) is spelled the same way in NumPy, PyTorch and JAX.
    """

    def __init__(self, name, *, tanh, exp, log, abs, sqrt, softplus, sigmoid, where, asarray):
        self.name = name
        self.tanh, self.exp, self.log, self.abs, self.sqrt = tanh, exp, log, abs, sqrt
        self.softplus, self.sigmoid, self.where = softplus, sigmoid, where
        self.asarray = asarray  # asarray(numpy_array, like=array_of_the_target_dtype)


def numpy_ops():
    return Ops("numpy", tanh=np.tanh, exp=np.exp, log=np.log, abs=np.abs, sqrt=np.sqrt,
               softplus=lambda a: np.logaddexp(a.dtype.type(0), a),
               sigmoid=lambda a: 0.5 * (1.0 + np.tanh(0.5 * a)),
               where=np.where, asarray=lambda a, like: np.asarray(a, dtype=like.dtype))


def torch_ops(torch):
    # torch.nn.functional.softplus switches to the identity above 20; logaddexp
    # is the exact softplus of SPEC.md.
    return Ops("torch", tanh=torch.tanh, exp=torch.exp, log=torch.log, abs=torch.abs,
               sqrt=torch.sqrt, softplus=lambda a: torch.logaddexp(a, torch.zeros_like(a)),
               sigmoid=torch.sigmoid, where=torch.where,
               asarray=lambda a, like: torch.as_tensor(a, dtype=like.dtype, device=like.device))


def jax_ops(jax):
    jnp = jax.numpy
    return Ops("jax", tanh=jnp.tanh, exp=jnp.exp, log=jnp.log, abs=jnp.abs, sqrt=jnp.sqrt,
               softplus=jax.nn.softplus, sigmoid=jax.nn.sigmoid, where=jnp.where,
               asarray=lambda a, like: jnp.asarray(a, dtype=like.dtype))


# -- the models, one copy for every array library --------------------------
def planar_uhat(ops, u, w):
    """``uhat(u, w)`` of SPEC.md; the correction term is 0 when ``w = 0``."""
    wu = w @ u
    ww = w @ w
    m = -1.0 + ops.softplus(wu)
    positive = ww > 0
    coef = ops.where(positive, (m - wu) / ops.where(positive, ww, 1.0), 0.0)
    return u + coef * w


def planar_chain(ops, theta, z, dim, layers):
    """Forward and log-det of ``layers`` planar layers; ``theta`` is ``(u, w, b)`` per layer."""
    size = 2 * dim + 1
    x, log_det = z, None
    for k in range(layers):
        p = theta[k * size:(k + 1) * size]
        u, w, b = p[:dim], p[dim:2 * dim], p[2 * dim]
        u_hat = planar_uhat(ops, u, w)
        h = ops.tanh(x @ w + b)
        x = x + h[:, None] * u_hat
        term = ops.log(ops.abs(1.0 + (1.0 - h * h) * (w @ u_hat)))
        log_det = term if log_det is None else log_det + term
    return x, log_det


def radial_chain(ops, theta, z, dim, layers):
    """Forward and log-det of ``layers`` radial layers; ``theta`` is
    ``(log_alpha, beta_raw, z0)`` per layer."""
    size = dim + 2
    x, log_det = z, None
    for k in range(layers):
        p = theta[k * size:(k + 1) * size]
        alpha = ops.exp(p[0])
        beta = -alpha + ops.softplus(p[1])
        d = x - p[2:]
        r = ops.sqrt((d * d).sum(-1))
        h = 1.0 / (alpha + r)
        bh = beta * h
        x = x + bh[:, None] * d
        term = (dim - 1) * ops.log(1.0 + bh) + ops.log(1.0 + bh + beta * (-h * h) * r)
        log_det = term if log_det is None else log_det + term
    return x, log_det


def realnvp_net_size(dim, num_layers, units):
    """Parameters of one s- or t-net (SPEC.md section 2)."""
    return 2 * dim * units + dim + units + (num_layers - 1) * (units + 1) * units


def _mlp(p, v, dim, num_layers, units, ops):
    D, U = dim, units
    o = 0
    A = p[o:o + U * D].reshape(U, D)
    o += U * D
    h = ops.tanh(v @ A.T + p[o:o + U])
    o += U
    for _ in range(num_layers - 1):
        A = p[o:o + U * U].reshape(U, U)
        o += U * U
        h = ops.tanh(h @ A.T + p[o:o + U])
        o += U
    A = p[o:o + D * U].reshape(D, U)
    o += D * U
    return h @ A.T + p[o:o + D]


def realnvp(ops, theta, z, dim, masks, num_layers, units):
    """Forward and log-det of Real NVP; ``masks`` is a sequence of 0/1 arrays of
    ``z``'s library and dtype, one per mask, in order."""
    net = realnvp_net_size(dim, num_layers, units)
    x, log_det = z, None
    for i, b in enumerate(masks):
        nb = 1.0 - b
        v = b * x
        off = 2 * i * net
        s = _mlp(theta[off:off + net], v, dim, num_layers, units, ops)
        t = _mlp(theta[off + net:off + 2 * net], v, dim, num_layers, units, ops)
        x = v + nb * (x * ops.exp(s) + t)
        term = (nb * s).sum(-1)
        log_det = term if log_det is None else log_det + term
    return x, log_det


def make_model(ops, spec, dim, like):
    """The function ``f(theta, z) -> (x, log_det)`` of the model ``spec``.

    ``spec`` is ``("planar", layers)``, ``("radial", layers)`` or
    ``("realnvp", num_masks, num_layers, units)``; ``like`` is an array of the
    target library and dtype.  Real NVP's masks are converted here, once, so
    that nothing but array operations is left for ``jax.jit`` or
    ``torch.compile`` to trace.
    """
    kind = spec[0]
    if kind == "planar":
        return lambda theta, z: planar_chain(ops, theta, z, dim, spec[1])
    if kind == "radial":
        return lambda theta, z: radial_chain(ops, theta, z, dim, spec[1])
    if kind == "realnvp":
        from pyflowcore.flows.realnvp import realnvp_masks
        masks = [ops.asarray(b, like=like) for b in realnvp_masks(dim, spec[1])]
        return lambda theta, z: realnvp(ops, theta, z, dim, masks, spec[2], spec[3])
    raise ValueError(f"unknown model {kind!r}")


def make_loss(ops, spec, dim, like):
    """The function ``f(theta, z) -> mean(log_det + ||x||^2)`` that the gradient
    workloads differentiate."""
    forward = make_model(ops, spec, dim, like)

    def loss(theta, z):
        x, log_det = forward(theta, z)
        return (log_det + (x * x).sum(-1)).mean()
    return loss


# -- NumPy: what autograd and an inverse would give --------------------------
def numpy_planar_value_and_grad(theta, z, dim, layers):
    """``loss`` of a planar chain and its gradient with respect to ``theta``, by hand.

    Reverse-mode through each layer, last to first, with
    ``g_a = (grad_x.uhat - 2 h c grad_ld / D) (1 - h^2)`` for ``a = w.z + b``,
    ``c = w.uhat``, ``D = 1 + (1 - h^2) c``, then through ``uhat(u, w)``.
    """
    ops = numpy_ops()
    n = z.shape[0]
    size = 2 * dim + 1
    inputs, cache = [], []
    x, log_det = z, np.zeros(n, dtype=z.dtype)
    for k in range(layers):
        p = theta[k * size:(k + 1) * size]
        u, w, b = p[:dim], p[dim:2 * dim], p[2 * dim]
        wu, ww = w @ u, w @ w
        m = -1.0 + ops.softplus(wu)
        coef = (m - wu) / ww if ww > 0 else z.dtype.type(0)
        u_hat = u + coef * w
        c = w @ u_hat
        h = np.tanh(x @ w + b)
        inputs.append(x)
        cache.append((u, w, wu, ww, coef, u_hat, c, h))
        x = x + h[:, None] * u_hat
        log_det += np.log(np.abs(1.0 + (1.0 - h * h) * c))
    value = np.mean(log_det + np.einsum("ij,ij->i", x, x))

    grad = np.zeros_like(theta)
    g_x = x * (2.0 / n)
    g_ld = 1.0 / n
    for k in range(layers - 1, -1, -1):
        u, w, wu, ww, coef, u_hat, c, h = cache[k]
        hp = 1.0 - h * h
        g_D = g_ld / (1.0 + hp * c)
        g_a = (g_x @ u_hat - 2.0 * c * h * g_D) * hp
        g_c = np.sum(g_D * hp)
        g_uhat = h @ g_x + g_c * w
        g_w = inputs[k].T @ g_a + g_c * u_hat + coef * g_uhat
        g_b = np.sum(g_a)
        g_x = g_x + g_a[:, None] * w
        g_u = g_uhat.copy()
        if ww > 0:  # through coef = (m(wu) - wu) / ww
            g_coef = g_uhat @ w
            g_wu = g_coef * (ops.sigmoid(wu) - 1.0) / ww
            g_w += g_wu * u - (2.0 * g_coef * coef / ww) * w
            g_u += g_wu * w
        p = grad[k * size:(k + 1) * size]
        p[:dim], p[dim:2 * dim], p[2 * dim] = g_u, g_w, g_b
    return value, grad


def numpy_planar_log_prob(theta, x, dim, layers, max_iter=100):
    """``log_prob`` of a planar chain through its inverse, vectorised over the batch.

    Each layer, last to first, solves ``s + c tanh(s) = w.x + b`` for
    ``s = w.z + b`` (``c = w.uhat >= -1``, so the left side is monotone and
    the root lies within ``|c|`` of ``w.x + b``) by Newton's method on that
    bracket, falling back to bisection for rows whose Newton step would leave
    it; then ``z = x - uhat tanh(s)``.
    """
    ops = numpy_ops()
    size = 2 * dim + 1
    eps = np.finfo(x.dtype).eps
    log_det_inv = np.zeros(x.shape[0], dtype=x.dtype)
    for k in range(layers - 1, -1, -1):
        p = theta[k * size:(k + 1) * size]
        u, w, b = p[:dim], p[dim:2 * dim], p[2 * dim]
        u_hat = planar_uhat(ops, u, w)
        c = w @ u_hat
        y = x @ w + b
        lo, hi = y - abs(c), y + abs(c)
        s = y.copy()
        for _ in range(max_iter):
            t = np.tanh(s)
            f = s + c * t - y
            lo = np.where(f < 0, s, lo)
            hi = np.where(f > 0, s, hi)
            slope = 1.0 + c * (1.0 - t * t)
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = s - f / slope
            ok = (newton > lo) & (newton < hi)
            s_new = np.where(ok, newton, 0.5 * (lo + hi))
            step = np.abs(s_new - s)
            s = s_new
            if np.all(step <= 4 * eps * np.maximum(1.0, np.abs(s))):
                break
        t = np.tanh(s)
        x = x - t[:, None] * u_hat
        log_det_inv -= np.log(np.abs(1.0 + (1.0 - t * t) * c))
    return -0.5 * np.einsum("ij,ij->i", x, x) - dim * x.dtype.type(_HALF_LOG_2PI) + log_det_inv
