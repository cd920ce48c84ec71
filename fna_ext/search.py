"""``python -m fna_ext.search``: the command lives in :mod:`fna_ext.cli.search`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.search import main

    run(main)
