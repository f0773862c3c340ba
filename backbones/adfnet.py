"""ADFNet: a three-scale encoder-decoder with static encoder blocks and dynamic decoder blocks.

Shen, Zhao and Zhang, "Adaptive Dynamic Filtering Network for Image Denoising", AAAI 2023 (spec §1).
Every stage's blocks can be chosen (the paper's Table 4 ablations are registered variants), and
:func:`load_official_state_dict` loads the checkpoints of the published code (spec §10).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Sequence, Union

import torch
from torch import nn

from dynfilter import CB, DCB, MCB, MDCB, MFI
from dynfilter.layers.adfnet_layout import LAYOUTS, PARTS

from ._checks import check_features, check_positive
from ._padding import crop, pad_to_multiple
from .registry import instantiate, register

__all__ = [
    "ADFNet",
    "StageSpec",
    "stage_blocks",
    "IncompatibleKeys",
    "convert_official_state_dict",
    "load_official_state_dict",
]

#: A stage's blocks: ``"static"`` (CB + MCB), ``"dynamic"`` (DCB + MDCB), or a pair
#: ``(single-scale block, multi-scale block)`` of names (``"cb"``/``"dcb"``, ``"mcb"``/``"mdcb"``) or classes.
StageSpec = Union[str, Sequence[Union[str, type]]]

_SINGLE_SCALE: dict[str, type[nn.Module]] = {"cb": CB, "dcb": DCB}
_MULTI_SCALE: dict[str, type[nn.Module]] = {"mcb": MCB, "mdcb": MDCB}
_PRESETS: dict[str, tuple[str, str]] = {"static": ("cb", "mcb"), "dynamic": ("dcb", "mdcb")}


def _block_class(choice: str | type, table: dict[str, type[nn.Module]], part: str) -> type[nn.Module]:
    if isinstance(choice, type) and issubclass(choice, nn.Module):
        return choice
    if isinstance(choice, str) and choice.lower() in table:
        return table[choice.lower()]
    raise ValueError(f"{part}: expected one of {sorted(table)} or an nn.Module class, got {choice!r}")


def stage_blocks(spec: StageSpec, part: str = "stage") -> tuple[type[nn.Module], type[nn.Module]]:
    """Resolve a :data:`StageSpec` to ``(single-scale class, multi-scale class)``.

    A custom single-scale class is built as ``cls(C)``; a multi-scale one as
    ``cls(C, M, offset_channels=…, deform_groups=…, use_mfi=…)``, like :class:`~dynfilter.MCB`.

    >>> stage_blocks("dynamic")
    (<class 'dynfilter.layers.dcb.DCB'>, <class 'dynfilter.layers.mdcb.MDCB'>)
    >>> stage_blocks(("cb", "mdcb"))[1].__name__
    'MDCB'
    """
    if isinstance(spec, str):
        if spec.lower() not in _PRESETS:
            raise ValueError(f"{part}: expected 'static', 'dynamic' or a pair of block names, got {spec!r}")
        spec = _PRESETS[spec.lower()]
    if isinstance(spec, (str, type)) or not isinstance(spec, Sequence) or len(spec) != 2:
        raise ValueError(f"{part}: expected 'static', 'dynamic' or a pair (single-scale, multi-scale), got {spec!r}")
    return _block_class(spec[0], _SINGLE_SCALE, f"{part}[0]"), _block_class(spec[1], _MULTI_SCALE, f"{part}[1]")


def _four_ints(name: str, values: Sequence[int]) -> tuple[int, int, int, int]:
    """One positive int per scale, from ``(n1, n2, n3, n4)``-like input."""
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f"{name} must give 4 channel counts, one per scale, got {values!r}")
    check_positive(**{f"{name}[{i}]": v for i, v in enumerate(values)})
    return tuple(values)  # type: ignore[return-value]


class ADFNet(nn.Module):
    """Adaptive dynamic filtering network (spec §1).

    ``head`` conv3×3, then per scale ``s = 1, 2, 3`` an encoder stage ``fe_s`` and a stride-2 conv3×3 +
    LReLU(0.2) ``down_s``; a ``bottleneck`` stage; then per scale ``up_s`` (6×6 stride-2 transposed conv)
    plus the encoder's ``fe_s`` output (additive skip) and a decoder stage ``dfe_s``; ``tail`` conv3×3 plus
    the input (global residual). Every stage is ``nn.Sequential(single-scale block, multi-scale block)``:
    CB + MCB in the encoder and bottleneck, DCB + MDCB in the decoder by default.

    Sides need not be multiples of 8: ``forward`` reflect-pads the bottom and right to the next multiple
    of 8 and crops back, as the published colour test does (sides of 1–4 pixels are replicate-padded,
    which reflection cannot do). MFI and SEKG pool over the whole padded map, so padding is part of the
    result. :meth:`forward_aligned` runs the network without padding.

    Args:
        in_channels (int): image channels (3 colour or real noise, 1 grey); input and output.
        widths (Sequence[int]): ``(n1, n2, n3, n4)``, channels per scale; ``(32, 64, 128, 256)`` is ADFNet,
            ``(64, 128, 256, 512)`` ADFNet*.
        mid_channels (Sequence[int], optional): ``M`` of the multi-scale block per scale; defaults to
            ``(n1, n2, n3 / 2, n4 / 2)`` as published.
        encoder (StageSpec): blocks of ``fe1``–``fe3`` (default CB + MCB, the published layout,
            :data:`dynfilter.layers.adfnet_layout.LAYOUTS` ``["decoder"]``).
        bottleneck (StageSpec): blocks of ``bottleneck`` (CB + MCB).
        decoder (StageSpec): blocks of ``dfe3``–``dfe1`` (DCB + MDCB).
        use_mfi (bool): ``False`` drops MFI from every multi-scale block ("w/o MFI").
        offset_channels (int): width of the DCN offset feature (32).
        deform_groups (int): DCN deformable groups (8); must divide every width.

    >>> ADFNet(widths=(8, 8, 8, 8))(torch.rand(1, 3, 13, 10)).shape
    torch.Size([1, 3, 13, 10])

    The published sizes (spec §10), ADFNet and ADFNet*:

    >>> with torch.device("meta"):
    ...     [sum(p.numel() for p in ADFNet(widths=w).parameters()) for w in ((32, 64, 128, 256), (64, 128, 256, 512))]
    [8628579, 32765667]
    """

    size_multiple = 8

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256),
        mid_channels: Sequence[int] | None = None,
        encoder: StageSpec = LAYOUTS["decoder"].encoder,
        bottleneck: StageSpec = LAYOUTS["decoder"].bottleneck,
        decoder: StageSpec = LAYOUTS["decoder"].decoder,
        use_mfi: bool = True,
        offset_channels: int = 32,
        deform_groups: int = 8,
    ) -> None:
        super().__init__()
        widths = _four_ints("widths", widths)
        mids = (widths[0], widths[1], widths[2] // 2, widths[3] // 2) if mid_channels is None else mid_channels
        mids = _four_ints("mid_channels", mids)
        check_positive(in_channels=in_channels, offset_channels=offset_channels, deform_groups=deform_groups)
        if not isinstance(use_mfi, bool):
            raise ValueError(f"use_mfi must be True or False, got {use_mfi!r}")
        blocks = {
            "encoder": stage_blocks(encoder, "encoder"),
            "bottleneck": stage_blocks(bottleneck, "bottleneck"),
            "decoder": stage_blocks(decoder, "decoder"),
        }
        self.in_channels = in_channels
        self.widths = widths
        self.mid_channels = mids

        def stage(level: int, part: str) -> nn.Sequential:
            single, multi = blocks[part]
            c, m = widths[level], mids[level]
            return nn.Sequential(
                single(c), multi(c, m, offset_channels=offset_channels, deform_groups=deform_groups, use_mfi=use_mfi)
            )

        def down(level: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(widths[level], widths[level + 1], 3, stride=2, padding=1), nn.LeakyReLU(0.2))

        def up(level: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(widths[level + 1], widths[level], 6, stride=2, padding=2)

        # Registration order is the order of the forward pass (and of `info` and state dicts).
        self.head = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.fe1, self.down1 = stage(0, "encoder"), down(0)
        self.fe2, self.down2 = stage(1, "encoder"), down(1)
        self.fe3, self.down3 = stage(2, "encoder"), down(2)
        self.bottleneck = stage(3, "bottleneck")
        self.up3, self.dfe3 = up(2), stage(2, "decoder")
        self.up2, self.dfe2 = up(1), stage(1, "decoder")
        self.up1, self.dfe1 = up(0), stage(0, "decoder")
        self.tail = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x (Tensor[B, C, H, W])``, any ``H, W ≥ 1``; returns the same shape."""
        check_features(x, self.in_channels, "ADFNet")
        height, width = x.shape[-2:]
        return crop(self.forward_aligned(pad_to_multiple(x, self.size_multiple)), height, width)

    def forward_aligned(self, x: torch.Tensor) -> torch.Tensor:
        """The network itself, on ``x (Tensor[B, C, H, W])`` whose ``H`` and ``W`` are multiples of 8."""
        check_features(x, self.in_channels, "ADFNet")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(
                f"forward_aligned needs H and W divisible by {self.size_multiple}, got {tuple(x.shape[-2:])}; "
                "call the model itself to pad and crop"
            )
        e1 = self.fe1(self.head(x))
        e2 = self.fe2(self.down1(e1))
        e3 = self.fe3(self.down2(e2))
        b = self.bottleneck(self.down3(e3))
        d3 = self.dfe3(self.up3(b) + e3)
        d2 = self.dfe2(self.up2(d3) + e2)
        d1 = self.dfe1(self.up1(d2) + e1)
        return self.tail(d1) + x

    # Read from the child modules rather than stored, so they stay true after surgery swaps blocks.
    @property
    def block_names(self) -> dict[str, tuple[str, str] | dict[str, tuple[str, str]]]:
        """Class names of each part's ``(single-scale, multi-scale)`` blocks, e.g. ``("DCB", "MDCB")``.

        A part whose stages hold different blocks (after surgery on one stage) maps stage name to pair.
        """
        names: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {}
        for part, stages in PARTS.items():
            pairs = {stage: tuple(type(block).__name__ for block in getattr(self, stage)) for stage in stages}
            distinct = set(pairs.values())
            names[part] = distinct.pop() if len(distinct) == 1 else pairs
        return names

    @property
    def use_mfi(self) -> bool:
        """Whether every multi-scale block applies MFI."""
        stages = [stage for part in PARTS.values() for stage in part]
        return all(isinstance(getattr(getattr(self, stage)[1], "mfi", None), MFI) for stage in stages)

    def extra_repr(self) -> str:
        s = f"in_channels={self.in_channels}, widths={self.widths}"
        s += "".join(f", {part}={names}" for part, names in self.block_names.items())
        return s + ("" if self.use_mfi else ", use_mfi=False")


# --- official checkpoints (spec §10) -------------------------------------------------------------------

# Published stage prefixes: `<stage>.fe.<0|1>.` with the bottleneck named `cfe`.
_OFFICIAL_STAGE = re.compile(r"^(fe[123]|cfe|dfe[123])\.fe\.([01])\.(.+)$")
# Published down-samplers are bare convs (the LReLU is applied in forward); ours are Sequential(conv, LReLU).
_OFFICIAL_DOWN = re.compile(r"^(down[123])\.(weight|bias)$")
# Renames inside a block, by position in the stage. The map depends on the position only, not on the
# published class: position 0 holds CB (`RB` in RGB/Real) or DCB (`DRB`), whose key sets differ only in
# conv3 vs dyconv; position 1 holds MCB (`CB` in RGB/Real) or MDCB (`DB`), whose key sets share only
# offset/conv/fusion, which map alike. The first matching prefix wins.
_OFFICIAL_BLOCK_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "0": (
        ("dyconv.afg.sekg.conv_sa.", "dconv.sekg.spatial."),
        ("dyconv.afg.sekg.conv_ca.", "dconv.sekg.channel."),
        ("dyconv.afg.conv.", "dconv.kernel_conv."),
    ),
    "1": (
        ("offset.offset_conv1.", "offset."),
        ("dcn.0.", "dcn."),
        ("dcn.2.", "post."),
        ("generate_kernel.0.", "dcn."),
        ("generate_kernel.2.conv_sa.", "sekg.spatial."),
        ("generate_kernel.2.conv_ca.", "sekg.channel."),
        ("generate_kernel.3.", "kernel_conv."),
        ("branch_1.fuse.", "branches.0."),
        ("branch_3.fuse.", "branches.1."),
        ("branch_5.fuse.", "branches.2."),
        ("conv1.", "branches.0."),
        ("conv2.", "branches.1."),
        ("conv3.", "branches.2."),
        ("conv.", "reduce."),
        ("fusion.", "fuse."),
    ),
}


class IncompatibleKeys(NamedTuple):
    """What did not load: our ``missing`` keys, the checkpoint's ``unexpected`` keys (its own names), and
    ``mismatched`` shapes as ``"checkpoint key -> our key: (checkpoint shape) vs (model shape)"``."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def _official_key(key: str) -> str:
    """Our name for one published key; keys outside the published layout come back unchanged."""
    if m := _OFFICIAL_DOWN.match(key):
        return f"{m[1]}.0.{m[2]}"
    if m := _OFFICIAL_STAGE.match(key):
        stage, position, rest = ("bottleneck" if m[1] == "cfe" else m[1]), m[2], m[3]
        for old, new in _OFFICIAL_BLOCK_RENAMES[position]:
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        return f"{stage}.{position}.{rest}"
    return key


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    if isinstance(state_dict.get("state_dict"), Mapping):  # ADFNet_Real saves {epoch, state_dict, optimizer}
        state_dict = state_dict["state_dict"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"state dict entries must be tensors; these are not: {bad}")
    # DataParallel checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a published ADFNet checkpoint's keys to this package's :class:`ADFNet` keys.

    Accepts a plain state dict (ADFNet_RGB / ADFNet_Gray, including ADFNet*) or a ``{"state_dict": …}``
    wrapper (ADFNet_Real), with or without DataParallel's ``module.`` prefix. The published sub-projects
    name the classes differently (RGB/Real: ``RB``, ``CB``, ``DRB``, ``DB``; Gray: ``CB``, ``MCB``, ``DCB``,
    ``MDCB``), but state-dict keys hold attribute names, which are the same in all of them, so one map
    serves every sub-project. Renames (published → ours):

    - ``cfe`` → ``bottleneck``; ``<stage>.fe.<i>.`` → ``<stage>.<i>.``; ``down<s>.weight`` → ``down<s>.0.weight``.
    - DCB: ``dyconv.afg.sekg.conv_sa/conv_ca`` → ``dconv.sekg.spatial/channel``, ``dyconv.afg.conv`` →
      ``dconv.kernel_conv``; ``conv1``–``conv3`` of DCB and CB keep their names.
    - MCB: ``offset.offset_conv1`` → ``offset``, ``dcn.0`` → ``dcn`` (with its ``conv_offset_mask``),
      ``dcn.2`` → ``post``, ``conv`` → ``reduce``, ``conv1/2/3`` (dilation 1/3/5) → ``branches.0/1/2``,
      ``fusion`` → ``fuse``.
    - MDCB: ``generate_kernel.0`` → ``dcn``, ``generate_kernel.2.conv_sa/conv_ca`` → ``sekg.spatial/channel``,
      ``generate_kernel.3`` → ``kernel_conv``, ``branch_1/3/5.fuse`` → ``branches.0/1/2``; ``offset``,
      ``conv``, ``fusion`` as in MCB.

    The spec is silent on development versions of the code (a two-conv offset block, the SEKG-free
    "MDFB"); their extra keys are not renamed and so surface as unexpected keys when loading.

    Returns:
        dict[str, Tensor]: the same tensors under our names; unknown keys pass through unchanged.
    """
    return {_official_key(k): v for k, v in _unwrap(state_dict).items()}


def load_official_state_dict(
    model: ADFNet, state_dict: Mapping[str, Any], strict: bool = True
) -> IncompatibleKeys:
    """Load a published ADFNet checkpoint into ``model`` after :func:`convert_official_state_dict`.

    Unlike the published code (``strict=False`` everywhere, spec §11.8), nothing is ignored silently:
    with ``strict=True`` any missing, unexpected or wrongly shaped key raises, naming every one; with
    ``strict=False`` the matching tensors load and the rest is returned.

    Args:
        model (ADFNet): the network to fill, built with the checkpoint's widths and ``in_channels``.
        state_dict (Mapping[str, Tensor]): the loaded checkpoint (``torch.load(path, map_location="cpu")``).
        strict (bool): raise ``ValueError`` unless the checkpoint matches the model exactly.

    Returns:
        IncompatibleKeys: empty lists when everything loaded.
    """
    if not isinstance(model, ADFNet):
        raise ValueError(f"load_official_state_dict loads into an ADFNet, got {type(model).__name__}")
    original = _unwrap(state_dict)
    ours = model.state_dict()
    renamed = {_official_key(k): (k, v) for k, v in original.items()}
    missing = [k for k in ours if k not in renamed]
    unexpected = [old for new, (old, _) in renamed.items() if new not in ours]
    mismatched = [
        f"{old} -> {new}: {tuple(v.shape)} vs {tuple(ours[new].shape)}"
        for new, (old, v) in renamed.items()
        if new in ours and v.shape != ours[new].shape
    ]
    if strict and (missing or unexpected or mismatched):
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ValueError("official checkpoint does not match the model; " + "; ".join(problems))
    loadable = {new: v for new, (_, v) in renamed.items() if new in ours and v.shape == ours[new].shape}
    model.load_state_dict(loadable, strict=False)
    return IncompatibleKeys(missing, unexpected, mismatched)


# --- registered variants (Table 4 of the paper for the ablations) ---------------------------------------


def _create_adfnet(overrides: dict[str, Any], **defaults: Any) -> nn.Module:
    return instantiate(ADFNet, defaults, overrides)


@register
def adfnet(**kwargs: Any) -> nn.Module:
    """ADFNet, widths (32, 64, 128, 256): static encoder, dynamic decoder (8,628,579 parameters in colour)."""
    return _create_adfnet(kwargs)


@register
def adfnet_l(**kwargs: Any) -> nn.Module:
    """ADFNet*, widths (64, 128, 256, 512) (32,765,667 parameters in colour)."""
    return _create_adfnet(kwargs, widths=(64, 128, 256, 512))


def _register_layout(key: str) -> None:
    layout = LAYOUTS[key]
    kwargs = {part: layout.blocks(part) for part in PARTS}
    if not layout.mfi:
        kwargs["use_mfi"] = False

    def factory(**overrides: Any) -> nn.Module:
        return _create_adfnet(overrides, **kwargs)

    blocks = "; ".join(f"{part} {' + '.join(c.__name__ for c in layout.blocks(part))}" for part in PARTS)
    factory.__name__ = factory.__qualname__ = layout.model
    factory.__doc__ = f"Table 4 \"{layout.row}\": {blocks}" + ("; no MFI." if not layout.mfi else ".")
    register(layout.model)(factory)


# The Table 4 ablations (dynfilter.layers.adfnet_layout), each a registered model: adfnet_wo_dcb, ...
for _key, _layout in LAYOUTS.items():
    if _layout.model != "adfnet":
        _register_layout(_key)
