"""``python -m fna_ext.count``: the command lives in :mod:`fna_ext.cli.count`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.count import main

    run(main)
