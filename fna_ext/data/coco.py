"""COCO json files as the tasks read them (detection's instances, pose's person keypoints): the
annotation file checked and indexed by pycocotools without its prints, and the images it lists
that are missing from their folder found in one directory listing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Str
from .images import keep_readable

if TYPE_CHECKING:  # imported where a COCO file is read, so fna_ext imports without pycocotools
    from pycocotools.coco import COCO

# The settings that say where a COCO-format dataset is: the standard layout under data.root,
# or explicit annotation files and image folders per split (relative ones under the root)
COCO_PATH_RULES = {
    "data.root": Str(nullable=True),
    "data.train_split": Str(),
    "data.val_split": Str(),
    "data.ann_file": Str(nullable=True),
    "data.img_dir": Str(nullable=True),
    "data.val_ann_file": Str(nullable=True),
    "data.val_img_dir": Str(nullable=True),
}


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """pycocotools' COCO index of ``ann_file``, without its prints; a file that is not COCO json
    raises ValueError naming it."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    try:
        with open(path, "rb") as f:
            dataset = json.load(f)
    # ValueError: bad json or a number past Python's digit limit; RecursionError: absurd nesting
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"annotation file {path} is not valid json: {type(err).__name__}: "
                         f"{str(err)[:200]}") from None
    _check_structure(dataset, path)
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def _check_structure(dataset, path: Path) -> None:
    """The shape createIndex relies on; anything else would fail there with a bare KeyError."""
    if not isinstance(dataset, dict):
        raise ValueError(f"annotation file {path} holds a json {type(dataset).__name__}, "
                         "not a COCO object with 'images', 'annotations' and 'categories'")
    required = {"images": ("id", "file_name", "width", "height"), "categories": ("id",),
                "annotations": ("id", "image_id", "category_id")}
    for section, keys in required.items():
        entries = dataset.get(section, [] if section == "annotations" else None)
        if not isinstance(entries, list):
            raise ValueError(f"annotation file {path} has no '{section}' list")
        for index, entry in enumerate(entries):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise ValueError(f"annotation file {path}: {section}[{index}] lacks "
                                 f"{', '.join(repr(k) for k in missing)}")
    for section, keys in INTEGER_FIELDS.items():
        for index, entry in enumerate(dataset.get(section, [])):
            bad = next((key for key in keys if not _is_int(entry[key])), None)
            if bad:
                raise ValueError(f"annotation file {path}: {section}[{index}] has {bad} {entry[bad]!r}; "
                                 "COCO ids are integers")
    for index, image in enumerate(dataset["images"]):
        sizes = (image["width"], image["height"])
        if not all(_is_int(v) and v >= 1 or isinstance(v, float) and v.is_integer() and v >= 1 for v in sizes):
            raise ValueError(f"annotation file {path}: images[{index}] has width/height {sizes}; "
                             "both must be whole numbers of pixels, at least 1")
        if not isinstance(image["file_name"], str) or not image["file_name"].strip():
            raise ValueError(f"annotation file {path}: images[{index}] has file_name {image['file_name']!r}; "
                             "it must be the image's path under the images folder")
    for section in ("images", "categories"):
        ids = [entry["id"] for entry in dataset[section]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"annotation file {path}: duplicate ids in '{section}'")


# the fields pycocotools indexes by: any other type fails deep inside it
INTEGER_FIELDS = {"images": ("id",), "categories": ("id",), "annotations": ("id", "image_id", "category_id")}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_exists(file_name: str, images_dir: Path, listing: set[str]) -> bool:
    # one directory listing answers for plain names; 118k stat calls on a network disk are slow
    if "/" not in file_name and os.sep not in file_name:
        return file_name in listing
    try:
        return (images_dir / file_name).is_file()
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL byte
        return False


def drop_missing_files(images: list[dict], images_dir: Path, ann_file: Path, *, stacklevel: int = 4) -> list[dict]:
    listing = set(os.listdir(images_dir))
    found = [_image_exists(str(im["file_name"]), images_dir, listing) for im in images]
    present = [im for im, ok in zip(images, found) if ok]
    if len(present) == len(images):
        return images
    example = images_dir / images[found.index(False)]["file_name"]
    if not present:
        raise ValueError(f"none of the {len(images)} images listed in {ann_file} are in {images_dir} "
                         f"(e.g. {example}); check img_dir")
    warnings.warn(f"{len(images) - len(present)} of {len(images)} images listed in {ann_file} are "
                  f"missing from {images_dir} (e.g. {example}); they are skipped", stacklevel=stacklevel)
    return present


def usable_images(coco: COCO, images_dir: Path, ann_file: Path, *, check_files: bool = True,
                  stacklevel: int = 3) -> list[dict]:
    """The images ``coco`` lists; with ``check_files``, those whose file is in ``images_dir`` and
    readable at the listed size, the others skipped with one warning per kind of problem (at
    ``stacklevel`` from this function's caller, as ``warnings.warn`` counts)."""
    images = coco.dataset["images"]
    if not images:
        raise ValueError(f"annotation file {ann_file} lists no images")
    if check_files:
        images = drop_missing_files(images, images_dir, ann_file, stacklevel=stacklevel + 1)
        images = keep_readable(images, [images_dir / im["file_name"] for im in images],
                               [(int(im["width"]), int(im["height"])) for im in images],
                               source=f"{ann_file} in {images_dir}", stacklevel=stacklevel + 1)
    return images
