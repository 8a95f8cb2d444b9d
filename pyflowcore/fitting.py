"""Fitting flows: maximum likelihood (``fit``) and variational inference
(``fit_variational``).

Both objectives are differentiated exactly with the flows' own
vector-Jacobian products, no autodiff:

Maximum likelihood
    ``z, l = f^{-1}(x)``, ``log p(x) = -||z||^2/2 - dim/2 log 2 pi + l``, and
    the loss ``L = -mean(log p(x))`` has ``dL/dz = z/N`` and ``dL/dl = -1/N``,
    so ``dL/dtheta = flow.inverse_backward(x, z/N, -1/N)[1]``.  That is the
    quadratic loss of ``Flow.quadratic_loss_and_grad`` (weights ``1/N`` and
    ``-1/N``, through the inverse), which Real NVP and runs of row-wise flows
    evaluate with its gradient in one pass.

Reverse KL
    ``z ~ N(0, I)``, ``x, l = f(z)``, ``log q(x) = log N(z) - l`` and
    ``L = mean(log q(x) - log p~(x))``.  With ``z`` held fixed
    (reparameterisation), ``dL/dx = -grad log p~(x)/N`` and ``dL/dl = -1/N``,
    so ``dL/dtheta = flow.backward(z, -grad log p~(x)/N, -1/N)[1]``.

Optimisers: Adam (built in, mini-batches or fresh draws per step) and
SciPy's L-BFGS-B on the full-batch (or fixed-draw) objective in float64.

Devices: a flow on the GPU is fitted there, from CuPy data (and a
``log_density`` on CuPy arrays); the work arrays and Adam's state live on the
device.  Batch orders and base draws are made on the host by the NumPy
generator, so a seed takes the same steps on either device; L-BFGS, which
SciPy runs on the host, moves the parameters and the gradient across at each
evaluation.
"""

import dataclasses
import math
import sys
import time

import numpy as np

from pyflowcore._validation import (
    array_module, as_real_array, check_positive_int, check_rng, to_host)

__all__ = ["FitResult", "fit", "fit_variational", "elbo", "nll_and_grad", "kl_and_grad"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_METHODS = ("adam", "lbfgs")


@dataclasses.dataclass
class FitResult:
    """What ``fit`` and ``fit_variational`` return.

    Attributes
    ----------
    params : ndarray
        The fitted parameter vector (a copy; the flow holds the same values).
    losses : ndarray of shape (n_iter,)
        Training loss at each iteration: the mini-batch (or fresh-draw) loss
        for Adam, the full objective at each accepted iterate for L-BFGS.
    n_iter : int
        Number of iterations (optimiser steps) taken.
    success : bool
        False when the optimiser failed (for example a non-finite loss).
    message : str
        Why it stopped.
    val_losses : ndarray or None
        Validation loss (``-mean log p``) at each evaluation, when validation
        data was given.
    best_iter : int or None
        With validation data: the iteration whose parameters were kept.
    elbo, elbo_stderr : float or None
        ``fit_variational`` only: the final ELBO estimate
        ``mean(log p~(x) - log q(x))`` on a fresh sample and its standard error.
    """

    params: np.ndarray
    losses: np.ndarray
    n_iter: int
    success: bool
    message: str
    val_losses: np.ndarray | None = None
    best_iter: int | None = None
    elbo: float | None = None
    elbo_stderr: float | None = None


# -- progress display -------------------------------------------------------
class _Progress:
    """tqdm when installed, else one line on stderr rewritten with ``\\r``."""

    def __init__(self, enabled, total, desc):
        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled = bool(enabled)
        self.total, self.desc = total, desc
        self._bar = None
        self._last = 0.0
        self._width = 0
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True,
                         dynamic_ncols=True)

    def update(self, iteration, loss, extra=""):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(iteration - self._bar.n)
            self._bar.set_postfix_str(f"loss={loss:.5g}{extra}", refresh=False)
            return
        now = time.monotonic()
        if now - self._last < 0.1 and iteration < self.total:
            return
        self._last = now
        line = f"{self.desc}: {iteration}/{self.total} loss={loss:.5g}{extra}"
        sys.stderr.write("\r" + line.ljust(self._width))
        sys.stderr.flush()
        self._width = len(line)

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- checks -----------------------------------------------------------------
def _check_flow(flow):
    from pyflowcore.flows import Flow
    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be a pyflowcore Flow, got {type(flow).__name__}")
    if flow.num_params == 0:
        raise ValueError(f"{type(flow).__name__} has no parameters to fit")


def _check_method(method):
    if method not in _METHODS:
        raise ValueError(f"method must be 'adam' or 'lbfgs', got {method!r}")
    return method


def _check_data(data, name, flow):
    xp = array_module(flow.device)
    arr = as_real_array(data, name, flow.dtype, flow.device)
    if arr.ndim == 1 and flow.dim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != flow.dim:
        raise ValueError(f"{name} must have shape (N, {flow.dim}) for a flow of dim {flow.dim}, "
                         f"got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point, got shape {arr.shape}")
    # Checked after the cast: finite data can still overflow the flow's dtype
    # (1e300 in float32).
    with np.errstate(over="ignore"):
        converted = xp.ascontiguousarray(arr, dtype=flow.dtype)
    bad = ~xp.isfinite(converted).all(axis=1)
    if bad.any():
        row, count = int(xp.nonzero(bad)[0][0]), int(bad.sum())
        if xp.isfinite(arr).all():
            raise ValueError(f"{name} must be finite in {flow.dtype}; {count} row(s) overflow "
                             f"it, the first row {row}")
        kind = "NaN" if xp.isnan(arr).any() else "inf"
        raise ValueError(f"{name} must be finite; found {kind} values in {count} row(s), the "
                         f"first in row {row}")
    return converted


def _check_positive_float(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number > 0, got {value!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _check_betas(betas):
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair of numbers in [0, 1), got {betas!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
    return b1, b2


def _check_callback(callback):
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return callback


# -- the maximum-likelihood objective --------------------------------------
class _MLEObjective:
    """``-mean(log p(x))`` and its gradient on batches of up to ``capacity``
    rows, reusing the same work arrays at every call."""

    def __init__(self, flow, capacity):
        self.flow = flow
        self.xp = xp = array_module(flow.device)
        dt, d = flow.dtype, flow.dim
        self._z = xp.empty((capacity, d), dt)
        self._ld = xp.empty(capacity, dt)
        self._sq = xp.empty((capacity, d), dt)
        self._gx = xp.empty((capacity, d), dt)
        self.grad = xp.empty(flow.num_params, dt)

    def loss(self, x):
        m, xp = x.shape[0], self.xp
        z, ld = self.flow.inverse(x, out=(self._z[:m], self._ld[:m]))
        sq = xp.square(z, out=self._sq[:m])
        return (0.5 * float(xp.sum(sq, dtype=np.float64)) - float(xp.sum(ld, dtype=np.float64))) \
            / m + self.flow.dim * _HALF_LOG_2PI

    def loss_and_grad(self, x):
        """Loss (a float) and gradient (``self.grad``, overwritten next call)."""
        m = x.shape[0]
        value = self.flow.quadratic_loss_and_grad(x, 1.0 / m, -1.0 / m, inverse=True,
                                                  out=(self._gx[:m], self.grad))[0]
        return value + self.flow.dim * _HALF_LOG_2PI, self.grad


def nll_and_grad(flow, data):
    """The maximum-likelihood loss ``-mean(log p(data))`` and its exact gradient.

    For use with an optimiser of your own; ``fit`` evaluates the same thing.

    Parameters
    ----------
    flow : Flow
    data : array_like of shape (N, dim)
        A CuPy array for a flow on the GPU.

    Returns
    -------
    loss : float
    grad : ndarray of shape (num_params,)
        ``flow.inverse_backward(x, z/N, -1/N)[1]`` with ``z = f^{-1}(x)``
        (on the flow's device).
    """
    _check_flow(flow)
    data = _check_data(data, "data", flow)
    value, grad = _MLEObjective(flow, data.shape[0]).loss_and_grad(data)
    return value, grad.copy()


def kl_and_grad(flow, log_density, z):
    """The reverse-KL loss ``mean(log q(x) - log p~(x))`` on base draws ``z`` and its
    exact (reparameterisation) gradient.

    Parameters
    ----------
    flow : Flow
    log_density : callable
        As in ``fit_variational``.
    z : array_like of shape (n, dim)
        Base draws; ``x = f(z)``.

    Returns
    -------
    loss : float
    grad : ndarray of shape (num_params,)
        ``flow.backward(z, -grad log p~(x)/n, -1/n)[1]``.
    """
    _check_flow(flow)
    z = _check_data(z, "z", flow)
    value, grad = _KLObjective(flow, log_density, z.shape[0]).loss_and_grad(z)
    return value, grad.copy()


def _mean_loss_chunked(objective, data, chunk):
    total = 0.0
    for lo in range(0, data.shape[0], chunk):
        part = data[lo:lo + chunk]
        total += objective.loss(part) * part.shape[0]
    return total / data.shape[0]


# -- Adam -------------------------------------------------------------------
class _Adam:
    """Adam with the moments and a master copy of the parameters in float64,
    on the parameters' device (``xp``: NumPy or CuPy)."""

    def __init__(self, theta, lr, betas, eps, clip_norm, xp=np):
        self.xp = xp
        self.theta = xp.array(theta, dtype=np.float64)
        self.m = xp.zeros_like(self.theta)
        self.v = xp.zeros_like(self.theta)
        self.g = xp.empty_like(self.theta)
        self.tmp = xp.empty_like(self.theta)
        self.lr, (self.b1, self.b2), self.eps, self.clip = lr, betas, eps, clip_norm
        self.t = 0

    def step(self, grad):
        g, xp = self.g, self.xp
        g[...] = grad
        if self.clip is not None:
            norm = math.sqrt(float(xp.dot(g, g)))
            if norm > self.clip:
                g *= self.clip / norm
        self.t += 1
        b1, b2 = self.b1, self.b2
        self.m *= b1
        self.m += (1 - b1) * g
        self.v *= b2
        xp.multiply(g, g, out=self.tmp)
        self.tmp *= 1 - b2
        self.v += self.tmp
        step = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        xp.sqrt(self.v, out=self.tmp)
        self.tmp += self.eps * math.sqrt(1 - b2 ** self.t)
        xp.divide(self.m, self.tmp, out=self.tmp)
        self.tmp *= step
        self.theta -= self.tmp
        return self.theta


def _adam_settings(learning_rate, betas, eps, clip_norm):
    return (_check_positive_float(learning_rate, "learning_rate"), _check_betas(betas),
            _check_positive_float(eps, "eps"),
            _check_positive_float(clip_norm, "clip_norm", allow_none=True))


def _resolve_steps(steps, epochs, steps_per_epoch, default):
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    if epochs is not None:
        return check_positive_int(epochs, "epochs") * steps_per_epoch
    if steps is None:
        return default
    return check_positive_int(steps, "steps")


def fit(flow, data, method="adam", *, steps=None, epochs=None, batch_size=256,
        learning_rate=1e-2, betas=(0.9, 0.999), eps=1e-8, clip_norm=None,
        validation_data=None, patience=None, eval_every=None, rng=None,
        options=None, callback=None, progress=None):
    """Fit a flow to data by maximum likelihood.

    Minimises ``L(theta) = -mean_i log p(x_i)`` with
    ``log p(x) = -||z||^2/2 - dim/2 log(2 pi) + log|det df^{-1}/dx|``,
    ``z = f^{-1}(x)``; the exact gradient is
    ``flow.inverse_backward(x, z/N, -1/N)[1]``.  The flow's parameters are
    updated in place.

    Parameters
    ----------
    flow : Flow
        On the CPU or the GPU; on the GPU every array below (data,
        validation data) is a CuPy array, the optimiser's state lives on the
        device, and L-BFGS moves the parameters and the gradient between
        host and device at each evaluation.
    data : array_like of shape (N, dim)
        Finite values; converted to the flow's dtype.  NaN or inf raises
        ``ValueError``.
    method : {"adam", "lbfgs"}
        ``"adam"``: mini-batch Adam.  ``"lbfgs"``:
        ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on the
        full-batch loss, evaluated in the flow's dtype and handed to SciPy in
        float64.
    steps : int, optional
        Maximum number of iterations (Adam steps or L-BFGS iterations).
        Default 1000 for Adam, 500 for L-BFGS.
    epochs : int, optional
        Adam only, instead of ``steps``: passes through the data.
    batch_size : int or None
        Adam mini-batch size (default 256); ``None`` or ``>= N`` uses the full
        batch.  Each epoch visits the rows in a fresh random order; the last
        batch of an epoch may be smaller.
    learning_rate, betas, eps : float, (float, float), float
        Adam's step size and moment decay rates, and the denominator guard.
    clip_norm : float, optional
        Adam: rescale the gradient to this Euclidean norm when it is larger.
    validation_data : array_like of shape (M, dim), optional
        Held-out points.  The validation loss is recorded every
        ``eval_every`` iterations (Adam; default once per epoch) or at every
        iteration (L-BFGS), and the parameters with the lowest validation
        loss are restored at the end.
    patience : int, optional
        With validation data: stop when the validation loss has not improved
        for this many evaluations (early stopping).  Default: never.
    eval_every : int, optional
        Adam: iterations between validation evaluations.
    rng : None, int or numpy.random.Generator
        Adam: the mini-batch order.
    options : dict, optional
        L-BFGS: passed to ``scipy.optimize.minimize`` as ``options``
        (``maxiter`` defaults to ``steps``).
    callback : callable, optional
        ``callback(iteration, loss, flow)`` after each iteration (``loss``
        as in ``FitResult.losses``); returning True stops the fit.
    progress : bool, optional
        Show a progress bar (tqdm if installed, else one line on stderr).
        Default: only when stderr is a terminal.

    Returns
    -------
    FitResult
        ``params`` on the flow's device.
    """
    _check_flow(flow)
    method = _check_method(method)
    data = _check_data(data, "data", flow)
    val = None if validation_data is None else _check_data(validation_data, "validation_data", flow)
    if patience is not None:
        patience = check_positive_int(patience, "patience")
        if val is None:
            raise ValueError("patience (early stopping) needs validation_data")
    callback = _check_callback(callback)
    n = data.shape[0]
    if method == "lbfgs":
        if epochs is not None:
            raise ValueError("epochs applies to method='adam'; use steps (maxiter) for 'lbfgs'")
        maxiter = _resolve_steps(steps, None, 1, 500)
        objective = _MLEObjective(flow, n)
        return _run_lbfgs(flow, lambda: objective.loss_and_grad(data), maxiter, options,
                          callback, progress, "fit (L-BFGS)",
                          _Validator(flow, val, patience) if val is not None else None)

    if options is not None:
        raise ValueError("options applies to method='lbfgs'")
    lr, betas, eps, clip_norm = _adam_settings(learning_rate, betas, eps, clip_norm)
    if batch_size is None:
        batch_size = n
    batch_size = min(check_positive_int(batch_size, "batch_size"), n)
    per_epoch = -(-n // batch_size)
    total = _resolve_steps(steps, epochs, per_epoch, 1000)
    eval_every = per_epoch if eval_every is None else check_positive_int(eval_every, "eval_every")
    rng = check_rng(rng)

    objective = _MLEObjective(flow, batch_size)
    xp = objective.xp
    batch = xp.empty((batch_size, flow.dim), flow.dtype)
    full = batch_size == n
    order, pos = None, n

    def next_batch():
        nonlocal order, pos
        if full:
            return data
        if pos >= n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + batch_size]
        pos += idx.shape[0]
        # The order is drawn on the host, so a seed gives the same batches on any device.
        return xp.take(data, xp.asarray(idx), axis=0, out=batch[:idx.shape[0]])

    return _run_adam(flow, lambda: objective.loss_and_grad(next_batch()), total,
                     (lr, betas, eps, clip_norm), callback, progress, "fit (Adam)",
                     _Validator(flow, val, patience) if val is not None else None, eval_every)


class _Validator:
    """Validation loss, best parameters and the early-stopping counter."""

    def __init__(self, flow, val, patience):
        self.flow, self.val, self.patience = flow, val, patience
        self.chunk = min(val.shape[0], 65536)
        self.objective = _MLEObjective(flow, self.chunk)
        self.losses = []
        self.best = math.inf
        self.best_params = flow.params.copy()
        self.best_iter = 0
        self.since_best = 0

    def __call__(self, iteration):
        """Record the validation loss; True when patience has run out."""
        value = _mean_loss_chunked(self.objective, self.val, self.chunk)
        self.losses.append(value)
        if value < self.best:
            self.best, self.best_iter, self.since_best = value, iteration, 0
            self.best_params[...] = self.flow.params
        else:
            self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience

    def restore(self):
        self.flow.set_params(self.best_params)


def _run_adam(flow, loss_and_grad, total, settings, callback, progress, desc,
              validator=None, eval_every=1):
    """The Adam loop shared by ``fit`` and ``fit_variational``."""
    xp = array_module(flow.device)
    adam = _Adam(flow.params, *settings, xp=xp)
    losses = np.empty(total)
    bar = _Progress(progress, total, desc)
    last_good = flow.params.copy()
    success, message, k = True, f"reached the maximum number of steps ({total})", 0
    if validator is not None:
        validator(0)
    try:
        while k < total:
            value, grad = loss_and_grad()
            if not (math.isfinite(value) and bool(xp.all(xp.isfinite(grad)))):
                flow.set_params(last_good)
                what = "loss" if not math.isfinite(value) else "gradient"
                success = False
                message = (f"the {what} was non-finite at the parameters after step {k}; "
                           f"restored those after step {max(k - 1, 0)}, the last with a "
                           f"finite loss")
                break
            last_good[...] = flow.params
            losses[k] = value
            flow.params[...] = adam.step(grad)
            k += 1
            extra = ""
            stop_early = False
            if validator is not None and (k % eval_every == 0 or k == total):
                stop_early = validator(k)
                extra = f" val={validator.losses[-1]:.5g}"
            bar.update(k, value, extra)
            if callback is not None and callback(k, value, flow) is True:
                message = f"stopped by the callback at step {k}"
                break
            if stop_early:
                message = (f"early stopping at step {k}: the validation loss did not improve "
                           f"for {validator.patience} evaluations")
                break
    finally:
        bar.close()
    return _finish(flow, losses[:k], k, success, message, validator)


def _finish(flow, losses, n_iter, success, message, validator):
    result = FitResult(params=None, losses=np.asarray(losses, dtype=np.float64), n_iter=n_iter,
                       success=success, message=message)
    if validator is not None:
        # The best validated parameters are finite and at least as good as any
        # later iterate, also when the run ended in a failure.
        validator.restore()
        result.val_losses = np.asarray(validator.losses)
        result.best_iter = validator.best_iter
        result.message += f"; restored the parameters of iteration {validator.best_iter} " \
                          f"(best validation loss {validator.best:.6g})"
    result.params = flow.params.copy()
    return result


# -- L-BFGS -----------------------------------------------------------------
def _run_lbfgs(flow, loss_and_grad, maxiter, options, callback, progress, desc, validator=None):
    """``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on
    ``loss_and_grad`` (evaluated at the flow's current parameters)."""
    from scipy.optimize import minimize

    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    opts = {"maxiter": maxiter, **(options or {})}
    # SciPy works on the host in float64: a flow on the GPU gets the
    # parameters through put and returns the gradient through to_host.
    xp = array_module(flow.device)
    dtype = flow.dtype

    def put(theta):
        flow.params[...] = xp.asarray(theta.astype(dtype, copy=False))

    best = {"value": math.inf, "theta": to_host(flow.params).astype(np.float64)}

    def fun(theta):
        put(theta)
        value, grad = loss_and_grad()
        grad = to_host(grad).astype(np.float64)
        if not (math.isfinite(value) and np.all(np.isfinite(grad))):
            # An infinite value makes the line search back off.
            return math.inf, np.zeros_like(grad)
        if value < best["value"]:
            best["value"] = value
            best["theta"][...] = theta
        return value, grad

    losses = []
    bar = _Progress(progress, opts["maxiter"], desc)
    stop = {"why": None}
    if validator is not None:
        put(best["theta"])
        validator(0)

    def on_iteration(intermediate_result):
        k = len(losses) + 1
        losses.append(float(intermediate_result.fun))
        put(intermediate_result.x)
        extra = ""
        if validator is not None:
            if validator(k):
                stop["why"] = (f"early stopping at iteration {k}: the validation loss did not "
                               f"improve for {validator.patience} evaluations")
            extra = f" val={validator.losses[-1]:.5g}"
        bar.update(k, losses[-1], extra)
        if stop["why"] is None and callback is not None and callback(k, losses[-1], flow) is True:
            stop["why"] = f"stopped by the callback at iteration {k}"
        if stop["why"] is not None:
            raise StopIteration

    try:
        res = minimize(fun, best["theta"].copy(), jac=True, method="L-BFGS-B",
                       callback=on_iteration, options=opts)
    finally:
        bar.close()
    put(res.x if math.isfinite(res.fun) else best["theta"])
    if stop["why"] is not None:
        success, message = True, stop["why"]
    else:
        message = str(res.message)
        # Reaching maxiter is a normal budget stop, as for Adam.
        success = bool(res.success) or res.status == 1
    if not math.isfinite(res.fun):
        success, message = False, f"the loss was non-finite ({message}); kept the best parameters seen"
    return _finish(flow, losses, len(losses), success, message, validator)


# -- variational inference --------------------------------------------------
def _call_log_density(log_density, x, dim, device):
    try:
        out = log_density(x)
        values, grads = out
    except (TypeError, ValueError) as exc:
        if "unpack" in str(exc):
            raise TypeError("log_density(x) must return a pair (values, gradients)") from None
        raise
    values = array_module(device).asarray(
        as_real_array(values, "log_density(x)'s values", np.float64, device), dtype=np.float64)
    grads = as_real_array(grads, "log_density(x)'s gradients", x.dtype, device)
    n = x.shape[0]
    if values.shape != (n,):
        raise ValueError(f"log_density(x) must return values of shape ({n},) for x of shape "
                         f"{x.shape}, got {values.shape}")
    if grads.shape != (n, dim):
        raise ValueError(f"log_density(x) must return gradients of shape ({n}, {dim}) for x of "
                         f"shape {x.shape}, got {grads.shape}")
    return values, grads


class _KLObjective:
    """Monte-Carlo reverse KL ``mean(log q(x) - log p~(x))`` on draws ``z``."""

    def __init__(self, flow, log_density, n):
        self.flow, self.log_density = flow, log_density
        self.xp = xp = array_module(flow.device)
        dt, d = flow.dtype, flow.dim
        self._x = xp.empty((n, d), dt)
        self._ld = xp.empty(n, dt)
        self._gx = xp.empty((n, d), dt)
        self._gz = xp.empty((n, d), dt)
        self.grad = xp.empty(flow.num_params, dt)

    def draws(self, z):
        """Base draws ``z``, made on the host (a seed gives the same draws on
        any device), on the flow's device."""
        return z if self.xp is np else self.xp.asarray(z)

    def terms(self, z):
        """``log q(x) - log p~(x)`` per row, with ``x = f(z)``, and the gradients of
        ``log p~``."""
        m = z.shape[0]
        x, ld = self.flow.forward(z, out=(self._x[:m], self._ld[:m]))
        lp, glp = _call_log_density(self.log_density, x, self.flow.dim, self.flow.device)
        log_q = self.flow.base_log_prob(z).astype(np.float64) - ld
        return log_q - lp, glp

    def loss_and_grad(self, z):
        m = z.shape[0]
        diff, glp = self.terms(z)
        value = float(self.xp.mean(diff))
        gx = self.xp.multiply(glp, -1.0 / m, out=self._gx[:m], casting="unsafe")
        self.flow.backward(z, gx, -1.0 / m, out=(self._gz[:m], self.grad))
        return value, self.grad


def fit_variational(flow, log_density, n_samples=256, method="adam", *, steps=None,
                    learning_rate=1e-2, betas=(0.9, 0.999), eps=1e-8, clip_norm=None,
                    rng=None, options=None, n_elbo_samples=4096, callback=None,
                    progress=None):
    """Fit a flow ``q`` to an unnormalised density ``p~`` by minimising the reverse KL.

    Minimises the Monte-Carlo estimate of ``E_q[log q(x) - log p~(x)]``
    (``= KL(q || p) - log Z``, so ``-loss`` is an evidence lower bound)
    with the reparameterisation gradient: ``z ~ N(0, I)``,
    ``x, l = f(z)``, ``log q(x) = log N(z) - l``, and
    ``dL/dtheta = flow.backward(z, -grad log p~(x)/n, -1/n)[1]``.
    The flow's parameters are updated in place.

    Parameters
    ----------
    flow : Flow
        On the CPU or the GPU.
    log_density : callable
        ``log_density(x)`` for ``x`` of shape ``(n, dim)`` returns
        ``(values, gradients)`` of shapes ``(n,)`` and ``(n, dim)``:
        ``log p~(x)`` up to a constant and its gradient with respect to ``x``.
        For a flow on the GPU, ``x`` and both results are CuPy arrays.
    n_samples : int
        Draws per loss estimate.
    method : {"adam", "lbfgs"}
        ``"adam"`` draws fresh ``z`` at every step (stochastic gradients);
        ``"lbfgs"`` fixes one set of draws and minimises that deterministic
        objective with ``scipy.optimize.minimize(method="L-BFGS-B")``.
    steps : int, optional
        Maximum number of iterations (default 1000 for Adam, 500 for L-BFGS).
    learning_rate, betas, eps, clip_norm :
        Adam settings, as in ``fit``.
    rng : None, int or numpy.random.Generator
        The draws of ``z`` (made on the host, so a seed gives the same draws
        on any device).
    options : dict, optional
        L-BFGS: passed to ``scipy.optimize.minimize``.
    n_elbo_samples : int
        Size of the fresh sample for the final ELBO estimate (0 skips it).
    callback : callable, optional
        ``callback(iteration, loss, flow)``; returning True stops.
    progress : bool, optional
        As in ``fit``.

    Returns
    -------
    FitResult
        With ``elbo = mean(log p~(x) - log q(x))`` on ``n_elbo_samples``
        fresh draws and ``elbo_stderr``, its standard error.  When ``p~`` is
        normalised, ``-elbo`` estimates ``KL(q || p)``.
    """
    _check_flow(flow)
    method = _check_method(method)
    if not callable(log_density):
        raise TypeError(f"log_density must be callable, got {type(log_density).__name__}")
    n = check_positive_int(n_samples, "n_samples")
    n_elbo = check_positive_int(n_elbo_samples, "n_elbo_samples", minimum=0)
    callback = _check_callback(callback)
    rng = check_rng(rng)
    objective = _KLObjective(flow, log_density, n)
    dt = flow.dtype
    if method == "lbfgs":
        z = objective.draws(rng.standard_normal((n, flow.dim), dtype=dt))
        result = _run_lbfgs(flow, lambda: objective.loss_and_grad(z),
                            _resolve_steps(steps, None, 1, 500), options, callback, progress,
                            "fit_variational (L-BFGS)")
    else:
        if options is not None:
            raise ValueError("options applies to method='lbfgs'")
        settings = _adam_settings(learning_rate, betas, eps, clip_norm)
        z = np.empty((n, flow.dim), dt)

        def draw_and_eval():
            rng.standard_normal(out=z, dtype=dt)
            return objective.loss_and_grad(objective.draws(z))

        result = _run_adam(flow, draw_and_eval, _resolve_steps(steps, None, 1, 1000), settings,
                           callback, progress, "fit_variational (Adam)")
    if n_elbo:
        result.elbo, result.elbo_stderr = elbo(flow, log_density, n_elbo, rng=rng)
    return result


def elbo(flow, log_density, n_samples=4096, rng=None):
    """Monte-Carlo ELBO ``mean(log p~(x) - log q(x))``, ``x ~ q``, and its standard error.

    Returns
    -------
    elbo : float
    stderr : float
        ``std(terms) / sqrt(n_samples)``.
    """
    _check_flow(flow)
    n = check_positive_int(n_samples, "n_samples")
    objective = _KLObjective(flow, log_density, n)
    z = objective.draws(check_rng(rng).standard_normal((n, flow.dim), dtype=flow.dtype))
    diff, _ = objective.terms(z)
    se = float(objective.xp.std(diff, ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return -float(objective.xp.mean(diff)), se
