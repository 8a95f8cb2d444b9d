"""Device discovery and moving flows between CPU and GPU."""

from pyflowcore._validation import to_host


def cuda_available():
    """Whether CuPy is importable and sees at least one CUDA device.

    Returns
    -------
    bool
    """
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError, a broken driver...
        return False


def move_flow(flow, device):
    """Move ``flow`` to ``device`` in place and return it.

    The parameter vector is copied to the device (a CuPy array on ``"cuda"``,
    a NumPy array on ``"cpu"``) and the flow's kernels switch to that
    device's engine.  In a ``Chain`` every layer is moved with it and its
    ``params`` stay views into the chain's vector.
    """
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError("device 'cuda' requested but no usable GPU was found "
                               "(install CuPy, e.g. pip install 'pyflowcore[gpu]', and check the driver)")
        import cupy
        from pyflowcore.cuda import engine_for
        _rebind(flow, cupy.asarray(flow._params), "cuda")
        for layer in _layers(flow):
            layer._gpu = engine_for(layer)
        if _layers(flow):
            from pyflowcore.cuda.chain import ChainEngine
            flow._gpu = ChainEngine(flow, lambda layer: layer._gpu)  # reuse the layers' engines
        else:
            flow._gpu = engine_for(flow)
    else:
        _rebind(flow, to_host(flow._params), "cpu")
        for f in (flow, *_layers(flow)):
            f._gpu = None
        if _layers(flow):
            flow._build_units()  # the fused CPU runs hold views of the parameters
    return flow


def _layers(flow):
    from pyflowcore.flows.chain import Chain
    return flow.layers if isinstance(flow, Chain) else ()


def _rebind(flow, params, device):
    flow._params = params
    flow.device = device
    for layer, sl in zip(_layers(flow), getattr(flow, "_slices", ())):
        layer._params = params[sl]
        layer.device = device
