"""``dynfilter surgery {plan,apply} MODEL --recipe NAME``: print a surgery plan for a backbone, or apply it.

``plan`` builds the registered model, runs the recipe and prints the plan; ``apply`` also performs it and
writes the rewritten model's state dict to ``--out``. To use that file, rebuild the same model, apply the
same recipe and load it (strictly).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_model_arguments, add_recipe_arguments, parse_kwargs

__all__ = ["HELP", "DESCRIPTION", "arguments", "run"]

def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_recipe_arguments(parser, required=True)
    parser.add_argument(
        "--weights", default=None, metavar="PATH", help="state dict to load (strictly) into MODEL before the surgery"
    )


HELP = "swap a backbone's static convs or blocks for dynamic ones with a recipe"
DESCRIPTION = (
    "Print the plan a surgery recipe makes for a registered backbone (plan), or perform it and "
    "save the rewritten model's state dict (apply)."
)
EPILOG = (
    "examples: dynfilter surgery plan dncnn --recipe dncnn_dconv --kwargs 'depth=17'\n"
    "          dynfilter surgery apply adfnet --recipe adfnet_ablation --recipe-kwargs 'variant=wo_dcb' "
    "--out wo_dcb.pt"
)
PARSER_OPTIONS = {"formatter_class": argparse.RawDescriptionHelpFormatter}


def arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of this subcommand."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_common(actions.add_parser("plan", help="print the plan; change nothing"))
    apply = actions.add_parser("apply", help="perform the plan and write the rewritten model's state dict")
    _add_common(apply)
    apply.add_argument("--out", required=True, metavar="PATH", help="where to write the state dict (torch.save)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import inspect
    from pathlib import Path

    import torch

    import backbones
    from dynfilter import surgery

    from .._io import atomic_write

    recipe = surgery.recipes.get(args.recipe)
    kwargs = parse_kwargs(args.kwargs)
    recipe_kwargs = parse_kwargs(args.recipe_kwargs)
    model = backbones.build(args.model, **kwargs)
    if args.weights is not None:
        path = Path(args.weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights: no such file {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"--weights {path} does not fit {args.model} {kwargs}: {exc}") from None
    try:
        inspect.signature(recipe).bind(model, **recipe_kwargs)
    except TypeError as exc:
        raise ValueError(f"--recipe-kwargs {args.recipe_kwargs!r} do not fit {args.recipe}: {exc}") from None
    plan = recipe(model, **recipe_kwargs)
    print(plan)
    result: dict[str, Any] = {
        "model": args.model,
        "kwargs": kwargs,
        "recipe": args.recipe,
        "recipe_kwargs": recipe_kwargs,
        "rows": plan.rows(),
        "params_before": plan.params_before,
        "params_after": plan.params_after,
    }
    if args.action == "apply":
        rewritten = plan.apply()
        out = atomic_write(args.out, lambda tmp: torch.save(rewritten.state_dict(), tmp))
        print(f"wrote the rewritten state dict ({len(rewritten.state_dict())} entries) to {out}")
        result["out"] = str(out)
    return result
