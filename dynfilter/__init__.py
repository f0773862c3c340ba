"""dynfilter: the adaptive dynamic filtering blocks of ADFNet (AAAI 2023) as drop-in PyTorch modules.

>>> import torch, dynfilter
>>> dynfilter.DConv(16)(torch.randn(1, 16, 8, 8)).shape
torch.Size([1, 16, 8, 8])
"""

from . import functional
from .functional import dynamic_filter
from .layers import CB, DCB, MCB, MDCB, MFI, SEKG, DConv, ModulatedDeformConv2d

__version__ = "0.1.0"

__all__ = [
    "SEKG",
    "DConv",
    "DCB",
    "CB",
    "MDCB",
    "MCB",
    "MFI",
    "ModulatedDeformConv2d",
    "dynamic_filter",
    "functional",
    "__version__",
]
