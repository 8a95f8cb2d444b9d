"""Device discovery and moving flows between CPU and GPU."""


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
    """Return ``flow`` with its parameters on ``device``."""
    if device == "cuda" and not cuda_available():
        raise RuntimeError("device 'cuda' requested but no usable GPU was found "
                           "(install CuPy, e.g. pip install 'pyflowcore[gpu]', and check the driver)")
    raise NotImplementedError(f"moving {type(flow).__name__} to {device!r} is not implemented yet")
