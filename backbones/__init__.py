"""Denoising backbones (DnCNN, RDN, ADFNet) built by name.

>>> import torch, backbones
>>> "adfnet" in backbones.available()
True
>>> backbones.build("rdn", num_blocks=2, channels=8)(torch.rand(1, 3, 9, 7)).shape
torch.Size([1, 3, 9, 7])
"""

from . import adfnet, dncnn, rdn  # noqa: F401  (importing registers the models)
from ._padding import pad_to_multiple
from .adfnet import ADFNet, load_official_state_dict
from .dncnn import DnCNN
from .rdn import RDB, RDN
from .registry import available, build, register

__all__ = [
    "build",
    "available",
    "register",
    "DnCNN",
    "RDN",
    "RDB",
    "ADFNet",
    "load_official_state_dict",
    "pad_to_multiple",
    "adfnet",
    "dncnn",
    "rdn",
]
