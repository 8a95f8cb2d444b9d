"""The flow classes of pyflowcore."""

from pyflowcore.flows._base import Flow
from pyflowcore.flows.chain import Chain
from pyflowcore.flows.cholesky import CholeskyProduct
from pyflowcore.flows.elementwise import ElementwiseScale, Shift
from pyflowcore.flows.planar import Planar
from pyflowcore.flows.radial import Radial
from pyflowcore.flows.realnvp import RealNVP

__all__ = ["Flow", "Chain", "CholeskyProduct", "ElementwiseScale", "Shift", "Radial", "Planar", "RealNVP"]
