"""ADFNet's layout as data: the stages of each part, and the Table 4 configurations of their blocks.

One definition, read by ``backbones.adfnet`` (which builds and registers a model per configuration) and
by :func:`dynfilter.surgery.recipes.adfnet_ablation` (which rewrites any ADFNet into one). Every stage is
``Sequential(single-scale block, multi-scale block)``: CB or DCB, then MCB or MDCB.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .dcb import CB, DCB
from .mdcb import MCB, MDCB

__all__ = ["PARTS", "STAGES", "STATIC", "DYNAMIC", "Layout", "LAYOUTS", "LAYOUT_ALIASES"]

#: The stages of each part, in forward order.
PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("fe1", "fe2", "fe3"),
    "bottleneck": ("bottleneck",),
    "decoder": ("dfe3", "dfe2", "dfe1"),
}
#: Every stage, in forward order.
STAGES: tuple[str, ...] = tuple(stage for stages in PARTS.values() for stage in stages)

BlockPair = tuple[type[nn.Module], type[nn.Module]]
STATIC: BlockPair = (CB, MCB)
DYNAMIC: BlockPair = (DCB, MDCB)


@dataclass(frozen=True)
class Layout:
    """The blocks of each part of one ADFNet configuration, and whether multi-scale blocks keep MFI.

    Attributes:
        model (str): the backbone registered with this layout (``backbones.build(model)``).
        row (str): its row in the paper's Table 4.
    """

    model: str
    row: str
    encoder: BlockPair = STATIC
    bottleneck: BlockPair = STATIC
    decoder: BlockPair = DYNAMIC
    mfi: bool = True

    def blocks(self, part: str) -> BlockPair:
        """``(single-scale class, multi-scale class)`` of ``part`` (a key of :data:`PARTS`)."""
        return getattr(self, part)


#: The paper's Table 4, keyed by the name :func:`~dynfilter.surgery.recipes.adfnet_ablation` takes.
#: ``"all"`` makes the bottleneck dynamic too (every stage), although the published ADFNet keeps it static.
LAYOUTS: dict[str, Layout] = {
    "decoder": Layout("adfnet", "ADFNet (dynamic decoder)"),
    "wo_dcb": Layout("adfnet_wo_dcb", "w/o DCB", decoder=(CB, MDCB)),
    "wo_mdcb": Layout("adfnet_wo_mdcb", "w/o MDCB", decoder=(DCB, MCB)),
    "wo_dcb_mdcb": Layout("adfnet_wo_dcb_mdcb", "w/o DCB & MDCB", decoder=STATIC),
    "wo_mfi": Layout("adfnet_wo_mfi", "w/o MFI", mfi=False),
    "encoder": Layout("adfnet_dyn_encoder", "dynamic encoder", encoder=DYNAMIC, decoder=STATIC),
    "all": Layout("adfnet_dyn_all", "dynamic everywhere", encoder=DYNAMIC, bottleneck=DYNAMIC, decoder=DYNAMIC),
}
#: Other names accepted for a layout.
LAYOUT_ALIASES: dict[str, str] = {"dyn_encoder": "encoder", "dyn_all": "all", "default": "decoder"}
