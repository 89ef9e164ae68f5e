"""Command line: ``python -m skkprior demo`` (``--help``, ``--version``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
