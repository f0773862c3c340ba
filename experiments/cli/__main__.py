"""``python -m experiments.cli``: the ``dynfilter`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
