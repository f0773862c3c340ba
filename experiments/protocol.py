"""The test protocol: noise each clean image, run the model, measure, and return one row per image.

The default :class:`TestProtocol` is the published colour protocol (``ADFNet_RGB/test.py``, spec §8d):

1. ``noisy = clean + N(0, (σ/255)²)``, drawn on the CPU generator re-seeded with 20 before every
   image; not clipped, not quantised.
2. ``noisy`` is reflect-padded on the bottom and right to the model's ``size_multiple`` (8 for
   ADFNet, 1 for DnCNN/RDN) and the output is cropped back.
3. The output is clamped to ``[0, 1]``.
4. PSNR and SSIM on 8-bit RGB (see :mod:`experiments.metrics`), no border crop.

Not reproduced: the published grey test's seed 1 is available (``seed=1``) but its tiled inference
(ours, ``tile=``, blends tiles with a smooth window, see :mod:`experiments.tiling`) and the colour
test's BGR channel order (spec §11.4) are not. Self-ensemble over the 8 flips and rotations is
available, off by default (``self_ensemble=True``, :mod:`experiments.ensemble`).
Every row records the protocol fields it used (:meth:`TestProtocol.fields`).
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from backbones import pad_to_multiple

from .metrics import ImageMetrics
from .noise import GaussianNoise, image_seed

__all__ = ["TestProtocol", "denoise", "inference", "evaluate", "summarize"]


@dataclass(frozen=True)
class TestProtocol:
    """How noisy inputs are made, fed to the model, and measured.

    Args:
        sigma (float, optional): AWGN ``σ`` on the 0–255 scale; ``None`` for real-noise pairs.
        seed (int): the recorded noise seed.
        seed_mode (str): ``"fixed"`` (the same ``seed`` before every image, as published) or
            ``"per_image"`` (``seed + index``).
        clip (bool): clamp the noisy input to ``[0, 1]``.
        quantize (bool): round the noisy input to 8 bits (implies ``clip``).
        pad_multiple (int, optional): reflect-pad to this multiple; ``None`` uses the model's
            ``size_multiple``.
        metrics (ImageMetrics): PSNR/SSIM settings.
        tile (int, optional): denoise in tiles of this side, blended over ``tile_overlap`` pixels
            (:func:`experiments.tiling.denoise_tiled`); ``None`` (the default) denoises whole images.
            Rows record ``tile`` and ``tile_overlap`` only when tiling.
        tile_overlap (int): pixels shared by adjacent tiles.
        self_ensemble (bool): average the outputs over the 8 flips and rotations of each image
            (:mod:`experiments.ensemble`); rows record ``self_ensemble`` only when it is on.

    >>> TestProtocol(sigma=50).fields()["seed"]
    20
    """

    __test__ = False  # not a pytest test class, despite the name

    sigma: float | None = 50.0
    seed: int = 20
    seed_mode: str = "fixed"
    clip: bool = False
    quantize: bool = False
    pad_multiple: int | None = None
    metrics: ImageMetrics = field(default_factory=ImageMetrics)
    tile: int | None = None
    tile_overlap: int = 32
    self_ensemble: bool = False

    def __post_init__(self) -> None:
        image_seed(self.seed, 0, self.seed_mode)  # validates seed_mode
        if self.tile is not None:
            from .tiling import check_tiling

            check_tiling(self.tile, self.tile_overlap)
        if not isinstance(self.self_ensemble, bool):
            raise ValueError(f"self_ensemble must be True or False, got {self.self_ensemble!r}")
        if self.pad_multiple is not None and (isinstance(self.pad_multiple, bool) or self.pad_multiple < 1):
            raise ValueError(f"pad_multiple must be a positive int or None, got {self.pad_multiple!r}")
        self.noise()  # validates sigma

    def noise(self) -> GaussianNoise | None:
        """The noise model, or ``None`` for real-noise pairs."""
        return None if self.sigma is None else GaussianNoise(self.sigma, clip=self.clip, quantize=self.quantize)

    def multiple_for(self, model: nn.Module) -> int:
        """The padding multiple used with ``model``."""
        return self.pad_multiple if self.pad_multiple is not None else int(getattr(model, "size_multiple", 1))

    def fields(self, model: nn.Module | None = None) -> dict[str, object]:
        """Protocol fields for a result row (``pad_multiple`` resolved against ``model`` when given)."""
        noise = self.noise()
        row: dict[str, object] = (
            noise.fields() if noise is not None else {"noise": "real", "sigma": None, "clip": None, "quantize": None}
        )
        row.update(
            seed=self.seed if noise is not None else None,
            seed_mode=self.seed_mode if noise is not None else None,
            pad_multiple=self.multiple_for(model) if model is not None else self.pad_multiple,
            pad_mode="reflect",
            output_clamp="[0,1]",
        )
        if self.tile is not None:
            row.update(tile=self.tile, tile_overlap=self.tile_overlap)
        if self.self_ensemble:
            row.update(self_ensemble=True)
        row.update(self.metrics.fields())
        return row


def denoise(model: nn.Module, noisy: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Run ``model`` on ``Tensor[B, C, H, W]``: pad to ``multiple``, forward, crop back, clamp to ``[0, 1]``.

    Padding is on the bottom and right, reflecting (replicating on a side too short to reflect);
    see :func:`backbones.pad_to_multiple`.

    Raises:
        ValueError: the input or the model's output holds NaN or Inf. A clamp keeps NaN, and a NaN
            pixel would turn into a NaN PSNR (or a black pixel in a saved image) without a word.
    """
    _check_finite(noisy, "the input image")
    h, w = noisy.shape[-2:]
    out = model(pad_to_multiple(noisy, multiple))[..., :h, :w]
    _check_finite(out, "the model's output", " (the model has diverged, or its weights are damaged)")
    return out.clamp(0.0, 1.0)


def _check_finite(x: torch.Tensor, what: str, hint: str = "") -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} holds {bad} NaN or Inf value(s) of {x.numel()}{hint}")


def inference(
    model: nn.Module, multiple: int = 1, *, tile: int | None = None, tile_overlap: int = 32, self_ensemble: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noisy -> denoised`` for ``Tensor[B, C, H, W]``: :func:`denoise`, in blended tiles when ``tile`` is
    given (:func:`experiments.tiling.denoise_tiled`), averaged over the 8 flips and rotations with
    ``self_ensemble`` (:func:`experiments.ensemble.self_ensemble`). Tile settings are checked here."""
    infer = functools.partial(denoise, model, multiple=multiple)
    if tile is not None:
        from .tiling import check_tiling, denoise_tiled

        check_tiling(tile, tile_overlap, multiple)
        infer = functools.partial(denoise_tiled, model, tile=tile, overlap=tile_overlap, multiple=multiple)
    if self_ensemble:
        from .ensemble import self_ensemble as ensemble

        infer = functools.partial(ensemble, infer)
    return infer


def evaluate(
    model: nn.Module,
    dataset: Any,
    protocol: TestProtocol,
    *,
    set_name: str | None = None,
    limit: int | None = None,
) -> list[dict[str, object]]:
    """Denoise every image of ``dataset`` and measure it; one row per image.

    Args:
        model: maps ``Tensor[1, C, H, W]`` in ``[0, 1]`` to the same shape.
        dataset: an :class:`~experiments.data.ImageSet` (clean images; AWGN is added) or a
            :class:`~experiments.data.PairedImageFolder` (``(noisy, clean)`` pairs; needs ``sigma=None``).
        protocol: see :class:`TestProtocol`.
        set_name: the ``set`` recorded in rows; defaults to ``dataset.name``.
        limit: evaluate only the first ``limit`` images (a quick check; the rows say how many ran).

    Returns:
        list of dicts with ``set, image, index, height, width, channels, conversion`` (the channel
        conversion made on reading, if any), ``psnr, ssim, psnr_noisy, image_seed, seconds`` and the
        protocol fields.
    """
    paired = getattr(dataset, "paired", False)
    noise = protocol.noise()
    if paired and noise is not None:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')} holds real noisy/clean pairs; use sigma=None")
    if not paired and noise is None:
        raise ValueError("sigma=None is only for real noisy/clean pairs; give sigma for a clean image set")
    device = next(iter(model.parameters()), torch.empty(0)).device  # inputs go where the model is
    multiple = protocol.multiple_for(model)
    infer = inference(model, multiple, tile=protocol.tile, tile_overlap=protocol.tile_overlap,
                      self_ensemble=protocol.self_ensemble)
    fields = protocol.fields(model)
    name = set_name or getattr(dataset, "name", "dataset")
    names = getattr(dataset, "names", None)
    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    if count < 1:
        raise ValueError(f"nothing to evaluate: {name} has {len(dataset)} images and limit is {limit}")
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(count):
            seed = None
            if paired:
                noisy, clean = dataset[i]
            else:
                clean = dataset[i]
                seed = image_seed(protocol.seed, i, protocol.seed_mode)
                noisy = noise(clean, seed=seed)
            image = names[i] if names is not None else str(i)
            start = time.perf_counter()
            try:
                with torch.inference_mode():
                    out = infer(noisy[None].to(device))[0].cpu()
            except ValueError as exc:
                raise ValueError(f"{name} image {image!r}: {exc}") from None
            seconds = time.perf_counter() - start
            try:
                scores = protocol.metrics(out, clean)
            except ValueError as exc:
                raise ValueError(f"{name} image {image!r}: {exc}") from None
            c, h, w = clean.shape
            rows.append({
                "set": name,
                "image": image,
                "index": i,
                "height": h,
                "width": w,
                "channels": c,
                "conversion": getattr(dataset, "__dict__", {}).get("conversions", {}).get(i, ""),
                **scores,
                "psnr_noisy": protocol.metrics.psnr(noisy, clean),
                "image_seed": seed,
                "seconds": seconds,
                **fields,
            })
    finally:
        model.train(was_training)
    return rows


def summarize(rows: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    """Mean PSNR/SSIM per set, keeping the protocol fields (which must agree within a set) and the
    channel conversions reading it needed (``conversion``, empty for none)."""
    by_set: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_set.setdefault(str(row["set"]), []).append(row)
    skip = {"image", "index", "height", "width", "channels", "conversion", "psnr", "ssim", "psnr_noisy", "image_seed",
            "seconds"}
    out = []
    for name, group in by_set.items():
        summary: dict[str, object] = {"set": name, "images": len(group)}
        summary["psnr"] = statistics.fmean(float(r["psnr"]) for r in group)
        summary["ssim"] = statistics.fmean(float(r["ssim"]) for r in group)
        # Which conversions reading the set needed (grey to colour, ...), so a number from another protocol shows.
        summary["conversion"] = "; ".join(sorted({str(r["conversion"]) for r in group if r.get("conversion")}))
        for key in group[0]:
            if key in skip or key in summary:
                continue
            values = {repr(r.get(key)) for r in group}
            if len(values) > 1:
                raise ValueError(f"set {name}: rows disagree on protocol field {key!r}: {sorted(values)}")
            summary[key] = group[0][key]
        out.append(summary)
    return out
