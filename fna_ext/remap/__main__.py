"""``python -m fna_ext.remap``."""

from fna_ext.cli import run
from fna_ext.remap.core import main

run(main)
