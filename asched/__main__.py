"""``python -m asched``: the command line (see :mod:`asched._cli`)."""

import sys

from ._cli import main

sys.exit(main())
