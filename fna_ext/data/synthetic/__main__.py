"""``python -m fna_ext.data.synthetic``: a package entry point, so running it does not import
the module twice (which runpy warns about on every run)."""

from fna_ext import cli
from fna_ext.data.synthetic import main

cli.run(main)
