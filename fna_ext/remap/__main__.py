"""``python -m fna_ext.remap``: the command lives in :mod:`fna_ext.cli.remap`."""

from fna_ext.cli import run
from fna_ext.cli.remap import main

run(main)
