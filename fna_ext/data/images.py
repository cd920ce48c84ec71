"""Checking image files when a dataset is built, so a file that is not an image (or not the size
its annotation says) is found before training instead of killing a data worker part-way through
a run. Only headers are read: Pillow's ``open`` parses the format and size without decoding the
pixels, a fraction of a millisecond per file."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

# headers are small reads: threads overlap the waits of a network disk
_READERS = 8


class UnreadableImage(ValueError):
    """An image file that cannot be decoded when a sample is read (a ValueError, so the command
    lines end with its one-line message)."""


def image_problem(path: str | Path, size: tuple[int, int] | None = None) -> str | None:
    """Why ``path`` is not a usable image (of ``size`` = (width, height), when given), or None."""
    try:
        with Image.open(path) as image:
            found = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"not an image Pillow can read ({type(err).__name__})"
    if size is not None and tuple(found) != tuple(size):
        return f"{found[0]}x{found[1]} pixels, not the {size[0]}x{size[1]} its annotation says"
    return None


def image_problems(paths: Sequence[str | Path],
                   sizes: Sequence[tuple[int, int] | None] | None = None) -> list[str | None]:
    """:func:`image_problem` of each path, in order."""
    sizes = sizes if sizes is not None else [None] * len(paths)
    if len(paths) < 64:
        return [image_problem(p, s) for p, s in zip(paths, sizes)]
    with ThreadPoolExecutor(_READERS) as pool:
        return list(pool.map(image_problem, paths, sizes))


def keep_readable(items: list, paths: Sequence[str | Path], sizes=None, *, source: str,
                  stacklevel: int = 3) -> list:
    """The ``items`` whose image (``paths[i]``) is readable (and of ``sizes[i]``). Bad ones are
    skipped with one warning that counts them and names the first; none left is an error."""
    problems = image_problems(paths, sizes)
    kept = [item for item, problem in zip(items, problems) if problem is None]
    if len(kept) == len(items):
        return items
    first = next(i for i, problem in enumerate(problems) if problem is not None)
    example = f"{paths[first]}: {problems[first]}"
    if not kept:
        raise ValueError(f"none of the {len(items)} images of {source} can be used (e.g. {example})")
    warnings.warn(f"{len(items) - len(kept)} of {len(items)} images of {source} cannot be used and are "
                  f"skipped (e.g. {example})", stacklevel=stacklevel)
    return kept


def read_rgb(path: str | Path, width: int, height: int) -> np.ndarray:
    """The (height, width, 3) uint8 RGB pixels of ``path``; UnreadableImage when the file cannot be
    decoded or is not the size its annotation says (its header was checked when the dataset was
    built, so the rest of the file is damaged, or it was replaced since)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"cannot read image {path}: {err}") from err
    if pixels.shape[:2] != (height, width):
        # annotations are in the json's coordinates; another size would misplace every one of them
        raise UnreadableImage(f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} but its annotation says "
                              f"{width}x{height}")
    return pixels
