"""``dynfilter eval``: PSNR/SSIM of a checkpoint on test sets under a recorded protocol, one row per image.

Example::

    dynfilter eval --model adfnet --checkpoint adfnet_n50.pt --sets CBSD68,Kodak24 --sigma 50 \\
        --data-root ../shared/data --out rows.csv
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import (
    add_data_root_argument,
    add_device_argument,
    add_inference_arguments,
    add_kwargs_argument,
    parse_kwargs,
)

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "measure PSNR/SSIM of a checkpoint on test sets (per-set summary, per-image CSV rows)"
DESCRIPTION = (
    "Add AWGN to each clean test image, denoise it with the checkpoint's model and measure "
    "PSNR/SSIM. The defaults are the published colour protocol: noise seed 20 before every image, noisy input "
    "not clipped, reflect padding to the model's size multiple, output clamped to [0, 1], PSNR/SSIM (Gaussian "
    "11x11, sigma 1.5) on 8-bit RGB with no border. Every row records these fields."
)
EPILOG = (
    "example: dynfilter eval --model dncnn --checkpoint ckpt.pt --sets CBSD68,Kodak24 --sigma 50 "
    "--data-root ../shared/data --out rows.csv"
)


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    parser.add_argument("--model", help="registered model name; optional when the checkpoint records model_name")
    add_kwargs_argument(parser)
    parser.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True,
                        help="a state_dict, or a dict with 'model' (and optionally 'model_name', 'model_kwargs'); "
                        "--weights is the same option, for a published state dict (give --model)")
    parser.add_argument("--sets", default="builtin",
                        help="comma-separated set names (builtin, CBSD68, Kodak24, McMaster, Set12, BSD68, ...) or "
                        "image folders (default: builtin)")
    add_data_root_argument(parser)
    parser.add_argument("--sigma", type=float, default=50.0, help="AWGN sigma on the 0-255 scale (default 50)")
    parser.add_argument("--seed", type=int, default=20, help="noise seed (default 20, as published)")
    parser.add_argument("--seed-mode", choices=("fixed", "per_image"), default="fixed",
                        help="fixed: the same seed before every image (published); per_image: seed + index")
    parser.add_argument("--clip", action="store_true", help="clamp the noisy input to [0, 1]")
    parser.add_argument("--quantize", action="store_true", help="round the noisy input to 8 bits (implies --clip)")
    parser.add_argument("--pad-multiple", type=int, help="pad to this multiple (default: the model's size_multiple)")
    parser.add_argument("--metric-space", choices=("rgb", "y"), default="rgb",
                        help="rgb: all channels (default); y: MATLAB rgb2ycbcr luma")
    parser.add_argument("--border", type=int, default=0, help="pixels cropped from each side before measuring")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check)")
    add_inference_arguments(parser)
    add_device_argument(parser)
    parser.add_argument("--out", help="write the per-image rows to this CSV file")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from experiments._io import atomic_write
    from experiments.checkpoint import model_from_checkpoint
    from experiments.data import open_dataset
    from experiments.metrics import ImageMetrics
    from experiments.protocol import TestProtocol, evaluate, summarize
    from experiments.run import resolve_device

    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--sets {args.sets!r} names no set")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    protocol = TestProtocol(
        sigma=args.sigma, seed=args.seed, seed_mode=args.seed_mode, clip=args.clip, quantize=args.quantize,
        pad_multiple=args.pad_multiple, metrics=ImageMetrics(space=args.metric_space, border=args.border),
        tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
    )
    kwargs = parse_kwargs(args.kwargs) if args.kwargs else None
    model, info = model_from_checkpoint(args.checkpoint, resolve_device(args.device), model_name=args.model,
                                        model_kwargs=kwargs)
    channels = int(getattr(model, "in_channels", 3))
    # Open every set before the slow part, so that a wrong name fails at once.
    datasets = [open_dataset(name, args.data_root, channels=channels) for name in names]

    print(f"{info['model_name']}{info['model_kwargs'] or ''} from {args.checkpoint}; sigma {args.sigma:g}, "
          f"seed {args.seed} ({args.seed_mode}), metrics on {args.metric_space}, border {args.border}")
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        set_rows = evaluate(model, dataset, protocol, limit=args.limit)
        s = summarize(set_rows)[0]
        print(f"{s['set']:<20} {s['images']:>4} images  PSNR {s['psnr']:.4f} dB  SSIM {s['ssim']:.4f}")
        rows += set_rows
    for row in rows:
        row.update(checkpoint=str(args.checkpoint), model=info["model_name"], model_kwargs=repr(info["model_kwargs"]))
    if args.out:
        atomic_write(args.out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
        print(f"per-image rows: {args.out}")
    return {"rows": rows, "summary": summarize(rows)}
