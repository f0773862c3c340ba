"""``dynfilter profile MODEL [--kwargs K=V,…] [--size HxW]``: parameters, MACs and FLOPs per top-level module."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_model_arguments, parse_kwargs

__all__ = ["HELP", "DESCRIPTION", "arguments", "run", "parse_size"]


HELP = "count a model's parameters, MACs and FLOPs per top-level module"
DESCRIPTION = (
    "Build a registered backbone and count its parameters (all of them) and multiply-accumulates "
    "on one input of the given size, per top-level module; FLOPs = 2 x MACs. Dynamic filtering and deformable "
    "convs are counted (see docs/complexity.md); the ops counted as zero are listed."
)
EPILOG = "example: dynfilter profile adfnet --size 128x128"


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    add_model_arguments(parser)
    parser.add_argument("--size", default="128x128", help="input H x W, e.g. 128x128 or 256 (default 128x128)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or ``"N"`` for a square) to ``(H, W)``.

    >>> parse_size("480x320"), parse_size("64")
    ((480, 320), (64, 64))
    """
    parts = text.lower().replace("×", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"--size must look like HxW (e.g. 128x128) or N, got {text!r}")
    return sizes[0], sizes[1]


def run(args: argparse.Namespace) -> Any:
    import backbones
    from dynfilter.complexity import profile

    h, w = parse_size(args.size)
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    kwargs = parse_kwargs(args.kwargs)
    model = backbones.build(args.model, **kwargs)
    result = profile(model, (args.batch, int(getattr(model, "in_channels", 3)), h, w))
    print(f"{args.model} ({type(model).__name__})" + (f" with {kwargs}" if kwargs else ""))
    print(result.table())
    return result
