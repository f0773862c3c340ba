"""The ``dynfilter`` command line: one entry point, one module per subcommand.

Each subcommand module declares itself with ``HELP`` (one line for ``dynfilter --help``), ``DESCRIPTION``
(and optionally ``EPILOG`` and ``PARSER_OPTIONS``), ``arguments(parser)`` (its options; shared ones come
from :mod:`._args`) and ``run(args)``. :func:`build_parser` assembles them; parsing happens only in
:func:`main` and heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

__all__ = ["main", "build_parser"]

# Subcommand name -> module of this package. Order is the order shown by --help.
SUBCOMMANDS: tuple[str, ...] = (
    "info", "profile", "surgery", "train", "eval", "denoise", "inspect", "export", "sweep", "plot", "batchnorm",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynfilter",
        description="Dynamic filtering for image restoration: ADFNet blocks, backbone surgery and experiments.",
    )
    from dynfilter import __version__

    parser.add_argument("--version", action="version", version=f"dynfilter {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"experiments.cli.{name}")
        sub = subparsers.add_parser(
            name, help=module.HELP, description=module.DESCRIPTION, epilog=getattr(module, "EPILOG", None),
            **getattr(module, "PARSER_OPTIONS", {}),
        )
        module.arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse reads a value that starts with "-" (``--shard -1/2``) as another option; say what was wrong.
    for flag, value in zip(argv, argv[1:]):
        if flag == "--shard" and value.startswith("-"):
            parser.exit(2, f"dynfilter: error: --shard takes i/n with 0 <= i < n (e.g. 0/4), got {value!r}\n")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        # A warning (a damaged results row, a conversion) is one line on stderr, as errors are.
        warnings.showwarning = lambda message, category, *rest, **kw: print(
            f"dynfilter {args.command}: warning: {message}", file=sys.stderr
        )
        try:
            args.run(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"dynfilter {args.command}: error: {exc}", file=sys.stderr)
            return 2
    return 0
