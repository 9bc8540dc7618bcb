"""``python -m hycam_pl.cli ...``: the ``hycam`` console script."""

import sys

from hycam_pl.cli import main

main(sys.argv[1:])
