"""Replacements: what a selected module becomes, whether it can, and which of its weights carry over.

A :class:`Replacement` answers four questions about one selected module:

- :meth:`~Replacement.reason`: why it *cannot* take the replacement (``None`` when it can);
- :meth:`~Replacement.build`: the new module, built from a private copy of the old one;
- :meth:`~Replacement.carry`: which state-dict entries of the new module take their values from the old
  one, as ``{new_key: old_key}``;
- :meth:`~Replacement.preserve_reason`: why the model's output may change at step 0 (``None`` when the
  new module computes exactly what the old one did); :meth:`~Replacement.preserving` gives the form of
  the replacement that keeps the output where one exists (``plan(..., preserve_output=True)``).

The paper's swaps are constructors here: :func:`to_dconv`, :func:`to_mdcb_stack`, :func:`swap_block`
(DCB ↔ CB, MDCB ↔ MCB), :func:`to_identity`. Insertions keep the module and follow it with a block:
:func:`conv_then_dconv` and :func:`insert_after`. Any ``fn(name, module) -> nn.Module`` becomes a
replacement with :func:`factory`. Keyword arguments not consumed by a constructor are forwarded to the
block's own constructor (``**block_kwargs``), so block options pass straight through.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence, Union

import torch
from torch import nn

from ..layers import CB, DCB, MCB, MDCB, MFI, DConv

__all__ = [
    "Replacement",
    "ReplacementLike",
    "to_dconv",
    "conv_then_dconv",
    "insert_after",
    "residual_out",
    "to_mdcb_stack",
    "swap_block",
    "to_identity",
    "factory",
    "as_replacement",
    "infer_channels",
]

Factory = Callable[[str, nn.Module], "nn.Module | None"]


class Replacement:
    """Base class: by default every module is eligible and carried weights are found by identity.

    Subclasses override :meth:`build` and, where they can tell, :meth:`reason` and :meth:`carry`.

    Args:
        label (str): how the replacement prints in a plan, e.g. ``"to_dconv()"``.

    >>> r = factory(lambda name, m: nn.Sequential(m, nn.ReLU()))
    >>> conv = nn.Conv2d(2, 2, 1)
    >>> new = r.build("x", conv)
    >>> sorted(r.carry(conv, new).items())
    [('0.bias', 'bias'), ('0.weight', 'weight')]
    """

    def __init__(self, label: str) -> None:
        self.label = label

    def reason(self, name: str, module: nn.Module) -> str | None:
        """Why ``module`` cannot take this replacement, or ``None`` when it can."""
        return None

    def build(self, name: str, module: nn.Module) -> nn.Module | None:
        """The new module for ``module`` (a private copy the new module may reuse); ``None`` declines."""
        raise NotImplementedError

    def carry(self, old: nn.Module, new: nn.Module) -> dict[str, str]:
        """``{new_key: old_key}`` for the state-dict entries of ``new`` that hold ``old``'s values.

        The default finds entries that *are* the old tensors, i.e. modules :meth:`build` reused.
        """
        old_ids = {id(t): k for k, t in old.state_dict(keep_vars=True).items()}
        return {k: old_ids[id(t)] for k, t in new.state_dict(keep_vars=True).items() if id(t) in old_ids}

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        """Why the model's output may change when ``module`` is replaced; ``None`` when it cannot.

        ``None`` is a promise: before any training, the new module computes exactly what ``module`` did.
        The default makes no promise.
        """
        return f"{self.label} makes no promise about the output"

    def preserving(self) -> Replacement:
        """This replacement set up to keep the model's output (e.g. an inserted block that starts as the
        identity), or ``self`` when it has no such form (:meth:`preserve_reason` then says why)."""
        return self

    def __repr__(self) -> str:
        return self.label


def _kwargs_repr(**kwargs: object) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _pair(value: int | tuple) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class _ToDConv(Replacement):
    def __init__(self, kernel_size: int, dilation: int, block_kwargs: dict) -> None:
        super().__init__(f"to_dconv({_kwargs_repr(kernel_size=kernel_size, dilation=dilation, **block_kwargs)})")
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.block_kwargs = block_kwargs

    def reason(self, name: str, module: nn.Module) -> str | None:
        if not isinstance(module, nn.Conv2d):
            return f"not a Conv2d ({type(module).__name__})"
        k, d = self.kernel_size, self.dilation
        problems = []
        if module.in_channels != module.out_channels:
            problems.append(f"in_channels {module.in_channels} ≠ out_channels {module.out_channels}")
        if _pair(module.kernel_size) != (k, k):
            problems.append(f"kernel {'×'.join(map(str, _pair(module.kernel_size)))} ≠ {k}×{k}")
        if _pair(module.stride) != (1, 1):
            problems.append(f"stride {_pair(module.stride)} ≠ 1")
        if _pair(module.dilation) != (d, d):
            problems.append(f"dilation {_pair(module.dilation)} ≠ {d}")
        same = d * (k - 1) // 2
        if not problems and module.padding != "same" and _pair(module.padding) != (same, same):
            problems.append(f"padding {module.padding} does not keep the size (DConv pads {same})")
        return "; ".join(problems) or None

    def build(self, name: str, module: nn.Module) -> nn.Module:
        return DConv(module.out_channels, self.kernel_size, self.dilation, **self.block_kwargs)

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        start = "as the identity (as if the conv were removed)" if self.block_kwargs.get("init") == "identity" else (
            "at random"
        )
        return f"the conv is dropped and the DConv starts {start}; conv_then_dconv() would keep the conv"


def to_dconv(kernel_size: int = 3, dilation: int = 1, **block_kwargs: object) -> Replacement:
    """Replace a ``k×k``, stride-1, size-keeping ``C→C`` ``nn.Conv2d`` with ``DConv(C)``.

    The paper's DConv-enhanced DnCNN: "replacing one regular static 3×3 convolution with one DConv".
    The static weights have no DConv counterpart, so nothing carries over. Grouped and depthwise convs
    qualify (DConv is depthwise itself); ``padding_mode`` is not checked (DConv zero-pads).

    Args:
        kernel_size (int): ``k`` the conv must have; also DConv's kernel size.
        dilation (int): the conv's dilation; also DConv's.
        **block_kwargs: forwarded to :class:`~dynfilter.DConv`.

    >>> r = to_dconv()
    >>> r.reason("c", nn.Conv2d(8, 8, 3, padding=1)), r.reason("c", nn.Conv2d(3, 8, 3, stride=2, padding=1))
    (None, 'in_channels 3 ≠ out_channels 8; stride (2, 2) ≠ 1')
    """
    return _ToDConv(kernel_size, dilation, block_kwargs)


def residual_out(block: Callable[..., nn.Module]) -> str | None:
    """The layer that ends a block's residual branch (``y = x + branch(x)``), as the block declares it.

    Zeroed, the block is the identity, and that layer still gets a gradient at step 0 (its input is not
    zero). ``None`` for blocks that declare none.

    >>> residual_out(DCB), residual_out(CB), residual_out(MDCB), residual_out(nn.Conv2d)
    ('conv2', 'conv3', 'fuse', None)
    """
    return getattr(block, "residual_out", None)


_BLOCKS: dict[str, type] = {"dconv": DConv, "dcb": DCB, "cb": CB, "mdcb": MDCB, "mcb": MCB}
_PROBE = (16, 16)  # H×W of the input that checks a custom block really starts as the identity


def _block_maker(block: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if isinstance(block, str):
        if block not in _BLOCKS:
            raise ValueError(f"unknown block {block!r}; known blocks: {', '.join(_BLOCKS)} (or pass a class/callable)")
        return _BLOCKS[block]
    if callable(block) and not isinstance(block, nn.Module):
        return block
    raise ValueError(f"block must be a name ({', '.join(_BLOCKS)}) or a callable block(channels, **kwargs), got {block!r}")


def _block_name(make: Callable[..., nn.Module]) -> str:
    return getattr(make, "__name__", type(make).__name__)


def _output_channels(module: nn.Module) -> int | None:
    for attr in ("out_channels", "channels"):
        c = getattr(module, attr, None)
        if isinstance(c, int) and not isinstance(c, bool):
            return c
    return infer_channels(module)


def _deform_groups_problem(channels: int, block_kwargs: dict) -> str | None:
    groups = block_kwargs.get("deform_groups", 8)
    return f"channels {channels} not divisible by deform_groups {groups}" if channels % groups else None


@torch.no_grad()
def _zero_layer(block: nn.Module, name: str) -> None:
    try:
        layer = block.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(block).__name__} has no submodule {name!r} to zero") from None
    params = list(layer.parameters())
    if not params:
        raise ValueError(f"{type(block).__name__}.{name} has no parameters to zero")
    for p in params:
        p.zero_()


@torch.no_grad()
def _check_identity(block: nn.Module, channels: int, zero: str) -> None:
    x = torch.randn(1, channels, *_PROBE, generator=torch.Generator().manual_seed(0))
    try:
        y = block(x)
    except RuntimeError as exc:
        raise ValueError(f"could not run {type(block).__name__} on a 1×{channels}×16×16 probe: {exc}") from None
    if not (isinstance(y, torch.Tensor) and y.shape == x.shape and torch.equal(y, x)):
        raise ValueError(
            f"zeroing {zero!r} does not make {type(block).__name__} the identity; zero= must name the last layer "
            "of a residual branch, y = x + branch(x)"
        )


class _InsertAfter(Replacement):
    """Keep the module and follow it with a new block: ``Sequential(<first>=module, <second>=block)``."""

    def __init__(
        self,
        title: str,
        block: str | Callable[..., nn.Module],
        names: tuple[str, str],
        accepts: tuple[type, ...] | None,
        channels: int | None,
        zero: str | None,
        block_kwargs: dict,
        preserve: bool = False,
    ) -> None:
        self.make = _block_maker(block)
        self.spec = dict(title=title, block=block, names=names, accepts=accepts, channels=channels, zero=zero)
        self.names, self.accepts, self.channels, self.zero = names, accepts, channels, zero
        self.block_kwargs, self.preserve = block_kwargs, preserve
        shown = {**({"channels": channels} if channels is not None else {}), **block_kwargs}
        shown.update({"zero": self._zeroed()} if preserve and self.make is not DConv else {})
        head = [repr(block) if isinstance(block, str) else _block_name(self.make)] if title == "insert_after" else []
        super().__init__(f"{title}({', '.join(head + ([_kwargs_repr(**shown)] if shown else []))})")

    def _zeroed(self) -> str | None:
        return self.zero if self.zero is not None else residual_out(self.make)

    def _channels(self, module: nn.Module) -> int | None:
        return self.channels if self.channels is not None else _output_channels(module)

    def reason(self, name: str, module: nn.Module) -> str | None:
        if self.accepts and not isinstance(module, self.accepts):
            return f"not a {' or '.join(t.__name__ for t in self.accepts)} ({type(module).__name__})"
        c = self._channels(module)
        if c is None:
            return f"cannot tell the output channels of {type(module).__name__}; pass channels="
        return _deform_groups_problem(c, self.block_kwargs) if self.make in (MDCB, MCB) else None

    def build(self, name: str, module: nn.Module) -> nn.Module:
        c = self._channels(module)
        block = self.make(c, **self.block_kwargs)
        if self.preserve and self.make is not DConv:
            zero = self._zeroed()
            _zero_layer(block, zero)
            if residual_out(type(block)) != zero:  # ours are identities by construction; check the rest
                _check_identity(block, c, zero)
        first, second = self.names
        return nn.Sequential(OrderedDict([(first, module), (second, block)]))

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        if self.make is DConv:
            init = self.block_kwargs.get("init", "published")
            return None if init == "identity" else f"the inserted DConv starts with init={init!r}, not as the identity"
        if self.preserve:
            return None
        if self._zeroed() is None:
            return f"{_block_name(self.make)} is not a known residual block; pass zero=<the last layer of its branch>"
        return f"the inserted {_block_name(self.make)} starts at random (preserve_output=True zeroes its {self._zeroed()})"

    def preserving(self) -> Replacement:
        kwargs = self.block_kwargs
        if self.make is DConv:
            init = kwargs.get("init", "identity")
            if init != "identity":
                raise ValueError(
                    f"preserve_output=True needs the inserted DConv to start as the identity, but init={init!r} was given"
                )
            kwargs = {**kwargs, "init": "identity"}
        elif self._zeroed() is None:
            return self
        return _InsertAfter(**self.spec, block_kwargs=kwargs, preserve=True)


def conv_then_dconv(**block_kwargs: object) -> Replacement:
    """Keep a conv, weights and all, and follow it with ``DConv(out_channels)``.

    Works for any ``nn.Conv2d`` or ``nn.ConvTranspose2d`` (any kernel, stride, groups), since DConv keeps
    the shape of the conv's output. The new module is ``Sequential(conv=<the conv>, dconv=DConv)``, so
    ``weight`` carries to ``conv.weight``. With ``init="identity"`` (which ``preserve_output=True``
    selects) the DConv starts as the identity and the model's output is unchanged.

    Args:
        **block_kwargs: forwarded to :class:`~dynfilter.DConv` (``kernel_size``, ``dilation``, ``init``).

    >>> new = conv_then_dconv().build("c", nn.Conv2d(3, 8, 3, stride=2))
    >>> [type(m).__name__ for m in new], new.dconv.channels
    (['Conv2d', 'DConv'], 8)
    """
    return _InsertAfter("conv_then_dconv", "dconv", ("conv", "dconv"), accepts=(nn.Conv2d, nn.ConvTranspose2d),
                        channels=None, zero=None, block_kwargs=block_kwargs)


def insert_after(
    block: str | Callable[..., nn.Module] = "dcb",
    channels: int | None = None,
    zero: str | None = None,
    **block_kwargs: object,
) -> Replacement:
    """Keep a module and follow it with a new block: ``Sequential(module=<the module>, block=<new block>)``.

    The block gets ``C`` = the module's output channels (``out_channels`` or ``channels``, else
    :func:`infer_channels`, or ``channels=``). The module's weights carry (``module.*←*``).

    Starting as the identity (``plan(..., preserve_output=True)``), so the model's output is unchanged:

    - ``"dconv"``: the DConv gets ``init="identity"``;
    - a residual block (``"dcb"``, ``"cb"``, ``"mdcb"``, ``"mcb"``, see :func:`residual_out`): the last layer of
      its residual branch is zeroed (DCB ``conv2``, CB ``conv3``, MDCB/MCB ``fuse``), so ``y = x + 0``. That
      layer gets a gradient at step 0; the layers before it get theirs from step 1, once it is no
      longer zero (the zero-init residual of Goyal et al. 2017 and Fixup). Combine with
      ``init="identity"`` for a DCB/MDCB whose kernels also start as the identity;
    - a block of your own: ``zero=`` names the last layer of its branch; the plan checks on a
      1×C×16×16 probe that the block then is the identity, and declines the module if not.

    Args:
        block: ``"dconv"``, ``"dcb"``, ``"cb"``, ``"mdcb"``, ``"mcb"``, or a class/callable
            ``block(channels, **block_kwargs) -> nn.Module``.
        channels (int, optional): ``C``; inferred when omitted.
        zero (str, optional): for ``preserve_output``: the submodule to zero (default: the block's :func:`residual_out`).
        **block_kwargs: forwarded to the block's constructor.

    >>> new = insert_after("dcb").preserving().build("c", nn.Conv2d(3, 8, 3, padding=1))
    >>> x = torch.randn(1, 8, 5, 5)
    >>> [type(m).__name__ for m in new], torch.equal(new.block(x), x)
    (['Conv2d', 'DCB'], True)
    """
    return _InsertAfter("insert_after", block, ("module", "block"), accepts=None, channels=channels, zero=zero,
                        block_kwargs=block_kwargs)


def infer_channels(module: nn.Module) -> int | None:
    """``C`` when ``module`` evidently maps ``C`` channels to ``C`` channels, else ``None``.

    Looks at a ``channels`` attribute, then equal ``in_channels``/``out_channels`` attributes, then the
    first and last ``nn.Conv2d`` inside (in registration order, which is how residual dense blocks read:
    the first dense conv takes ``C``, the local-fusion 1×1 returns ``C``).

    >>> infer_channels(DCB(8)), infer_channels(nn.Sequential(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 4, 1)))
    (8, 4)
    """
    c = getattr(module, "channels", None)
    if isinstance(c, int) and not isinstance(c, bool):
        return c
    cin, cout = getattr(module, "in_channels", None), getattr(module, "out_channels", None)
    if isinstance(cin, int) and isinstance(cout, int):
        return cin if cin == cout else None
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[0].in_channels == convs[-1].out_channels:
        return convs[0].in_channels
    return None


class _ToMDCBStack(Replacement):
    def __init__(self, n: int, channels: int | None, block_kwargs: dict) -> None:
        shown = _kwargs_repr(n=n, **({"channels": channels} if channels else {}), **block_kwargs)
        super().__init__(f"to_mdcb_stack({shown})")
        self.n = n
        self.channels = channels
        self.block_kwargs = block_kwargs

    def _channels(self, module: nn.Module) -> int | None:
        return self.channels if self.channels is not None else infer_channels(module)

    def reason(self, name: str, module: nn.Module) -> str | None:
        c = self._channels(module)
        if c is None:
            cin, cout = getattr(module, "in_channels", None), getattr(module, "out_channels", None)
            if isinstance(cin, int) and isinstance(cout, int):
                return f"maps {cin} → {cout} channels; MDCB needs C → C"
            return f"cannot tell the C → C channel count of {type(module).__name__}; pass channels="
        return _deform_groups_problem(c, self.block_kwargs)

    def build(self, name: str, module: nn.Module) -> nn.Module:
        c = self._channels(module)
        return nn.Sequential(*(MDCB(c, **self.block_kwargs) for _ in range(self.n)))

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        return "the module is replaced by new MDCBs and its weights are dropped; insert_after('mdcb') keeps it"


def to_mdcb_stack(
    n: int = 3,
    channels: int | None = None,
    mid_channels: int | None = None,
    offset_channels: int = 32,
    deform_groups: int = 8,
    dilations: Sequence[int] = (1, 3, 5),
    **block_kwargs: object,
) -> Replacement:
    """Replace a ``C→C`` block (e.g. a residual dense block) with ``Sequential(MDCB(C), …)`` of ``n`` MDCBs.

    The paper's MDCB-enhanced RDN: "replacing one residual dense block with three MDCBs". ``C`` comes from
    ``channels`` or :func:`infer_channels`. Nothing carries over.

    Args:
        n (int): how many MDCBs.
        channels (int, optional): ``C``; inferred when omitted.
        mid_channels (int, optional): ``M`` of each MDCB; ``C`` when omitted.
        offset_channels (int): ``O``, the offset-feature width (32 in ADFNet).
        deform_groups (int): DCN deformable groups; must divide ``C``.
        dilations (Sequence[int]): the dilated branches.
        **block_kwargs: forwarded to :class:`~dynfilter.MDCB` (e.g. ``use_mfi``).

    >>> len(to_mdcb_stack(n=2).build("blocks.1", DCB(16)))
    2
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    kwargs = dict(
        mid_channels=mid_channels,
        offset_channels=offset_channels,
        deform_groups=deform_groups,
        dilations=tuple(dilations),
        **block_kwargs,
    )
    return _ToMDCBStack(n, channels, kwargs)


# The blocks that swap with a twin (each declares ``twin``, ``dynamic`` and ``shared_with_twin``), by
# direction: DCB ↔ CB share the input conv and the output conv after the activation (DCB.conv2 ↔ CB.conv3);
# MDCB ↔ MCB the offset conv, the DCN and the final 1×1 fuse.
_SWAPS: dict[str, tuple[type, ...]] = {
    to: tuple(c for c in _BLOCKS.values() if hasattr(c, "twin") and c.dynamic == (to == "static"))
    for to in ("static", "dynamic")
}


class _SwapBlock(Replacement):
    def __init__(self, to: str, use_mfi: bool | None, block_kwargs: dict) -> None:
        shown = _kwargs_repr(**({"use_mfi": use_mfi} if use_mfi is not None else {}), **block_kwargs)
        super().__init__(f"swap_block({to!r}{', ' + shown if shown else ''})")
        self.table = _SWAPS[to]
        self.use_mfi = use_mfi
        self.block_kwargs = block_kwargs

    def _entry(self, module: nn.Module) -> tuple[type, dict[str, str]] | None:
        """``(twin class, {twin prefix: this block's prefix})`` for a block this swap takes, else ``None``."""
        if type(module) not in self.table:
            return None
        twin = type(module).twin
        return twin, twin.shared_with_twin

    def reason(self, name: str, module: nn.Module) -> str | None:
        if self._entry(module) is None:
            return f"not a {' or '.join(c.__name__ for c in self.table)} ({type(module).__name__})"
        return None

    def build(self, name: str, module: nn.Module) -> nn.Module:
        cls, _ = self._entry(module)
        if cls in (CB, DCB):
            return cls(module.channels, **self.block_kwargs)
        use_mfi = isinstance(module.mfi, MFI) if self.use_mfi is None else self.use_mfi
        return cls(
            module.channels,
            module.mid_channels,
            module.offset_channels,
            module.deform_groups,
            module.dilations,
            use_mfi=use_mfi,
            **self.block_kwargs,
        )

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        return "the twin's middle (DConv or static conv, dynamic or dilated branches) has no counterpart in the old block"

    def carry(self, old: nn.Module, new: nn.Module) -> dict[str, str]:
        _, prefixes = self._entry(old)
        old_sd = old.state_dict()
        out = {}
        for key, value in new.state_dict().items():
            head, _, rest = key.partition(".")
            if head in prefixes:
                old_key = f"{prefixes[head]}.{rest}"
                if old_key in old_sd and old_sd[old_key].shape == value.shape:
                    out[key] = old_key
        return out


def swap_block(to: str, use_mfi: bool | None = None, **block_kwargs: object) -> Replacement:
    """Swap ADFNet blocks for their twins: ``to="static"`` (DCB → CB, MDCB → MCB) or ``"dynamic"`` (back).

    The new block has the old one's ``channels``, ``mid_channels``, ``offset_channels``,
    ``deform_groups`` and ``dilations``. Carried weights: DCB ↔ CB the input conv (``conv1``) and the output
    conv (DCB ``conv2`` ↔ CB ``conv3``); MDCB ↔ MCB ``offset``, ``dcn`` and ``fuse``. The rest starts fresh.

    Args:
        to (str): ``"static"`` or ``"dynamic"``.
        use_mfi (bool, optional): MFI in the new multi-scale block; ``None`` keeps what the old one had.
        **block_kwargs: forwarded to the new block's constructor.

    >>> type(swap_block("static").build("dfe1.0", DCB(8))).__name__
    'CB'
    """
    if to not in _SWAPS:
        raise ValueError(f"swap_block(to=...) must be one of {sorted(_SWAPS)}, got {to!r}")
    return _SwapBlock(to, use_mfi, block_kwargs)


class _ToIdentity(Replacement):
    def __init__(self) -> None:
        super().__init__("to_identity()")

    def build(self, name: str, module: nn.Module) -> nn.Module:
        return nn.Identity()

    def preserve_reason(self, name: str, module: nn.Module) -> str | None:
        return None if type(module) is nn.Identity else f"the {type(module).__name__} is removed"


def to_identity() -> Replacement:
    """Replace a module with ``nn.Identity`` (e.g. MFI, for the paper's "w/o MFI").

    Every module is eligible: select only modules whose output has their input's shape.

    >>> to_identity().build("mfi", MFI())
    Identity()
    """
    return _ToIdentity()


class _Factory(Replacement):
    def __init__(self, fn: Factory, label: str) -> None:
        super().__init__(label)
        self.fn = fn

    def build(self, name: str, module: nn.Module) -> nn.Module | None:
        new = self.fn(name, module)
        if new is not None and not isinstance(new, nn.Module):
            raise ValueError(f"the factory {self.label} returned {type(new).__name__} for {name!r}, not an nn.Module")
        return new


def factory(fn: Factory, label: str | None = None) -> Replacement:
    """Wrap a user ``fn(name, module) -> nn.Module``.

    ``fn`` receives a private copy of the selected module, so it may reuse it (weights carried, found by
    identity) without touching the model. Returning ``None`` or raising ``ValueError`` declines the module;
    the plan reports it as ineligible with the message.

    >>> factory(lambda name, m: nn.Sequential(m, nn.ReLU()), "with_relu")
    with_relu
    """
    if not callable(fn) or isinstance(fn, nn.Module):
        raise ValueError(f"factory expects a callable fn(name, module) -> nn.Module, got {fn!r}")
    return _Factory(fn, label or getattr(fn, "__name__", "factory"))


ReplacementLike = Union[Replacement, Factory]


def as_replacement(value: object) -> Replacement:
    """A :class:`Replacement` as is, or a callable ``fn(name, module) -> nn.Module`` wrapped by :func:`factory`.

    >>> as_replacement(to_identity())
    to_identity()
    """
    if isinstance(value, Replacement):
        return value
    if isinstance(value, nn.Module) or (isinstance(value, type) and issubclass(value, nn.Module)):
        raise ValueError(
            f"replace= takes a Replacement or a factory fn(name, module) -> nn.Module, got the module {value!r}; "
            "wrap it, e.g. replace=lambda name, module: MyBlock(...)"
        )
    if callable(value):
        return factory(value)
    raise ValueError(f"replace= takes a Replacement or a factory fn(name, module) -> nn.Module, got {value!r}")
