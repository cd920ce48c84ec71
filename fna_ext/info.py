"""``python -m fna_ext.info``: the command lives in :mod:`fna_ext.cli.info`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.info import main

    run(main)
