"""What every fna_ext command line shares: bad input ends with one clear message and exit
status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)`` and exits: 0 (or its return value) on success, 2 on bad input."""
    try:
        code = main(argv)
    # FloatingPointError: a loss that became NaN or inf; its message says what to change and
    # which checkpoint to resume from
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def human(n: float) -> str:
    """3504872 -> '3.50M', 300775272 -> '300.78M', 8.3e8 -> '0.83B' style short numbers."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
