"""The GPU engine of pyflowcore (CuPy + CUDA kernels compiled at run time).

Importing this package needs CuPy; ``pyflowcore`` itself imports it only when
a flow is moved to ``"cuda"`` (see ``pyflowcore._device``), so everything else
works without CuPy or a GPU.

A flow on the GPU keeps its class and its public methods (``Flow`` in
``flows/_base.py`` validates CuPy inputs and allocates CuPy outputs); only its
four kernels change: they are those of an *engine* from ``engine_for``, one
driver per flow family:

========================  ==============================  ====================
flow                      driver                          CUDA source
========================  ==============================  ====================
ElementwiseScale, Shift,  ``chain.RowwiseRun`` (a run     ``csrc/chain.cu``
Planar, Radial            of one)
Chain                     ``chain.ChainEngine`` (fused    ``csrc/chain.cu`` and
                          row-wise runs, other layers'    the layers' sources
                          engines)
RealNVP                   ``realnvp.RealNVPEngine``       ``csrc/realnvp.cu`` +
                                                          cuBLAS
CholeskyProduct           ``cholesky.CholeskyEngine``     ``csrc/cholesky.cu``
========================  ==============================  ====================
"""

from pyflowcore.cuda._module import csrc_dir, kernel  # noqa: F401


def engine_for(flow):
    """The CUDA engine running ``flow``'s kernels (reads ``flow._params`` at each call)."""
    from pyflowcore.flows.chain import Chain
    from pyflowcore.flows.cholesky import CholeskyProduct
    from pyflowcore.flows.realnvp import RealNVP
    from pyflowcore.cuda.chain import ChainEngine, RowwiseRun

    if isinstance(flow, Chain):
        return ChainEngine(flow, engine_for)
    if getattr(flow, "_row_kind", None) is not None:
        return RowwiseRun([flow], flow)
    if isinstance(flow, RealNVP):
        from pyflowcore.cuda.realnvp import RealNVPEngine
        return RealNVPEngine(flow)
    if isinstance(flow, CholeskyProduct):
        from pyflowcore.cuda.cholesky import CholeskyEngine
        return CholeskyEngine(flow)
    raise NotImplementedError(f"{type(flow).__name__} has no CUDA engine")
