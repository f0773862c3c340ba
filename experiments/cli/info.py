"""``dynfilter info MODEL [--kwargs K=V,…]``: a registered model's module tree and parameter count."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_model_arguments, parse_kwargs

__all__ = ["HELP", "DESCRIPTION", "arguments", "run", "module_summary"]


HELP = "print a model's module tree (type and parameters per module) and its parameter count"
DESCRIPTION = (
    "Build a registered backbone and print its module tree summary and parameter count. "
    "Without MODEL, list the registered models."
)
EPILOG = "example: dynfilter info dncnn --kwargs 'depth=5,channels=32'"


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--depth", type=int, default=1, help="levels of the module tree to show (default: 1, the top-level children)"
    )


def module_summary(model: Any, depth: int = 1) -> list[dict[str, Any]]:
    """Rows ``{"name", "type", "parameters"}`` for every submodule down to ``depth`` levels, in order.

    A row's parameter count includes its descendants.
    """
    rows: list[dict[str, Any]] = []

    def walk(module: Any, prefix: str, level: int) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            rows.append(
                {
                    "name": full,
                    "type": type(child).__name__,
                    "parameters": sum(p.numel() for p in child.parameters()),
                }
            )
            if level < depth:
                walk(child, f"{full}.", level + 1)

    walk(model, "", 1)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import backbones

    if args.model is None:
        names = backbones.available()
        print("\n".join(names))
        return {"models": names}
    if args.depth < 1:
        raise ValueError(f"--depth must be at least 1, got {args.depth}")
    kwargs = parse_kwargs(args.kwargs)
    model = backbones.build(args.model, **kwargs)
    rows = module_summary(model, args.depth)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    width = max([len(r["name"]) + 2 * r["name"].count(".") for r in rows] + [len("module"), len("trainable")])
    type_width = max([len(r["type"]) for r in rows] + [len("type")])
    print(f"{args.model} ({type(model).__name__})" + (f" with {kwargs}" if kwargs else ""))
    print(f"{'module':<{width}}  {'type':<{type_width}}  {'parameters':>12}")
    for r in rows:
        indent = "  " * r["name"].count(".")
        print(f"{indent + r['name']:<{width}}  {r['type']:<{type_width}}  {r['parameters']:>12,}")
    print(f"{'total':<{width}}  {'':<{type_width}}  {total:>12,}")
    if trainable != total:
        print(f"{'trainable':<{width}}  {'':<{type_width}}  {trainable:>12,}")
    return {"model": args.model, "kwargs": kwargs, "modules": rows, "parameters": total, "trainable": trainable}
