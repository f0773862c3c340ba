"""Subcommands of the ``dynfilter`` CLI; each module offers ``add_parser(subparsers)`` and ``run(args)``."""
