"""The ADFNet building blocks as drop-in ``nn.Module``s, one family per file."""

from .dcb import CB, DCB
from ._init import KERNEL_INITS
from .dconv import DConv
from .deform import ModulatedDeformConv2d
from .mdcb import MCB, MDCB
from .mfi import MFI
from .sekg import SEKG

__all__ = ["SEKG", "DConv", "DCB", "CB", "MDCB", "MCB", "MFI", "ModulatedDeformConv2d", "KERNEL_INITS"]
