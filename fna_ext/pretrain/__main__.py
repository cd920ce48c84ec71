"""``python -m fna_ext.pretrain``: the command lives in :mod:`fna_ext.cli.pretrain`."""

from fna_ext.cli import run
from fna_ext.cli.pretrain import main

run(main)
