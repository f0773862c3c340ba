"""dynfilter: the adaptive dynamic filtering blocks of ADFNet (AAAI 2023) as drop-in PyTorch modules.

>>> import torch, dynfilter
>>> dynfilter.DConv(16)(torch.randn(1, 16, 8, 8)).shape
torch.Size([1, 16, 8, 8])
"""

from . import complexity, functional, surgery
from .complexity import measure_latency, profile
from .functional import REFERENCE_IMPLS, dynamic_filter, modulated_deform_conv2d, set_dynamic_filter_impl, set_impls
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
    "set_dynamic_filter_impl",
    "modulated_deform_conv2d",
    "set_impls",
    "REFERENCE_IMPLS",
    "profile",
    "measure_latency",
    "complexity",
    "functional",
    "surgery",
    "__version__",
]
