"""What every fna_ext command line shares: bad input ends with one clear message and exit
status 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one ``error:`` line (``--help`` still prints the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def check_output_folder(path: str | os.PathLike, arg: str = "--out") -> Path:
    """Refuses an output folder that cannot be one, before any work: an existing file, a path
    through a file, a place where nothing can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {path} is a file; give a folder (it is created if absent)")
    _check_writable(path, arg)
    return path


def check_output_file(path: str | os.PathLike, arg: str = "--out", example: str = "out.pt") -> Path:
    """Refuses an output file that cannot be written, before any work: an existing folder, a path
    through a file, a place where nothing can be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{arg} {path} is a folder; give a file path such as {path / example}")
    _check_writable(path.parent, arg, path)
    return path


@contextlib.contextmanager
def removed_if_failed(folder: str | os.PathLike) -> Iterator[Path]:
    """Removes ``folder`` again when the work inside fails before its first checkpoint, if this
    run created it: a failed start leaves no folder holding only ``config.yaml``. A folder that
    was there before, or that holds a checkpoint to resume from, is kept."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.rglob("checkpoint.pt")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _check_writable(folder: Path, arg: str, given: Path | None = None) -> None:
    given = given or folder
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{arg} {given}: {existing} is a file, so nothing can be created under it")
    try:  # a real write: permissions, read-only mounts and full disks all show here
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"{arg} {given}: cannot write in {existing} ({err.strerror or err}); "
                         "choose another place") from None


def one_line(err: BaseException) -> str:
    """An exception's message on one line. An error raised in a DataLoader worker arrives with
    the worker's traceback in its message: its last line is the message itself."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in text:
        last = lines[-1]
        kind, sep, rest = last.partition(": ")
        return rest if sep and " " not in kind else last
    return " ".join(lines) if lines else type(err).__name__


def _format_warning(message, category, filename, lineno, line=None) -> str:
    # a warning is a message to the user: one line, without the file and source line Python quotes
    return f"warning: {one_line(Warning(str(message)))}\n"


def one_line_warnings() -> Callable:
    """Makes warnings print as one ``warning:`` line each; returns the format it replaced."""
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    return formatwarning


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)`` and exits: 0 (or its return value) on success, 2 on bad input.
    Warnings print as one ``warning:`` line each."""
    formatwarning = one_line_warnings()
    try:
        code = main(argv)
    # FloatingPointError: a loss that became NaN or inf; its message says what to change and
    # which checkpoint to resume from
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        warnings.formatwarning = formatwarning
    sys.exit(code or 0)


def human(n: float) -> str:
    """3504872 -> '3.50M', 300775272 -> '300.78M', 8.3e8 -> '0.83B' style short numbers."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
