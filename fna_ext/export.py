"""``python -m fna_ext.export``: the command lives in :mod:`fna_ext.cli.export`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.export import main

    run(main)
