"""The ``Flow`` base class: validation, batching and the distribution methods.

A concrete flow supplies four kernels working on validated, C-contiguous
``(N, dim)`` arrays of its dtype, writing into preallocated outputs:

``_forward(z, x, log_det)``
``_inverse(x, z, log_det)``
``_backward(z, grad_x, grad_log_det, grad_z, grad_params)``
``_inverse_backward(x, grad_z, grad_log_det, grad_x, grad_params)``

and ``_config()``, the constructor arguments that rebuild it (used by
``pyflowcore.save``); optionally, on the CPU, a fused
``_quadratic_vjp(inverse, v, sq_weight, log_det_weight, grad_in, grad_params)``
returning ``(sum |y|^2, sum ld)`` (see ``quadratic_loss_and_grad``).  On
the GPU (``to("cuda")``) the same four calls go to the flow's CUDA engine
(``pyflowcore.cuda``) with CuPy arrays.  Everything a user calls --
conversion of array-likes, single points, ``out=`` arrays, the
standard-normal base distribution -- lives here once.
"""

import math

import numpy as np

from pyflowcore._validation import (
    array_module, as_cotangent, as_grad_log_det, as_points, as_real_array, check_dtype,
    check_dim, check_finite_float, check_out, check_positive_int, check_rng)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Flow:
    """A bijection ``x = f(z)`` of ``R^dim`` with a tractable log-determinant.

    Parameters
    ----------
    dim : int
        Dimension of the points.
    num_params : int
        Length of the flat parameter vector.
    dtype : {"float64", "float32"}
        Floating type of the parameters and of every result.

    Attributes
    ----------
    dim : int
    dtype : numpy.dtype
    num_params : int
    params : ndarray of shape (num_params,)
        The raw parameters, writable in place (see ``set_params``).
    device : str
        ``"cpu"`` or ``"cuda"``.

    Notes
    -----
    With ``z ~ N(0, I)`` and ``x = f(z)``, the density of ``x`` is

    ``log p(x) = -||z||^2 / 2 - dim/2 log(2 pi) - log|det df/dz|``.

    Every method accepts a batch ``(N, dim)`` or one point ``(dim,)`` and
    returns results of the matching shape.  Methods are safe to call from
    several threads at once; the kernels release the GIL, except a row-wise
    flow's ``forward`` and ``inverse`` on fewer than 128 rows, which, as
    NumPy's small loops, take less time than releasing it would.
    """

    device = "cpu"
    _gpu = None  # the CUDA engine running the kernels while on "cuda"
    # A C-level path for inputs already in the kernels' form, set by the
    # row-wise flows and chains of them: (params, points, out) -> results,
    # or None for any other input, which then takes the generic path here.
    _forward_fast = None
    _inverse_fast = None

    def __init__(self, dim, num_params, dtype="float64"):
        self.dim = check_dim(dim)
        self.dtype = check_dtype(dtype)
        self._params = np.zeros(num_params, dtype=self.dtype)

    # -- parameters ---------------------------------------------------------
    @property
    def num_params(self):
        """Length of the flat parameter vector."""
        return self._params.shape[0]

    @property
    def params(self):
        """The flat parameter vector (a writable view; in a ``Chain``, a view
        into the chain's vector)."""
        return self._params

    @params.setter
    def params(self, theta):
        self.set_params(theta)

    def set_params(self, theta):
        """Copy ``theta`` (shape ``(num_params,)``) into the parameters, in place.

        Returns
        -------
        self
        """
        arr = as_real_array(theta, "theta", self.dtype, self.device)
        if arr.shape != (self.num_params,):
            raise ValueError(f"theta must have shape ({self.num_params},), got shape {arr.shape}")
        self._params[...] = arr
        return self

    # -- the four maps ------------------------------------------------------
    def forward(self, z, *, out=None):
        """Map base points to ``x = f(z)``.

        Parameters
        ----------
        z : array_like of shape (N, dim) or (dim,)
        out : tuple of ndarray (x, log_det), optional
            Preallocated C-contiguous, writable results of the flow's dtype
            and the shapes below; they are filled and returned.

        Returns
        -------
        x : ndarray of shape (N, dim) or (dim,)
        log_det : ndarray of shape (N,) or ()
            ``log|det df/dz|`` at ``z``.
        """
        if self._forward_fast is not None and self._gpu is None:
            res = self._forward_fast(self._params, z, out)
            if res is not None:
                return res
        z, single = as_points(z, "z", self.dim, self.dtype, self.device)
        x, log_det = self._outputs(out, single, z.shape[0])
        if out is not None:
            z = separate(z, (x, log_det), alias=x)
        self._kernels()._forward(z, x, log_det)
        return self._result(single, x, log_det, out)

    def inverse(self, x, *, out=None):
        """Map points back to the base, ``z = f^{-1}(x)``.

        Parameters
        ----------
        x : array_like of shape (N, dim) or (dim,)
        out : tuple of ndarray (z, log_det_inv), optional

        Returns
        -------
        z : ndarray of shape (N, dim) or (dim,)
        log_det_inv : ndarray of shape (N,) or ()
            ``log|det df^{-1}/dx| = -log|det df/dz|`` at ``z = f^{-1}(x)``.
        """
        if self._inverse_fast is not None and self._gpu is None:
            res = self._inverse_fast(self._params, x, out)
            if res is not None:
                return res
        x, single = as_points(x, "x", self.dim, self.dtype, self.device)
        z, log_det = self._outputs(out, single, x.shape[0])
        if out is not None:
            x = separate(x, (z, log_det), alias=z)
        self._kernels()._inverse(x, z, log_det)
        return self._result(single, z, log_det, out)

    def backward(self, z, grad_x, grad_log_det, *, out=None):
        """Vector-Jacobian product of ``z -> (x, log_det)``.

        For a scalar loss ``L(x, log_det)``, given ``grad_x = dL/dx`` and
        ``grad_log_det = dL/dlog_det``, returns ``dL/dz`` and ``dL/dparams``.

        Parameters
        ----------
        z : array_like of shape (N, dim) or (dim,)
        grad_x : array_like of the shape of ``z``, or None (zero)
        grad_log_det : array_like of shape (N,) or a scalar, or None (zero)
        out : tuple of ndarray (grad_z, grad_params), optional

        Returns
        -------
        grad_z : ndarray of the shape of ``z``
        grad_params : ndarray of shape (num_params,)
            Summed over the batch.
        """
        z, single = as_points(z, "z", self.dim, self.dtype, self.device)
        grad_x = as_cotangent(grad_x, "grad_x", z.shape, self.dtype, self.device)
        grad_log_det = as_grad_log_det(grad_log_det, z.shape[0], self.dtype, single, self.device)
        grad_z, grad_params = self._grad_outputs(out, single, z.shape[0])
        if out is not None:
            outs = (grad_z, grad_params)
            z, grad_log_det = separate(z, outs), separate(grad_log_det, outs)
            grad_x = separate(grad_x, outs, alias=grad_z)
        self._kernels()._backward(z, grad_x, grad_log_det, grad_z, grad_params)
        return self._grad_result(single, grad_z, grad_params, out)

    def inverse_backward(self, x, grad_z, grad_log_det, *, out=None):
        """Vector-Jacobian product of ``x -> (z, log_det_inv)``.

        Parameters
        ----------
        x : array_like of shape (N, dim) or (dim,)
        grad_z : array_like of the shape of ``x``, or None (zero)
        grad_log_det : array_like of shape (N,) or a scalar, or None (zero)
            Gradient with respect to ``log_det_inv``.
        out : tuple of ndarray (grad_x, grad_params), optional

        Returns
        -------
        grad_x : ndarray of the shape of ``x``
        grad_params : ndarray of shape (num_params,)
            Summed over the batch.
        """
        x, single = as_points(x, "x", self.dim, self.dtype, self.device)
        grad_z = as_cotangent(grad_z, "grad_z", x.shape, self.dtype, self.device)
        grad_log_det = as_grad_log_det(grad_log_det, x.shape[0], self.dtype, single, self.device)
        grad_x, grad_params = self._grad_outputs(out, single, x.shape[0])
        if out is not None:
            outs = (grad_x, grad_params)
            x, grad_log_det = separate(x, outs), separate(grad_log_det, outs)
            grad_z = separate(grad_z, outs, alias=grad_x)
        self._kernels()._inverse_backward(x, grad_z, grad_log_det, grad_x, grad_params)
        return self._grad_result(single, grad_x, grad_params, out)

    def quadratic_loss_and_grad(self, v, sq_weight=1.0, log_det_weight=1.0, *, inverse=False,
                                out=None):
        """A quadratic loss of the flow's output and its gradients, in one pass.

        ``L = sum_r (sq_weight / 2 ||y_r||^2 + log_det_weight * ld_r)``

        where ``(y, ld) = forward(v)``, or ``inverse(v)`` with ``inverse=True``.
        This is ``backward`` (or ``inverse_backward``) with the cotangents
        ``grad_y = sq_weight * y`` and ``grad_log_det = log_det_weight``, which
        depend on the output; Real NVP and runs of row-wise flows form them
        from the output that their VJP recomputes anyway, so the loss and its
        gradient cost one pass instead of a map and a VJP.  Other flows (and
        every flow on the GPU) compose the two.

        The maximum-likelihood loss of data ``x`` is the case
        ``inverse=True, sq_weight=1/N, log_det_weight=-1/N`` plus
        ``dim/2 log(2 pi)``: ``-mean(log p(x))``.

        Parameters
        ----------
        v : array_like of shape (N, dim) or (dim,)
            Base points ``z`` (or data ``x`` with ``inverse=True``).
        sq_weight, log_det_weight : float
        inverse : bool, default False
        out : tuple of ndarray (grad_v, grad_params), optional

        Returns
        -------
        loss : float
            ``L``, accumulated in float64.
        grad_v : ndarray of the shape of ``v``
            ``dL/dv``.
        grad_params : ndarray of shape (num_params,)
            ``dL/dparams``.
        """
        name = "x" if inverse else "z"
        v, single = as_points(v, name, self.dim, self.dtype, self.device)
        sq_weight = check_finite_float(sq_weight, "sq_weight")
        log_det_weight = check_finite_float(log_det_weight, "log_det_weight")
        grad_v, grad_params = self._grad_outputs(out, single, v.shape[0])
        if out is not None:
            v = separate(v, (grad_v, grad_params))
        sum_sq, sum_ld = quadratic_vjp(self._kernels(), bool(inverse), v, sq_weight,
                                       log_det_weight, grad_v, grad_params)
        loss = 0.5 * sq_weight * sum_sq + log_det_weight * sum_ld
        return (loss,) + self._grad_result(single, grad_v, grad_params, out)

    # -- the distribution ---------------------------------------------------
    def base_log_prob(self, z):
        """Standard-normal log-density ``-||z||^2/2 - dim/2 log(2 pi)`` of base points.

        Parameters
        ----------
        z : array_like of shape (N, dim) or (dim,)

        Returns
        -------
        ndarray of shape (N,) or ()
        """
        z, single = as_points(z, "z", self.dim, self.dtype, self.device)
        xp = array_module(self.device)
        log_p = -0.5 * xp.einsum("ij,ij->i", z, z) - self.dim * self.dtype.type(_HALF_LOG_2PI)
        return log_p.reshape(()) if single else log_p

    def log_prob(self, x):
        """Log-density of ``x`` when ``z ~ N(0, I_dim)`` and ``x = f(z)``.

        ``log p(x) = log N(f^{-1}(x); 0, I) + log|det df^{-1}/dx|``.

        Returns
        -------
        ndarray of shape (N,) or ()
        """
        z, log_det_inv = self.inverse(x)
        return self.base_log_prob(z) + log_det_inv

    def sample(self, n, rng=None):
        """Draw ``n`` points ``x = f(z)``, ``z ~ N(0, I)``.

        Parameters
        ----------
        n : int
        rng : None, int or numpy.random.Generator

        Returns
        -------
        ndarray of shape (n, dim)
        """
        return self.sample_and_log_prob(n, rng)[0]

    def sample_and_log_prob(self, n, rng=None):
        """Draw ``n`` points and their log-density from one forward pass.

        ``log p(x) = log N(z; 0, I) - log|det df/dz|``; no inverse is needed.

        Returns
        -------
        x : ndarray of shape (n, dim)
        log_prob : ndarray of shape (n,)
        """
        n = check_positive_int(n, "n", minimum=0)
        z = check_rng(rng).standard_normal((n, self.dim), dtype=self.dtype)
        if self.device != "cpu":
            # Drawn on the host, so that a seed gives the same points on every device.
            z = array_module(self.device).asarray(z)
        x, log_det = self.forward(z)
        return x, self.base_log_prob(z) - log_det

    # -- devices and persistence -------------------------------------------
    def to(self, device):
        """The flow with its parameters on ``device`` (``"cpu"`` or ``"cuda"``).

        The flow is moved in place and returned (a ``Chain`` moves with its
        layers).  On ``"cuda"`` every method takes and returns CuPy arrays
        and runs the CUDA kernels; a NumPy array raises ``TypeError``.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        from pyflowcore._device import move_flow
        return move_flow(self, device)

    def _config(self):
        """Constructor keyword arguments that rebuild this flow."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    # -- helpers ------------------------------------------------------------
    def _kernels(self):
        """What runs the four maps: the flow itself, or its CUDA engine."""
        return self if self._gpu is None else self._gpu

    # The arrays the kernels write: fresh ones, or the out= arrays (for one
    # point as rows), except that an out= array that may share memory with
    # the parameters, which the kernels read while they write (a planar
    # layer's VJP reads w while it sums dL/dw), is replaced by a fresh one;
    # _result and _grad_result copy it in.
    def _outputs(self, out, single, n):
        return self._out_arrays(out, single, [(n, self.dim), (n,)], [(self.dim,), ()])

    def _grad_outputs(self, out, single, n):
        return self._out_arrays(out, single, [(n, self.dim), (self.num_params,)],
                                [(self.dim,), (self.num_params,)])

    def _out_arrays(self, out, single, shapes, single_shapes):
        """``shapes``: the kernels' arrays (``n`` = 1 for one point, whose out=
        arrays have ``single_shapes`` and are viewed in ``shapes``)."""
        if out is None:
            return check_out(out, shapes, self.dtype, self.device)
        out = check_out(out, single_shapes if single else shapes, self.dtype, self.device)
        xp = array_module(self.device)
        return tuple(xp.empty_like(w) if xp.may_share_memory(w, self._params) else w
                     for w in (o.reshape(shape) for o, shape in zip(out, shapes)))

    @staticmethod
    def _result(single, points, log_det, out):
        # The out= arrays themselves where given (for one point, points and
        # log_det are views into them, or fresh arrays: _out_arrays), else the
        # row of one point.
        if out is not None:
            return filled(out, (points, log_det))
        if single:
            return points[0], log_det.reshape(())
        return points, log_det

    @staticmethod
    def _grad_result(single, grad_points, grad_params, out):
        if out is not None:
            return filled(out, (grad_points, grad_params))
        return (grad_points[0] if single else grad_points), grad_params


def separate(a, outs, alias=None):
    """``a``, or a copy of it where it may share memory with one of the
    ``out=`` arrays ``outs``, which the kernels could then write before they
    have read ``a``.  ``alias``, one of ``outs``, may be ``a`` itself, element
    for element, on the CPU: the CPU kernels read each row, or block of
    rows, of that input before they write it (the in-place case of
    ``out=``); any other overlap, e.g. a shifted view, is copied.
    """
    on_cpu = isinstance(a, np.ndarray)
    may_share = np.may_share_memory if on_cpu else array_module("cuda").may_share_memory
    for o in outs:
        if may_share(a, o) and not (on_cpu and o is alias and same_elements(a, o)):
            return a.copy()
    return a


def filled(out, written):
    """The ``out=`` arrays as a tuple, each filled from the array the kernels
    wrote for it where that was a fresh one (``Flow._out_arrays``) rather
    than the array itself or a view into it."""
    for o, w in zip(out, written):
        xp = np if isinstance(o, np.ndarray) else array_module("cuda")
        if not xp.may_share_memory(o, w):
            o[...] = w.reshape(o.shape)
    return tuple(out)


def same_elements(a, b):
    """Whether NumPy arrays ``a`` and ``b`` view the same memory, element for element."""
    return (a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def quadratic_vjp(kernels, inverse, v, sq_weight, log_det_weight, grad_v, grad_params):
    """``Flow.quadratic_loss_and_grad`` on the kernel interface: the fused
    ``kernels._quadratic_vjp`` where there is one, else the map and then its
    VJP.

    Returns
    -------
    (sum_r ||y_r||^2, sum_r ld_r) as floats.
    """
    fused = getattr(kernels, "_quadratic_vjp", None)
    if fused is not None:
        return fused(inverse, v, sq_weight, log_det_weight, grad_v, grad_params)
    xp = np if isinstance(v, np.ndarray) else array_module("cuda")
    y, ld = xp.empty_like(v), xp.empty(v.shape[0], v.dtype)
    (kernels._inverse if inverse else kernels._forward)(v, y, ld)
    sum_sq = float(xp.sum(xp.square(y), dtype=xp.float64))
    sum_ld = float(xp.sum(ld, dtype=xp.float64))
    xp.multiply(y, v.dtype.type(sq_weight), out=y)
    ld.fill(v.dtype.type(log_det_weight))
    (kernels._inverse_backward if inverse else kernels._backward)(v, y, ld, grad_v, grad_params)
    return sum_sq, sum_ld


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    """Glorot-uniform draws, ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``.

    A parameter vector of length ``n`` counts as an ``(n, 1)`` matrix
    (``fan_in = n``, ``fan_out = 1``), as a column vector in a Keras-style
    model; a scalar as ``(1, 1)``.
    """
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)
