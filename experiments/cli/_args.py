"""Argument helpers shared by subcommands: declaring one, the options several take, and ``--kwargs``.

Subcommand modules add these shared options in their ``arguments(parser)``.
"""

from __future__ import annotations

import argparse
import ast
from typing import Any

from experiments.settings import PRECISIONS

__all__ = [
    "parse_kwargs",
    "add_kwargs_argument",
    "add_model_arguments",
    "add_recipe_arguments",
    "add_run_flags",
    "run_flag_paths",
    "add_data_root_argument",
    "add_device_argument",
    "add_inference_arguments",
    "KWARGS_HELP",
]

KWARGS_HELP = (
    "model arguments as comma-separated key=value pairs; values are Python literals (ints, floats, "
    "True/False or true/false, None, tuples in parentheses, lists in brackets) and bare words are strings. "
    "Quote the whole option for the shell, e.g. --kwargs 'depth=5,channels=32' or "
    "--kwargs 'in_channels=1,widths=(16,32,64,128),decoder=(cb,mdcb)'"
)

_WORDS = {"true": True, "false": False, "none": None}


def _value(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):  # a bare word: true/false/none, else the word itself as a string
        return _WORDS.get(node.id.lower(), node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, text)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_value(item, text) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    raise ValueError(
        f"--kwargs {text!r}: unsupported value {ast.unparse(node)!r}; use a number, word, True/False, None or a tuple"
    )


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``"key=value,key=value"`` into a dict of Python values (see :data:`KWARGS_HELP`).

    Nothing is evaluated: the text is parsed as the arguments of a call and only literal nodes are read.

    >>> parse_kwargs("depth=5, channels=32, batch_norm=false, widths=(8,16), decoder=(cb,mdcb)")
    {'depth': 5, 'channels': 32, 'batch_norm': False, 'widths': (8, 16), 'decoder': ('cb', 'mdcb')}
    >>> parse_kwargs("")
    {}
    """
    if text is None or not text.strip():
        return {}
    try:
        tree = ast.parse(f"_({text})", mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"--kwargs {text!r}: expected comma-separated key=value pairs ({exc.msg})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_"):
        raise ValueError(f"--kwargs {text!r}: expected comma-separated key=value pairs")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"--kwargs {text!r}: every item must be key=value")
    names = [kw.arg for kw in call.keywords]
    repeated = sorted({n for n in names if names.count(n) > 1})  # type: ignore[type-var]
    if repeated:
        raise ValueError(f"--kwargs {text!r}: key(s) given twice: {repeated}")
    return {kw.arg: _value(kw.value, text) for kw in call.keywords}  # type: ignore[misc]


def add_kwargs_argument(parser: argparse.ArgumentParser) -> None:
    """Add the shared ``--kwargs K=V[,K=V…]`` option (parse its string with :func:`parse_kwargs`)."""
    parser.add_argument("--kwargs", default="", metavar="K=V[,K=V...]", help=KWARGS_HELP)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``MODEL`` (a registered backbone; optional unless ``required``) and ``--kwargs``."""
    parser.add_argument("model", nargs=None if required else "?", metavar="MODEL",
                        help="registered model name, e.g. adfnet, dncnn, rdn")
    add_kwargs_argument(parser)


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--recipe NAME`` (a surgery recipe) and ``--recipe-kwargs`` (its arguments, in the ``--kwargs`` syntax)."""
    from dynfilter.surgery import recipes

    parser.add_argument("--recipe", required=required, metavar="NAME",
                        help=f"surgery recipe applied to MODEL: {', '.join(recipes.available())}")
    parser.add_argument(
        "--recipe-kwargs", default="", metavar="K=V[,K=V...]",
        help="recipe arguments in the --kwargs syntax, e.g. 'variant=wo_dcb' for adfnet_ablation or "
        "'n=3,offset_channels=16' for rdn_mdcb",
    )


# Flags that set one run setting: argparse dest -> (config path, add_argument options). A flag wins over
# --preset, --config and --set.
_RUN_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "iters": ("train.iterations", {"type": int, "help": "training iterations of every run"}),
    "sigma": ("noise.sigma", {"type": float, "help": "training and test noise level on the 0-255 scale"}),
    "batch_size": ("train.batch_size", {"type": int, "help": "patches per iteration (global, over all processes)"}),
    "patch_size": ("train.patch_size", {"type": int, "help": "side of the square training patches"}),
    "lr": ("train.lr", {"type": float, "help": "initial learning rate"}),
    "train_data": ("data.train", {"help": "training set: builtin-train, a standard set name or an image folder"}),
    "data_root": ("data.data_root", {"help": "folder holding the standard sets (default: $DYNFILTER_DATA)"}),
    "channels": ("data.channels", {"type": int, "choices": (1, 3), "help": "train on colour (3) or grey (1) images"}),
    "device": ("train.device", {"help": "auto (default: CUDA if available), cpu, cuda or cuda:N"}),
    "threads": ("train.threads", {"type": int, "help": "CPU threads for training and testing"}),
    "precision": ("train.precision", {"choices": PRECISIONS, "help": (
        "fp32 (default), bf16 (bfloat16 autocast) or fp16 (float16 autocast with a gradient scaler); weights stay fp32")}),
    "channels_last": ("train.channels_last", {"action": "store_true", "default": None,
                                              "help": "keep weights and batches in NHWC memory (channels_last)"}),
    "compile": ("train.compile", {"action": "store_true", "default": None,
                                  "help": "run forward, loss and backward under torch.compile (compiles at the first step)"}),
}


def add_run_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the flags ``names`` (argparse dests, e.g. ``"iters"``), each setting one run setting."""
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", **_RUN_FLAGS[name][1])


def run_flag_paths(*names: str) -> dict[str, str]:
    """``{dest: config path}`` of the flags ``names``.

    >>> run_flag_paths("iters", "threads")
    {'iters': 'train.iterations', 'threads': 'train.threads'}
    """
    return {name: _RUN_FLAGS[name][0] for name in names}


def add_data_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-root DIR``: where the standard sets live."""
    parser.add_argument("--data-root", help="folder holding the standard sets (default: $DYNFILTER_DATA)")


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device``: auto (CUDA if available), cpu, cuda or cuda:N."""
    shown = "auto: CUDA if available" if default in (None, "auto") else default
    parser.add_argument("--device", default=default, help=f"auto, cpu, cuda or cuda:N (default: {shown})")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tile N`` and ``--tile-overlap M`` (:mod:`experiments.tiling`), ``--self-ensemble`` (:mod:`experiments.ensemble`)."""
    parser.add_argument("--tile", type=int, metavar="N",
                        help="denoise in N×N tiles blended with a smooth window (bounds the memory); default: whole images")
    parser.add_argument("--tile-overlap", type=int, default=32, metavar="M",
                        help="pixels shared by adjacent tiles (default 32); a model that sees r pixels around each "
                        "output gives the whole-image result when M >= 4r")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average the model's outputs over the 8 flips and rotations of each image (8x the time)")
