"""Initialisations of the kernel generators: the published default, or a pass-through start."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["KERNEL_INITS", "check_kernel_init", "init_kernel_generator"]

#: ``"published"``: PyTorch's default init of the 1×1 kernel conv, as in the ADFNet code.
#: ``"identity"``: zero weights and a bias of 1 on each channel's centre tap, so every predicted kernel
#: is the unit impulse and the dynamic filter starts as a pass-through; it learns from the first step
#: because the gradient of the zero weights is not zero.
KERNEL_INITS = ("published", "identity")


def check_kernel_init(init: str) -> str:
    """Return ``init`` if it names a known kernel-generator initialisation, else raise ``ValueError``."""
    if init not in KERNEL_INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {list(KERNEL_INITS)}")
    return init


@torch.no_grad()
def init_kernel_generator(conv: nn.Conv2d, kernel_size: int, init: str) -> None:
    """Apply ``init`` to a freshly initialised 1×1 conv that predicts ``C·k²`` kernel maps.

    ``"published"`` leaves PyTorch's default init as it is (so building a block consumes the random
    stream exactly as the published code does); ``"identity"`` overwrites it.
    """
    check_kernel_init(init)
    if init == "identity":
        taps = kernel_size * kernel_size
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias.view(-1, taps)[:, taps // 2] = 1.0
