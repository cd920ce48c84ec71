"""``python -m fna_ext.adapt``: the command lives in :mod:`fna_ext.cli.adapt`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.adapt import main

    run(main)
