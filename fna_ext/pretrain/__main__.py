"""``python -m fna_ext.pretrain``."""

from fna_ext.cli import run
from fna_ext.pretrain.core import main

run(main)
