"""``python -m fna_ext.train``: the command lives in :mod:`fna_ext.cli.train`."""

if __name__ == "__main__":
    from fna_ext.cli import run
    from fna_ext.cli.train import main

    run(main)
