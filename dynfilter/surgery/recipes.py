"""Recipes for the paper's surgery experiments; each returns a :class:`~dynfilter.surgery.plan.Plan`.

- :func:`dncnn_dconv`: "replacing one regular static 3×3 convolution with one DConv in the middle of the
  network" (DConv-enhanced DnCNN);
- :func:`rdn_mdcb`: "replacing one residual dense block with three MDCBs in the middle of the backbone"
  (MDCB-enhanced RDN);
- :func:`adfnet_ablation`: the Table 4 block ablations of ADFNet.

The recipes recognise structures by duck typing (class names and attributes), so dynfilter never
imports the backbones package.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..layers import CB, DCB, MCB, MDCB, MFI
from ..layers.adfnet_layout import LAYOUT_ALIASES, LAYOUTS, PARTS, STAGES
from . import replace, select
from .plan import Plan, plan, unwrap

__all__ = ["dncnn_dconv", "rdn_mdcb", "adfnet_ablation", "ADFNET_VARIANTS", "available", "get"]


def dncnn_dconv(
    model: nn.Module,
    position: select.Position = "middle",
    keep_conv: bool = False,
    preserve_output: bool = False,
    init: str = "identity",
    **block_kwargs: object,
) -> Plan:
    """Replace the middle eligible 3×3 stride-1 ``C→C`` ``nn.Conv2d`` with ``DConv(C)``.

    The DConv starts as the identity by default (``init="identity"``): in the budget study
    (docs/extension-study.md, "Gain versus training budget") it lost far less to the baseline at short
    budgets than the published initialisation and was level with it at the longest; pass
    ``init="published"`` for the ADFNet code's initialisation.

    Every ``nn.Conv2d`` of the model is a match; the first (image → C) and last (C → image) convs of a
    DnCNN cannot take a DConv and are skipped, so the position counts the ``depth − 2`` inner convs.
    ``"middle"`` is index ``(n − 1) // 2``: the 8th of 15 inner convs for depth 17 (``body.23``), the
    2nd of 3 for depth 5, and for an even count the earlier of the two middles (the 2nd of 4).

    Args:
        model (nn.Module): a DnCNN, or any model with eligible convs.
        position: which eligible conv(s); see :func:`~dynfilter.surgery.select.pick`.
        keep_conv (bool): keep the chosen conv and follow it with the DConv
            (:func:`~dynfilter.surgery.replace.conv_then_dconv`) instead of replacing it: the same
            conv is chosen, the model gets one layer more. For a trained model.
        preserve_output (bool): start the DConv as the identity so the output is unchanged; needs
            ``keep_conv=True`` (a swapped conv's function is lost), see :func:`~dynfilter.surgery.plan`.
        init (str): the DConv's kernel-generator initialisation, ``"identity"`` or ``"published"``.
        **block_kwargs: forwarded to :class:`~dynfilter.DConv`.

    >>> net = nn.Sequential(*(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)))
    >>> dncnn_dconv(net).names
    ['1']
    """
    swap = replace.to_dconv(init=init, **block_kwargs)
    if preserve_output and not keep_conv:
        raise ValueError(
            "preserve_output=True needs keep_conv=True: swapping the conv for a DConv drops the conv's function, "
            "keeping it and following it with an identity-started DConv keeps the output"
        )
    if not keep_conv:
        return plan(model, select.by_type(nn.Conv2d), swap, position=position, preserve_output=preserve_output)
    # The convs a DConv could replace, so that both forms put the DConv at the same place.
    swappable = select.where(lambda name, m: swap.reason(name, m) is None, "convs a DConv could replace")
    after = replace.conv_then_dconv(init=init, **block_kwargs)
    return plan(model, select.by_type(nn.Conv2d) & swappable, after, position=position, preserve_output=preserve_output)


def rdn_mdcb(
    model: nn.Module,
    n: int = 3,
    position: select.Position = "middle",
    mid_channels: int | None = None,
    offset_channels: int = 32,
    deform_groups: int = 8,
    **block_kwargs: object,
) -> Plan:
    """Replace the middle residual dense block with ``Sequential`` of ``n`` ``MDCB(C)``.

    A residual dense block is a module whose class is named ``RDB``, or an element of ``model.blocks``
    (``blocks.<i>``). Defaults follow the MDFB modules of the published RDN extension (spec §9):
    ``M = C`` (``mid_channels=None``), ``O = 32``, 8 deformable groups; note that those used an older
    block without SEKG, while this inserts the final MDCB. ``"middle"`` is index ``(n_blocks − 1) // 2``
    (the 2nd of 3 RDBs, the 2nd of 4).

    Args:
        model (nn.Module): an RDN, or any model with RDB-like ``C→C`` blocks.
        n (int): MDCBs per replaced block (3 in the paper).
        position: which block(s); see :func:`~dynfilter.surgery.select.pick`.
        mid_channels (int, optional): ``M``; ``C`` when omitted.
        offset_channels (int): ``O``, the DCN offset-feature width.
        deform_groups (int): must divide ``C``.
        **block_kwargs: forwarded to :class:`~dynfilter.MDCB`.

    >>> class Toy(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.blocks = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(3))
    >>> rdn_mdcb(Toy(), n=2).names
    ['blocks.1']
    """
    rdb_like = select.by_type("RDB") | select.by_regex(r"blocks\.\d+")
    stack = replace.to_mdcb_stack(
        n, mid_channels=mid_channels, offset_channels=offset_channels, deform_groups=deform_groups, **block_kwargs
    )
    return plan(model, rdb_like, stack, position=position)


#: The Table 4 configurations (:data:`dynfilter.layers.adfnet_layout.LAYOUTS`), by variant name.
ADFNET_VARIANTS = LAYOUTS


def _adfnet_stages(model: nn.Module) -> dict[str, nn.Module]:
    stages = {}
    problems = []
    for name in STAGES:
        stage = getattr(model, name, None)
        if not (
            isinstance(stage, nn.Sequential)
            and len(stage) == 2
            and isinstance(stage[0], (CB, DCB))
            and isinstance(stage[1], (MCB, MDCB))
        ):
            got = "missing" if stage is None else type(stage).__name__ if not isinstance(stage, nn.Sequential) else (
                "Sequential(" + ", ".join(type(m).__name__ for m in stage) + ")"
            )
            problems.append(f"{name}: {got}")
        stages[name] = stage
    if problems:
        raise ValueError(
            "adfnet_ablation expects an ADFNet-like model whose stages fe1–fe3, bottleneck and dfe3–dfe1 are "
            f"each Sequential(CB or DCB, MCB or MDCB); got {'; '.join(problems)}"
        )
    return stages


def adfnet_ablation(model: nn.Module, variant: str, **block_kwargs: object) -> Plan:
    """Rewrite an ADFNet into one of the paper's Table 4 configurations, whatever it is now.

    Variants (:data:`ADFNET_VARIANTS`, defined once in :mod:`dynfilter.layers.adfnet_layout`): ``"decoder"`` (the published ADFNet: static encoder and
    bottleneck, dynamic decoder), ``"wo_dcb"`` (decoder DCB → CB), ``"wo_mdcb"`` (decoder MDCB → MCB),
    ``"wo_dcb_mdcb"`` (both), ``"wo_mfi"`` (MFI → Identity in every multi-scale block), ``"encoder"``
    (dynamic encoder, static decoder; alias ``"dyn_encoder"``) and ``"all"`` (dynamic everywhere, the
    bottleneck included; alias ``"dyn_all"``). Only blocks that differ from the target are swapped, so
    ``"decoder"`` on a published ADFNet is an empty plan, and on a ``"wo_dcb"`` model swaps CB → DCB back.
    Weights carry as :func:`~dynfilter.surgery.replace.swap_block` describes.

    Args:
        model (nn.Module): an ADFNet (stages ``fe1``–``fe3``, ``bottleneck``, ``dfe3``–``dfe1``, each
            ``Sequential(single-scale block, multi-scale block)``).
        variant (str): a key of :data:`ADFNET_VARIANTS` or an alias.
        **block_kwargs: forwarded to every new block's constructor.

    >>> adfnet_ablation(nn.Identity(), "wo_dcb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: adfnet_ablation expects an ADFNet-like model ...; got fe1: missing; ...
    """
    key = LAYOUT_ALIASES.get(variant, variant)
    if key not in LAYOUTS:
        known = sorted(LAYOUTS) + sorted(LAYOUT_ALIASES)
        raise ValueError(f"unknown ADFNet variant {variant!r}; known variants: {', '.join(known)}")
    target = LAYOUTS[key]
    inner, notes = unwrap(model)
    stages = _adfnet_stages(inner)
    part_of = {stage: part for part, names in PARTS.items() for stage in names}

    swaps: dict[str, list[str]] = {"static": [], "dynamic": []}
    mfi_off, mfi_on = [], []
    for name, stage in stages.items():
        for i, want in enumerate(target.blocks(part_of[name])):
            if type(stage[i]) is not want:
                swaps["dynamic" if want.dynamic else "static"].append(f"{name}.{i}")
            elif i == 1 and isinstance(stage[1].mfi, MFI) != target.mfi:
                (mfi_on if target.mfi else mfi_off).append(f"{name}.1.mfi")

    result = Plan(inner, [], steps=[f"adfnet_ablation({variant!r})"], notes=notes)
    for to, names in swaps.items():
        if names:
            result += plan(inner, select.by_name(*names), replace.swap_block(to, target.mfi, **block_kwargs))
    if mfi_off:
        result += plan(inner, select.by_name(*mfi_off), replace.to_identity())
    if mfi_on:
        result += plan(inner, select.by_name(*mfi_on), replace.factory(lambda name, module: MFI(), "to_mfi()"))
    if not len(result):
        result.notes.append(f"the model already is the {key!r} configuration: nothing to change")
    return result


_RECIPES: dict[str, Callable[..., Plan]] = {
    "dncnn_dconv": dncnn_dconv,
    "rdn_mdcb": rdn_mdcb,
    "adfnet_ablation": adfnet_ablation,
}


def available() -> list[str]:
    """Recipe names, sorted.

    >>> available()
    ['adfnet_ablation', 'dncnn_dconv', 'rdn_mdcb']
    """
    return sorted(_RECIPES)


def get(name: str) -> Callable[..., Plan]:
    """The recipe function called ``name``.

    >>> get("dncnn_dconv") is dncnn_dconv
    True
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(available())}")
    return _RECIPES[name]
