"""How much tiling changes models that pool over the whole image, and what it saves in memory.

``python benchmarks/tiling.py [--checkpoint CKPT] [--set Kodak24] [--images 6] [--tiles 64 128 256]
[--overlap 32] [--adfnet-images 2] [--memory-side 2048]`` prints three markdown tables:

1. **Trained model, tiled against whole.** The model of ``--checkpoint`` (e.g. a DnCNN + DConv run of the
   standard sweep: SEKG's channel branch pools over the whole input) evaluated under the published
   protocol (:class:`experiments.protocol.TestProtocol` with ``sigma``; ``evaluate``) on the first
   ``--images`` images of ``--set``, whole and with each ``--tile``: mean PSNR, its change, and how far
   the tiled outputs are from the whole ones (max abs, PSNR of tiled against whole).
2. **ADFNet, random weights.** ADFNet (colour, base widths; deformable offsets made non-zero as in the
   benchmarks) on the first ``--adfnet-images`` noisy images: tiled against whole outputs only. Random
   weights show how far the global pooling of SEKG and MFI can move an output; not how a trained ADFNet's
   PSNR changes.
3. **Peak memory.** ADFNet inference on one random ``--memory-side``² colour image, whole and tiled
   (``--memory-tile``, ``--overlap``): tensor bytes from :func:`experiments.bench.harness.peak_memory`
   (torch's allocations above those held at the start; not the Python process's RSS) and seconds.

Results: ``docs/deploy.md`` ("Tiled inference").
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from experiments.bench.harness import BenchConfig, Section, format_markdown, peak_memory
from experiments.bench.models import benchmark_adfnet
from experiments.data import ImageSet, open_dataset
from experiments.noise import image_seed
from experiments.protocol import TestProtocol, denoise, evaluate
from experiments.tiling import denoise_tiled

_MIB = 2**20


def _agreement(whole: torch.Tensor, tiled: torch.Tensor) -> tuple[float, float]:
    """``(max |tiled − whole|, PSNR of tiled against whole in dB)`` for images in ``[0, 1]``."""
    mse = float((tiled - whole).pow(2).mean())
    return float((tiled - whole).abs().max()), (math.inf if mse == 0 else 10 * math.log10(1 / mse))


def trained_section(
    model: nn.Module, name: str, dataset: ImageSet, images: int, tiles: list[int], overlap: int, sigma: float
) -> Section:
    """Mean PSNR under the protocol, whole and tiled, and the tiled outputs against the whole ones."""
    set_name = dataset.name
    multiple = int(getattr(model, "size_multiple", 1))
    whole = evaluate(model, dataset, TestProtocol(sigma=sigma), limit=images)
    base = sum(r["psnr"] for r in whole) / len(whole)
    protocol = TestProtocol(sigma=sigma)
    noise = protocol.noise()
    noisy = [noise(dataset[i], seed=image_seed(protocol.seed, i, protocol.seed_mode))[None] for i in range(images)]
    with torch.inference_mode():
        outs = [denoise(model, x, multiple) for x in noisy]
    rows = [{"tile": "whole", "overlap": "–", "mean PSNR dB": base, "Δ PSNR dB": 0.0, "max abs Δ vs whole": 0.0, "PSNR tiled vs whole dB": math.inf}]
    for tile in tiles:
        tiled_rows = evaluate(model, dataset, TestProtocol(sigma=sigma, tile=tile, tile_overlap=overlap), limit=images)
        mean = sum(r["psnr"] for r in tiled_rows) / len(tiled_rows)
        with torch.inference_mode():
            agree = [_agreement(o, denoise_tiled(model, x, tile, overlap, multiple)) for o, x in zip(outs, noisy)]
        rows.append(
            {
                "tile": tile,
                "overlap": overlap,
                "mean PSNR dB": mean,
                "Δ PSNR dB": mean - base,
                "max abs Δ vs whole": max(a for a, _ in agree),
                "PSNR tiled vs whole dB": min(p for _, p in agree),
            }
        )
    note = (
        f"{name}; {set_name}, first {images} images, σ = {sigma:g}, TestProtocol(sigma={sigma:g}) (noise seed "
        f"{protocol.seed}, {protocol.seed_mode}); outputs clamped to [0, 1]; max and worst PSNR over the images."
    )
    return Section(f"Tiled against whole: {name}", rows, note=note)


def adfnet_section(dataset: ImageSet, images: int, tiles: list[int], overlap: int, sigma: float) -> Section:
    """Random-weight ADFNet: tiled against whole outputs on noisy images of ``dataset``."""
    set_name = dataset.name
    torch.manual_seed(0)
    model, _, _ = benchmark_adfnet(BenchConfig())
    model.eval()
    protocol = TestProtocol(sigma=sigma)
    noise = protocol.noise()
    noisy = [noise(dataset[i], seed=image_seed(protocol.seed, i, protocol.seed_mode))[None] for i in range(images)]
    with torch.inference_mode():
        outs = [denoise(model, x, model.size_multiple) for x in noisy]
        spread = [float(o.std()) for o in outs]
        rows = []
        for tile in tiles:
            agree = [_agreement(o, denoise_tiled(model, x, tile, overlap, model.size_multiple)) for o, x in zip(outs, noisy)]
            rows.append(
                {"tile": tile, "overlap": overlap, "max abs Δ vs whole": max(a for a, _ in agree), "PSNR tiled vs whole dB": min(p for _, p in agree)}
            )
    note = (
        f"ADFNet (base widths), random weights (torch.manual_seed(0), offsets ~N(0, 0.01²) weights); {set_name}, first "
        f"{images} noisy images at σ = {sigma:g}; outputs clamped to [0, 1] (their std over pixels: "
        f"{', '.join(f'{s:.3f}' for s in spread)})."
    )
    return Section("Tiled against whole: ADFNet, random weights", rows, note=note)


def memory_section(side: int, tile: int, overlap: int) -> Section:
    """Peak tensor memory and time of ADFNet on one ``side``² colour image, whole and tiled."""
    torch.manual_seed(0)
    model, _, _ = benchmark_adfnet(BenchConfig())
    model.eval()
    x = torch.rand(1, 3, side, side)
    runs = {"whole": lambda: denoise(model, x, model.size_multiple), f"tile {tile}, overlap {overlap}": lambda: denoise_tiled(model, x, tile, overlap, model.size_multiple)}
    rows = []
    for name, call in runs.items():
        start = time.perf_counter()
        with torch.inference_mode():
            peak = peak_memory(call)
        rows.append({"inference": name, "input": f"1×3×{side}×{side}", "peak MiB": peak / _MIB, "s (under the profiler)": time.perf_counter() - start})
    note = f"ADFNet (base widths), torch.inference_mode(), {torch.get_num_threads()} threads; peak = torch tensor bytes above those held at the start."
    return Section("Peak memory: ADFNet, whole against tiled", rows, note=note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint (dynfilter train); skipped if not given")
    parser.add_argument("--set", default="Kodak24", help="standard set or folder (default Kodak24)")
    parser.add_argument("--data-root", help="folder holding the standard sets (default: $DYNFILTER_DATA)")
    parser.add_argument("--images", type=int, default=6, help="images of --set for the trained model (default 6)")
    parser.add_argument("--adfnet-images", type=int, default=2, help="images for the random ADFNet (0 skips; default 2)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=50.0)
    parser.add_argument("--memory-side", type=int, default=2048, help="0 skips the memory table (default 2048)")
    parser.add_argument("--memory-tile", type=int, default=256)
    args = parser.parse_args(argv)
    sections = []
    if args.checkpoint or args.adfnet_images:
        dataset = open_dataset(args.set, args.data_root, channels=3)
    if args.checkpoint:
        from experiments.checkpoint import model_from_checkpoint

        model, checkpoint = model_from_checkpoint(args.checkpoint)
        name = f"{checkpoint.get('run_id', args.checkpoint)} (trained)"
        sections.append(trained_section(model, name, dataset, args.images, args.tiles, args.overlap, args.sigma))
        print(format_markdown(sections[-1]), flush=True)
    if args.adfnet_images:
        sections.append(adfnet_section(dataset, args.adfnet_images, args.tiles, args.overlap, args.sigma))
        print(format_markdown(sections[-1]), flush=True)
    if args.memory_side:
        sections.append(memory_section(args.memory_side, args.memory_tile, args.overlap))
        print(format_markdown(sections[-1]), flush=True)


if __name__ == "__main__":
    main()
