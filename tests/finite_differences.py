"""Central finite differences: the independent reference for every gradient."""

import numpy as np


def scalar_loss_fd(fun, v, h=1e-6):
    """Central-difference gradient of a scalar function of an array (``v`` is
    perturbed in place and restored)."""
    grad = np.zeros_like(v)
    flat, gflat = v.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = fun(v)
        flat[k] = old - h
        down = fun(v)
        flat[k] = old
        gflat[k] = (up - down) / (2 * h)
    return grad


def vjp_and_finite_differences(flow, z, direction, rng, h_points=1e-6, h_params=1e-6):
    """A flow's VJP next to finite differences of the same scalar loss.

    For ``direction="backward"`` the map is ``z -> (x, log_det)`` at ``z``;
    for ``"inverse_backward"`` it is ``x -> (z, log_det_inv)`` at
    ``x = f(z)``.  The loss is ``sum(g_out * out) + sum(g_ld * log_det)`` with
    random cotangents drawn from ``rng``.

    Returns
    -------
    grad_v, grad_params : the flow's VJP
    fd_v, fd_params : central differences w.r.t. the points and every parameter
    """
    if direction == "backward":
        v, apply, vjp = z, flow.forward, flow.backward
    else:
        v, apply, vjp = flow.forward(z)[0], flow.inverse, flow.inverse_backward
    g_out = rng.standard_normal(v.shape)
    g_ld = rng.standard_normal(v.shape[0])

    def loss(v_):
        out, ld = apply(v_)
        return np.sum(g_out * out) + np.sum(g_ld * ld)

    grad_v, grad_params = vjp(v, g_out, g_ld)
    fd_v = scalar_loss_fd(loss, v.copy(), h_points)
    theta = flow.params.copy()

    def loss_params(t):
        flow.set_params(t)
        return loss(v)

    try:
        fd_params = scalar_loss_fd(loss_params, theta.copy(), h_params)
    finally:
        flow.set_params(theta)
    return grad_v, grad_params, fd_v, fd_params
