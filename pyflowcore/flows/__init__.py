"""The flow classes of pyflowcore."""

from pyflowcore.flows._base import Flow
from pyflowcore.flows.chain import Chain
from pyflowcore.flows.elementwise import ElementwiseScale, Shift

__all__ = ["Flow", "Chain", "ElementwiseScale", "Shift"]
