"""``dynfilter export MODEL --out model.onnx``: export a model to ONNX and measure onnxruntime against PyTorch.

The model is a registered backbone (``--kwargs``), optionally rewritten by a surgery ``--recipe``, or
the model a ``--checkpoint`` holds. The graph keeps batch, height and width symbolic (``--static``
fixes them); see :func:`dynfilter.export.export_onnx`. After writing, onnxruntime (CPU) runs the file
on one random image of ``--check-size`` and the max absolute difference from PyTorch is printed.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_model_arguments, add_recipe_arguments, parse_kwargs
from .profile import parse_size

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

HELP = "export a model to ONNX (dynamic batch and size) and print its parity with PyTorch"
DESCRIPTION = (
    "Export a registered backbone (optionally rewritten by a surgery recipe, or the model of a checkpoint) "
    "to ONNX with the dynamic filter and the deformable conv written in standard ONNX operators, then run "
    "the file with onnxruntime on a random image and print the max absolute difference from PyTorch. "
    "Needs the onnx extra: pip install 'dynfilter[onnx]'."
)
EPILOG = (
    "examples: dynfilter export adfnet --out adfnet.onnx\n"
    "          dynfilter export dncnn --recipe dncnn_dconv --kwargs 'depth=17' --out dncnn_dconv.onnx\n"
    "          dynfilter export --checkpoint runs/x/checkpoint.pt --out x.onnx"
)
PARSER_OPTIONS = {"formatter_class": argparse.RawDescriptionHelpFormatter}


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    add_model_arguments(parser, required=False)
    add_recipe_arguments(parser)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint from dynfilter train / sweep; MODEL is optional when it records its model")
    parser.add_argument("--out", required=True, metavar="PATH", help="the .onnx file to write")
    parser.add_argument("--check-size", default="37x53", metavar="HxW",
                        help="size of the random image the parity is measured on (default 37x53)")
    parser.add_argument("--example-size", default="64x64", metavar="HxW",
                        help="size of the example traced (default 64x64); with --static, the only size the file takes")
    parser.add_argument("--static", action="store_true", help="fix batch 1 and --example-size instead of symbolic sizes")
    parser.add_argument("--no-optimize", action="store_true", help="skip the exporter's graph optimiser (faster)")


def _build(args: argparse.Namespace) -> tuple[Any, str]:
    """The model to export and how it was made, in words."""
    from experiments.checkpoint import build_model, model_from_checkpoint

    kwargs = parse_kwargs(args.kwargs)
    recipe_kwargs = parse_kwargs(args.recipe_kwargs)
    if args.checkpoint is not None:
        if args.recipe is not None:
            raise ValueError("--recipe does not go with --checkpoint: the checkpoint records its own surgery")
        model, state = model_from_checkpoint(args.checkpoint, "cpu", model_name=args.model, model_kwargs=kwargs or None)
        what = f"{state['model_name']} from {args.checkpoint}"
        if state.get("recipe"):
            what += f" (recipe {state['recipe']})"
        return model, what
    if args.model is None:
        raise ValueError("give MODEL (a registered model name) or --checkpoint PATH")
    model = build_model(args.model, kwargs, args.recipe, recipe_kwargs or None)
    what = args.model + (f" {kwargs}" if kwargs else "") + (f" + recipe {args.recipe}" if args.recipe else "")
    return model, what


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    import torch

    try:
        from dynfilter.export import export_onnx, onnx_parity
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"dynfilter export needs the onnx extra (pip install 'dynfilter[onnx]'): {exc}") from None

    check_h, check_w = parse_size(args.check_size)
    example_h, example_w = parse_size(args.example_size)
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out must name a .onnx file, got {out}")
    model, what = _build(args)
    model = model.eval()
    channels = int(getattr(model, "in_channels", 3))
    dynamic = not args.static
    if not dynamic and (check_h, check_w) != (example_h, example_w):
        check_h, check_w = example_h, example_w  # a static graph takes only the example's size
    out.parent.mkdir(parents=True, exist_ok=True)
    program = export_onnx(
        model, torch.rand(1, channels, example_h, example_w), out, dynamic=dynamic, optimize=not args.no_optimize
    )
    opset = next(o.version for o in program.model_proto.opset_import if o.domain == "")
    torch.manual_seed(0)
    diff = onnx_parity(out, model, torch.rand(1, channels, check_h, check_w))
    sizes = "dynamic batch, height and width" if dynamic else f"static 1×{channels}×{example_h}×{example_w}"
    print(f"wrote {out} ({what}; ONNX opset {opset}; {sizes})")
    image = f"1×{channels}×{check_h}×{check_w}"
    print(f"parity: max |onnxruntime - PyTorch| = {diff:.3g} on a random {image} image (float32)")
    return {"out": str(out), "model": what, "opset": opset, "dynamic": dynamic,
            "check_size": [check_h, check_w], "max_abs_diff": diff}
