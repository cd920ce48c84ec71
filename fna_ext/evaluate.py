"""``python -m fna_ext.evaluate``: the command lives in :mod:`fna_ext.cli.evaluate`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.evaluate import main

    run(main)
