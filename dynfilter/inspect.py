"""See what the dynamic blocks do: capture feature maps and predicted kernels by forward hooks.

:func:`capture` runs a model once on an image and records, for each chosen module, reductions of its
input and output (channel-mean map, high-frequency share, radial spectrum; see :mod:`dynfilter.spectral`)
and, for each chosen module that predicts kernels (DConv, MDCB, or any module with a ``kernel_conv``
submodule), maps of those kernels over the image. This is what the ADFNet paper's Fig. 8 shows.

The model is neither copied nor changed: hooks are registered on its modules and removed afterwards
(also when the forward raises), the forward runs under ``torch.no_grad()``, and modules in training
mode are put in eval mode for the run (so BatchNorm statistics do not move) and restored after.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .functional import unfused

from .layers import CB, DCB, MCB, MDCB, MFI, SEKG, DConv, ModulatedDeformConv2d
from .spectral import DEFAULT_CUTOFF, radial_frequency, spectral_summary

__all__ = [
    "BLOCK_TYPES",
    "MapStats",
    "Activation",
    "KernelMaps",
    "Capture",
    "default_modules",
    "select_modules",
    "expected_channels",
    "kernel_highpass_matrix",
    "landmark_pixels",
    "capture",
]

#: The modules :func:`default_modules` picks, with the convolutions inside the blocks among them.
BLOCK_TYPES: tuple[type[nn.Module], ...] = (DCB, CB, MDCB, MCB, DConv, SEKG, MFI)
_CONTAINERS = (DCB, CB, MDCB, MCB, DConv)  # blocks whose inner convolutions are picked too
_SEALED = (ModulatedDeformConv2d, SEKG)  # their inner convs predict offsets or guidance, not features
_NOT_FEATURES = ("kernel_conv", "offset")  # a block's kernel generator and its DCN offset feature
_SPECTRUM_BINS = 32


@dataclass
class MapStats:
    """Reductions of one ``Tensor[B, C, H, W]``: what is kept instead of the full-resolution maps.

    Attributes:
        shape: the tensor's shape.
        mean_map (Tensor[B, H, W]): the channel mean, float32 on the CPU.
        hf_share: share of spectral energy above the capture's cutoff (:func:`~dynfilter.spectral.high_frequency_share`
            over all ``B·C`` maps); ``nan`` for constant maps.
        energy: the spectral energy ``Σ_f P(f)`` (:class:`~dynfilter.spectral.SpectralSummary`); ``energy · hf_share``
            is the part above the cutoff.
        spectrum (Tensor[bins]): the radial power spectrum (:func:`~dynfilter.spectral.radial_power_spectrum`).
        full (Tensor, optional): the tensor itself, only with ``capture(..., keep_full=True)``.
    """

    shape: tuple[int, ...]
    mean_map: torch.Tensor
    hf_share: float
    energy: float
    spectrum: torch.Tensor
    full: torch.Tensor | None = None


@dataclass
class Activation:
    """What one module received and returned (its first positional argument and its output).

    ``finished`` is the rank of the module's first call among the captured modules by the time it returned,
    so sorting by it gives the forward order of modules that do not contain each other.
    """

    name: str
    kind: str
    input: MapStats | None
    output: MapStats | None
    calls: int = 1
    finished: int = 0


@dataclass
class KernelMaps:
    """The per-pixel kernels one module predicted, reduced to maps over its feature map.

    For kernel ``w`` (``k×k``, taps at dilation 1) of channel ``c`` at a pixel: energy ``Σ w²``, DC gain ``Σ w``
    (its response to a constant) and high-frequency energy ``wᵀ Q w`` with ``Q`` from :func:`kernel_highpass_matrix`
    (the energy of its frequency response above the cutoff; ``Σ w² = wᵀ I w`` is the energy over all frequencies).

    Attributes:
        name: the module that predicts and uses the kernels (a DConv or MDCB).
        generator: the submodule whose output the kernels are (hooked), e.g. ``"body.5.kernel_conv"``.
        kernel_size: ``k``.
        channels: channels ``C`` that get their own kernel.
        energy (Tensor[B, H, W]): channel mean of ``Σ w²``.
        highpass (Tensor[B, H, W]): ``Σ_c wᵀQw / Σ_c Σ w²``, in ``[0, 1]``: share of the kernels' response energy
            above the cutoff.
        dc_gain (Tensor[B, H, W]): channel mean of ``Σ w``.
        at: image pixel ``(y, x)`` → ``Tensor[C, k, k]``, the kernels of batch item 0 at the matching pixel of
            this module's map (``(y·h // H, x·w // W)`` for a map of ``h×w`` and an image of ``H×W``).
    """

    name: str
    generator: str
    kernel_size: int
    channels: int
    energy: torch.Tensor
    highpass: torch.Tensor
    dc_gain: torch.Tensor
    at: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class Capture:
    """The result of :func:`capture`: activations in registration order, kernels in the order they were predicted."""

    activations: dict[str, Activation]
    kernels: dict[str, KernelMaps]
    output: torch.Tensor
    cutoff: float
    window: str | None

    def table(self) -> list[dict[str, object]]:
        """One row per activation: module, kind, shapes, high-frequency share before and after, and the power gains.

        ``gain_high`` is the output's spectral energy above the cutoff over the input's, ``gain_low`` the same
        below it (``nan`` where the input is not a 4-D map).
        """
        nan = float("nan")
        rows = []
        for a in self.activations.values():
            i, o = a.input, a.output
            high = low = nan
            if i is not None and o is not None and i.energy > 0:
                high = o.energy * o.hf_share / (i.energy * i.hf_share) if i.hf_share > 0 else nan
                low = o.energy * (1 - o.hf_share) / (i.energy * (1 - i.hf_share)) if i.hf_share < 1 else nan
            rows.append({
                "module": a.name,
                "kind": a.kind,
                "input_shape": i.shape if i else None,
                "output_shape": o.shape if o else None,
                "hf_in": i.hf_share if i else nan,
                "hf_out": o.hf_share if o else nan,
                "gain_high": high,
                "gain_low": low,
            })
        return rows


def _walk(module: nn.Module, prefix: str = "", inside: bool = False) -> Iterator[tuple[str, nn.Module, bool]]:
    """``(name, module, inside a block)`` of every descendant, in registration order."""
    for child_name, child in module.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        yield name, child, inside
        if not isinstance(child, _SEALED):
            yield from _walk(child, name, inside or isinstance(child, _CONTAINERS))


def default_modules(model: nn.Module) -> list[str]:
    """Names of every DCB, CB, MDCB, MCB, DConv, SEKG and MFI of ``model``, and the convs inside the blocks.

    The inner convolutions are the ``nn.Conv2d`` and deformable convs of a block, in forward order as
    registered. Left out: kernel generators (``kernel_conv``, whose output is the kernels, see :class:`KernelMaps`),
    the offset feature of a multi-scale block (``offset``) and the convs inside a deformable conv or SEKG (they
    predict offsets, masks or kernel guidance, not features).

    >>> default_modules(DCB(4))
    ['conv1', 'dconv', 'dconv.sekg', 'conv2']
    """
    names = []
    for name, module, inside in _walk(model, inside=isinstance(model, _CONTAINERS)):
        if isinstance(module, BLOCK_TYPES):
            names.append(name)
        elif (inside and isinstance(module, (nn.Conv2d, ModulatedDeformConv2d))
              and name.rpartition(".")[2] not in _NOT_FEATURES):
            names.append(name)
    return names


def select_modules(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """The module names of ``model`` matching any of the glob ``patterns``, in registration order.

    ``None`` gives :func:`default_modules`. Matching is :func:`fnmatch.fnmatchcase` on the dotted names of
    ``named_modules()`` (``"dfe1.*"``, ``"*.dconv"``, ``"body.5"``).

    Raises:
        ValueError: a pattern matches no module; the message lists the closest names.

    >>> select_modules(DCB(4), ["conv*"])
    ['conv1', 'conv2']
    """
    if patterns is None:
        return default_modules(model)
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [name for name, _ in model.named_modules() if name]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=6, cutoff=0.3)
            hint = f"close names: {', '.join(close)}" if close else f"its modules are e.g. {', '.join(names[:6])}"
            raise ValueError(f"module pattern {pattern!r} matches no module of {type(model).__name__}; {hint}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def expected_channels(model: nn.Module) -> int | None:
    """The image channels ``model`` takes: its ``in_channels`` attribute, else its first ``nn.Conv2d``'s; ``None`` if neither."""
    channels = getattr(model, "in_channels", None)
    if isinstance(channels, int) and not isinstance(channels, bool):
        return channels
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def kernel_highpass_matrix(kernel_size: int, cutoff: float = DEFAULT_CUTOFF, grid: int = 64) -> torch.Tensor:
    """``Q (Tensor[k², k²], float64)`` with ``wᵀQw`` the energy of a ``k×k`` kernel's response above ``cutoff``.

    ``Q[p, q] = mean over f of [|f| > f_c] cos(2π f·(p − q))`` on a ``grid×grid`` frequency grid, taps ``p`` row-major
    at unit spacing. With no cutoff ``Q`` would be the identity (Parseval), so ``wᵀQw / Σ w²`` is a share in ``[0, 1]``.

    >>> q = kernel_highpass_matrix(3); q.shape, bool((q - q.T).abs().max() < 1e-12)
    (torch.Size([9, 9]), True)
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
    if grid < kernel_size:
        raise ValueError(f"grid ({grid}) must be at least kernel_size ({kernel_size}) for Parseval to hold")
    f = torch.fft.fftfreq(grid, dtype=torch.float64)
    keep = (radial_frequency(grid, grid) > cutoff).to(torch.float64)
    taps = torch.arange(kernel_size, dtype=torch.float64)
    dy = (taps[:, None] - taps[None, :]).repeat_interleave(kernel_size, 0).repeat_interleave(kernel_size, 1)
    dx = (taps[:, None] - taps[None, :]).repeat(kernel_size, kernel_size)
    phase = 2 * math.pi * (dy[..., None, None] * f[:, None] + dx[..., None, None] * f[None, :])
    return (torch.cos(phase) * keep).mean(dim=(-2, -1))


def landmark_pixels(image: torch.Tensor, margin: int = 8) -> dict[str, tuple[int, int]]:
    """Three pixels of an image worth showing kernels at: its strongest edge, its flattest patch and its centre.

    The edge is the maximum of the gradient magnitude of the channel-mean image blurred by a 5×5 box; the flat
    patch the minimum of the 9×9 local standard deviation. Both stay ``margin`` pixels from the border.

    Args:
        image (Tensor[C, H, W] or Tensor[1, C, H, W]): the clean (or noisy) image.

    Returns:
        ``{"edge": (y, x), "flat": (y, x), "centre": (y, x)}``.
    """
    x = image.detach().float().cpu()
    x = x[0] if x.dim() == 4 else x
    if x.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(image.shape)}")
    h, w = x.shape[-2:]
    grey = x.mean(dim=0)[None, None]
    blurred = F.avg_pool2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    gy, gx = torch.gradient(blurred[0, 0])
    magnitude = torch.sqrt(gy.square() + gx.square())
    mean = F.avg_pool2d(F.pad(grey, (4, 4, 4, 4), mode="replicate"), 9, stride=1)
    square = F.avg_pool2d(F.pad(grey.square(), (4, 4, 4, 4), mode="replicate"), 9, stride=1)
    spread = (square - mean.square()).clamp_min(0)[0, 0]
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[min(margin, h // 2): max(h - margin, h // 2 + 1), min(margin, w // 2): max(w - margin, w // 2 + 1)] = True

    def where(values: torch.Tensor) -> tuple[int, int]:
        index = int(values.flatten().argmax())
        return index // w, index % w

    return {
        "edge": where(torch.where(inner, magnitude, torch.tensor(-math.inf))),
        "flat": where(torch.where(inner, -spread, torch.tensor(-math.inf))),
        "centre": (h // 2, w // 2),
    }


def _stats(t: object, cutoff: float, window: str | None, keep_full: bool) -> MapStats | None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
        return None
    t = t.detach()
    if t.shape[-2] < 2 or t.shape[-1] < 2:
        nan = float("nan")
        return MapStats(tuple(t.shape), t.mean(dim=1).float().cpu(), nan, nan, torch.full((_SPECTRUM_BINS,), nan))
    summary = spectral_summary(t, cutoff, _SPECTRUM_BINS, window)
    return MapStats(
        shape=tuple(t.shape),
        mean_map=t.mean(dim=1).float().cpu(),
        hf_share=summary.share,
        energy=summary.energy,
        spectrum=summary.power.float(),
        full=t.cpu().clone() if keep_full else None,
    )


def _kernel_maps(
    name: str, generator: str, kernels: torch.Tensor, k: int, q: torch.Tensor,
    pixels: dict[tuple[int, int], tuple[int, int]] | None, image_size: tuple[int, int],
) -> KernelMaps:
    b, ck2, h, w = kernels.shape
    if ck2 % (k * k):
        raise ValueError(f"{generator} returned {ck2} channels, not a multiple of k² = {k * k} for {name}")
    c = ck2 // (k * k)
    kern = kernels.detach().view(b, c, k * k, h, w)
    q = q.to(device=kern.device, dtype=kern.dtype)
    energy = torch.zeros(b, h, w, dtype=kern.dtype, device=kern.device)
    high = torch.zeros_like(energy)
    gain = torch.zeros_like(energy)
    for ch in range(c):  # one channel at a time: no kernels-sized temporary
        wk = kern[:, ch]
        energy += wk.square().sum(dim=1)
        high += (wk * torch.einsum("pq,bqhw->bphw", q, wk)).sum(dim=1)
        gain += wk.sum(dim=1)
    at = {}
    for (y, x) in pixels or {}:
        yy, xx = y * h // image_size[0], x * w // image_size[1]
        at[(y, x)] = kern[0, :, :, yy, xx].reshape(c, k, k).float().cpu().clone()
    return KernelMaps(
        name=name, generator=generator, kernel_size=k, channels=c,
        energy=(energy / c).float().cpu(),
        highpass=(high / energy.clamp_min(torch.finfo(energy.dtype).tiny)).clamp(0, 1).float().cpu(),
        dc_gain=(gain / c).float().cpu(),
        at=at,
    )


def _as_batch(image: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or not image.is_floating_point():
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a floating-point image Tensor[C, H, W] or Tensor[B, C, H, W], got {got}")
    x = image[None] if image.dim() == 3 else image
    channels = expected_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{type(model).__name__} expects {channels}-channel images (B, {channels}, H, W), got an image with "
            f"{x.shape[1]} channel(s) (shape {tuple(image.shape)}); convert it to {channels} channel(s) first"
        )
    return x


def capture(
    model: nn.Module,
    image: torch.Tensor,
    modules: Sequence[str] | None = None,
    *,
    kernels: bool = True,
    pixels: Sequence[tuple[int, int]] | None = None,
    cutoff: float = DEFAULT_CUTOFF,
    window: str | None = "hann",
    keep_full: bool = False,
) -> Capture:
    """Run ``model(image)`` once and record what the chosen modules received, returned and predicted.

    Args:
        model (nn.Module): any model taking ``Tensor[B, C, H, W]``; left as it was (see the module docstring).
        image (Tensor[C, H, W] or Tensor[B, C, H, W]): on the model's device, with the channels it expects.
        modules (Sequence[str], optional): glob patterns of module names (:func:`select_modules`); ``None``
            takes :func:`default_modules`.
        kernels (bool): also capture the kernels of each chosen module that has a ``kernel_conv`` (DConv, MDCB),
            by a forward hook on that generator.
        pixels (Sequence[(y, x)], optional): image pixels at which to keep the whole kernels (:attr:`KernelMaps.at`).
        cutoff (float): the radial frequency of the high-frequency shares, in cycles/pixel.
        window (str, optional): ``"hann"`` or ``None``, as in :mod:`dynfilter.spectral`.
        keep_full (bool): also keep every captured input and output tensor (memory: all of them, on the CPU).

    Returns:
        Capture: activations and kernel maps in call order, and the model's output (detached, on the CPU).

    >>> c = capture(DCB(4), torch.randn(4, 16, 16), ["conv2"])
    >>> list(c.activations), c.activations["conv2"].output.mean_map.shape
    (['conv2'], torch.Size([1, 16, 16]))
    """
    x = _as_batch(image, model)
    names = select_modules(model, modules)
    by_name = dict(model.named_modules())
    h_img, w_img = x.shape[-2:]
    for y, xx in pixels or ():
        if not (0 <= y < h_img and 0 <= xx < w_img):
            raise ValueError(f"pixel (y, x) = {(y, xx)} is outside the {h_img}×{w_img} image")
    pixel_map = {(int(y), int(xx)): (int(y), int(xx)) for y, xx in pixels or ()}
    activations: dict[str, Activation] = {}
    kernel_maps: dict[str, KernelMaps] = {}
    handles = []

    def activation_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name in activations:
                activations[name].calls += 1
                return
            first = args[0] if args else None
            activations[name] = Activation(name, type(module).__name__, _stats(first, cutoff, window, keep_full),
                                           _stats(output, cutoff, window, keep_full), finished=len(activations))
        return hook

    def kernel_hook(name: str, generator: str, k: int, q: torch.Tensor):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if name not in kernel_maps:
                kernel_maps[name] = _kernel_maps(name, generator, output, k, q, pixel_map, (h_img, w_img))
        return hook

    expected_kernels = []
    q_cache: dict[int, torch.Tensor] = {}
    modes = {m: m.training for m in model.modules()}
    try:
        for name in names:
            module = by_name[name]
            handles.append(module.register_forward_hook(activation_hook(name)))
            generator = getattr(module, "kernel_conv", None)
            if kernels and isinstance(generator, nn.Module):
                k = int(getattr(module, "kernel_size", 3))
                q = q_cache.setdefault(k, kernel_highpass_matrix(k, cutoff))
                handles.append(generator.register_forward_hook(kernel_hook(name, f"{name}.kernel_conv", k, q)))
                expected_kernels.append(name)
        model.eval()
        # Unfused and without gradients, the kernel generators run as modules (see layers/_pointwise.py).
        with torch.no_grad(), unfused(model):
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    missed = [n for n in expected_kernels if n in activations and n not in kernel_maps]
    if missed:
        warnings.warn(f"the kernel generators of {missed} did not run as modules; their kernels were not captured",
                      stacklevel=2)
    out = output.detach().cpu() if isinstance(output, torch.Tensor) else output
    ordered = {n: activations[n] for n in names if n in activations}  # registration order: a block before its convs
    return Capture(ordered, kernel_maps, out, float(cutoff), window)
