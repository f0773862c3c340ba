"""``dynfilter denoise IN OUT --checkpoint CKPT``: denoise an image (or a folder of images) with a trained model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._args import add_device_argument, add_inference_arguments, add_kwargs_argument, parse_kwargs

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "denoise an image or a folder of images with a trained checkpoint"
DESCRIPTION = (
    "Denoise IN (an image file or a folder of images) into OUT (a file, or a folder for folder "
    "input) with a checkpoint written by `dynfilter train` or `dynfilter sweep`. Any size; grey or colour "
    "input is converted to the model's channels (BT.601 luma, or grey repeated), with a note. Outputs are "
    "8-bit PNG (or the format of OUT's extension)."
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    parser.add_argument("input", metavar="IN", help="noisy image file or folder")
    parser.add_argument("output", metavar="OUT", help="output file (or folder)")
    parser.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True,
                        help="checkpoint.pt from dynfilter train / sweep, or a bare or published state dict "
                        "(--weights is the same option; give --model for a state dict)")
    parser.add_argument("--model", help="registered model name; optional when the checkpoint records model_name")
    add_kwargs_argument(parser)
    parser.add_argument("--add-noise", type=float, metavar="SIGMA",
                        help="treat IN as clean: add AWGN of this sigma first and report PSNR against IN")
    parser.add_argument("--seed", type=int, default=0, help="seed of --add-noise (default 0)")
    add_inference_arguments(parser)
    add_device_argument(parser, default="cpu")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pathlib import Path

    import torch
    from PIL import Image

    from experiments.checkpoint import model_from_checkpoint
    from experiments.data import IMAGE_EXTENSIONS, convert_channels, read_image, to_tensor
    from experiments.metrics import ImageMetrics, to_uint8
    from experiments.noise import GaussianNoise
    from experiments.protocol import inference
    from experiments.run import resolve_device

    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {src}")
        if dst.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"IN is a folder, so OUT must be a folder too, got the file name {dst}")
        targets = [(f, dst / f"{f.stem}.png") for f in files]
    else:
        if not src.is_file():
            raise FileNotFoundError(f"input image not found: {src}")
        if dst.is_dir() or dst.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"OUT must be an image file name ending in one of {IMAGE_EXTENSIONS}, got {dst}")
        targets = [(src, dst)]
    overwritten = [str(a) for a, b in targets if b.resolve() == a.resolve()]
    if overwritten:
        raise ValueError(f"OUT would overwrite the input image {overwritten[0]}; write the denoised image elsewhere")

    device = resolve_device(args.device)
    kwargs = parse_kwargs(args.kwargs) if args.kwargs else None
    model, state = model_from_checkpoint(args.checkpoint, device, model_name=args.model, model_kwargs=kwargs)
    channels = int(getattr(model, "in_channels", state["model_kwargs"].get("in_channels", 3)))
    multiple = int(getattr(model, "size_multiple", 1))
    denoise_one = inference(model, multiple, tile=args.tile, tile_overlap=args.tile_overlap,
                            self_ensemble=args.self_ensemble)
    noise = GaussianNoise(args.add_noise) if args.add_noise is not None else None
    rows = []
    for path, out_path in targets:
        img = read_image(path)
        if img.shape[2] != channels:
            how = "BT.601 luma" if channels == 1 else "grey repeated in R, G and B"
            print(f"note: {path.name} has {img.shape[2]} channel(s), the model takes {channels}; converting ({how})",
                  file=sys.stderr)
            img = convert_channels(img, channels)
        clean = to_tensor(img)
        noisy = noise(clean, seed=args.seed) if noise is not None else clean
        try:
            with torch.inference_mode():
                out = denoise_one(noisy[None].to(device))[0].cpu()
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; {out_path} not written") from None
        pixels = to_uint8(out).permute(1, 2, 0).numpy()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(out_path)
        row: dict[str, Any] = {"input": str(path), "output": str(out_path), "height": img.shape[0], "width": img.shape[1]}
        message = f"{path} -> {out_path}"
        if noise is not None:
            metrics = ImageMetrics()
            row.update(psnr_noisy=metrics.psnr(noisy, clean), psnr_denoised=metrics.psnr(out, clean))
            message += f"  (sigma {args.add_noise:g}: PSNR {row['psnr_noisy']:.2f} -> {row['psnr_denoised']:.2f} dB)"
        print(message)
        rows.append(row)
    return rows
