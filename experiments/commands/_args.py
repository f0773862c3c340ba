"""Argument helpers shared by subcommands: the ``--kwargs key=value,…`` syntax for model arguments."""

from __future__ import annotations

import argparse
import ast
from typing import Any

__all__ = ["parse_kwargs", "add_kwargs_argument", "KWARGS_HELP"]

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
