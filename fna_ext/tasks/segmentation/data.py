"""Segmentation datasets: Cityscapes in its own layout, and a generic folder of images with
per-pixel label PNGs for users' own data. Both check every pair when they are built (a missing
partner, an unreadable file, sizes that differ, label values outside the classes) and skip bad
pairs with one warning that counts them and names the first, so nothing fails in a data worker.

Cityscapes (``root``): ``leftImg8bit/{split}/{city}/{name}_leftImg8bit.png`` with
``gtFine/{split}/{city}/{name}_gtFine_labelTrainIds.png`` when present (train ids, 255 ignored),
else ``..._gtFine_labelIds.png`` mapped from the 34 label ids to the 19 train ids.

Folder (``root``): ``classes.txt`` (one class name per line), ``images/{split}/{name}.{png,jpg,jpeg}``
and ``labels/{split}/{name}.png`` holding class indices (0 .. classes - 1) and 255 for ignored pixels.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ...data.images import UnreadableImage
from .labels import CITYSCAPES_CLASSES, to_train_ids, unknown_values

IMAGE_SUFFIX, LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"
FOLDER_IMAGE_TYPES = (".png", ".jpg", ".jpeg")
_READERS = 8  # label checks decode whole PNGs: threads overlap the decoding (zlib releases the GIL)


@dataclass(frozen=True)
class LabelledImage:
    image: Path
    label: Path
    label_ids: bool  # Cityscapes label ids (mapped to train ids on load), else train ids / class indices


def cityscapes_pairs(root: str | os.PathLike, split: str) -> tuple[list[LabelledImage], list[str]]:
    """Every image of ``split`` with its label, and the images that have none."""
    images_dir, labels_dir = Path(root) / "leftImg8bit" / split, Path(root) / "gtFine" / split
    for folder, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist: a Cityscapes root holds leftImg8bit/{split} and "
                             f"gtFine/{split} ({what} of the {split} split); pass --data ROOT")
    pairs, unpaired = [], []
    for image in sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[:-len(IMAGE_SUFFIX)]
        train_ids = labels_dir / image.parent.name / f"{stem}{TRAIN_IDS_SUFFIX}"
        label_ids = labels_dir / image.parent.name / f"{stem}{LABEL_IDS_SUFFIX}"
        if train_ids.is_file():
            pairs.append(LabelledImage(image, train_ids, label_ids=False))
        elif label_ids.is_file():
            pairs.append(LabelledImage(image, label_ids, label_ids=True))
        else:
            unpaired.append(str(image))
    return pairs, unpaired


def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist: a segmentation folder lists its classes there, one per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(names) > 255:
        raise ValueError(f"{path} lists {len(names)} classes; label PNGs hold 1 to 255 classes (255 is ignored)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path} names a class twice")
    return names


def folder_pairs(root: str | os.PathLike, split: str) -> tuple[list[LabelledImage], list[str]]:
    images_dir, labels_dir = Path(root) / "images" / split, Path(root) / "labels" / split
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist: a segmentation folder holds images/{split} and "
                             f"labels/{split} beside classes.txt")
    pairs, unpaired = [], []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in FOLDER_IMAGE_TYPES):
        label = labels_dir / f"{image.stem}.png"
        if label.is_file():
            pairs.append(LabelledImage(image, label, label_ids=False))
        else:
            unpaired.append(str(image))
    return pairs, unpaired


def pair_problem(pair: LabelledImage, num_classes: int) -> str | None:
    """Why ``pair`` cannot be used, or None: files Pillow cannot read, sizes that differ, a label
    that is not one channel, values outside the classes."""
    try:
        with Image.open(pair.image) as image:
            image_size = image.size
        with Image.open(pair.label) as label_file:
            if label_file.mode not in ("L", "P"):  # ids and class indices fit a byte
                return f"{pair.label.name}: a label image has one 8-bit channel, got mode {label_file.mode}"
            label = np.asarray(label_file)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"not an image Pillow can read ({type(err).__name__})"
    if label.shape[::-1] != image_size:
        return f"label {label.shape[1]}x{label.shape[0]} but image {image_size[0]}x{image_size[1]} pixels"
    bad = unknown_values(label, None if pair.label_ids else num_classes)
    if bad:
        allowed = "Cityscapes label ids 0-33" if pair.label_ids else f"class indices 0-{num_classes - 1} and 255"
        return f"{pair.label.name} holds values {bad[:8]}, not {allowed}"
    return None


def usable_pairs(pairs: list[LabelledImage], unpaired: list[str], num_classes: int,
                 source: str) -> list[LabelledImage]:
    """``pairs`` without the bad ones, warned about once with ``unpaired`` (images without a label)."""
    with ThreadPoolExecutor(_READERS) as pool:
        problems = list(pool.map(lambda p: pair_problem(p, num_classes), pairs))
    kept = [pair for pair, problem in zip(pairs, problems) if problem is None]
    bad = [f"{pair.image}: {problem}" for pair, problem in zip(pairs, problems) if problem is not None]
    bad += [f"{image}: no label file" for image in unpaired]
    if not kept:
        example = f" (e.g. {bad[0]})" if bad else ""
        raise ValueError(f"{source} has no usable labelled image{example}")
    if bad:
        warnings.warn(f"{len(bad)} of {len(pairs) + len(unpaired)} images of {source} cannot be used and are "
                      f"skipped (e.g. {bad[0]})", stacklevel=3)
    return kept


class SegmentationDataset(torch.utils.data.Dataset):
    """``(image tensor, label tensor)`` pairs through ``transform`` (see transforms.py); ``root``
    is the dataset's folder and ``source`` names the split in messages."""

    def __init__(self, pairs: list[LabelledImage], class_names: list[str], transform: Callable, source: str,
                 root: str | os.PathLike):
        self.pairs, self.class_names, self.transform, self.source = pairs, list(class_names), transform, source
        self.root = Path(root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed RGB image and its train-id label (uint8)."""
        pair = self.pairs[index]
        try:
            with Image.open(pair.image) as image:
                rgb = np.asarray(image.convert("RGB"))
            with Image.open(pair.label) as label_file:
                label = np.asarray(label_file).astype(np.uint8)
        except (OSError, ValueError) as err:
            raise UnreadableImage(f"{pair.image} or its label {pair.label} cannot be read: {err}") from None
        return rgb, to_train_ids(label) if pair.label_ids else label

    def __getitem__(self, index: int):
        return self.transform(*self.read(index))

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.source}: {len(self)} images, {self.num_classes} classes)"


def cityscapes(root: str | os.PathLike, split: str, transform: Callable) -> SegmentationDataset:
    pairs, unpaired = cityscapes_pairs(root, split)
    source = f"Cityscapes {split} ({root})"
    return SegmentationDataset(usable_pairs(pairs, unpaired, len(CITYSCAPES_CLASSES), source),
                               list(CITYSCAPES_CLASSES), transform, source, root)


def segmentation_folder(root: str | os.PathLike, split: str, transform: Callable) -> SegmentationDataset:
    classes = read_classes(Path(root) / "classes.txt")
    pairs, unpaired = folder_pairs(root, split)
    source = f"the {split} split of {root}"
    return SegmentationDataset(usable_pairs(pairs, unpaired, len(classes), source), classes, transform,
                               source, root)
