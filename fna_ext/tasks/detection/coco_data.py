"""COCO-format detection data: the standard COCO 2017 layout or any json/folder pair in the same
format.

Everything about the data is checked once, when the dataset is built, and reported in one warning
per kind of problem (missing image files, files that are not images or not the size the json
says, unusable boxes) or one ValueError naming the file when
nothing usable is left; a data worker then only reads an image and transforms it. Each image's
boxes are precomputed into a compact record, so ``__getitem__`` does no json work.

Labels are 0-based foreground classes in sorted category-id order; the detectors add background
themselves. Crowd boxes stay in the target with ``iscrowd=True`` for the matchers to ignore.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...data.coco import load_coco, usable_images
from ...data.images import read_rgb
from ...data.transforms import default_eval_transform

# why an annotation was skipped, in the order the warning lists them
SKIP_MALFORMED = "a malformed bbox"
SKIP_EMPTY_BOX = "zero or negative area"
SKIP_OUTSIDE = "a bbox entirely outside the image"
SKIP_UNKNOWN_CATEGORY = "an unknown category id"
SKIP_UNKNOWN_IMAGE = "an unknown image id"

STANDARD_LAYOUT = "ROOT/annotations/instances_{split}2017.json with images in ROOT/{split}2017/"


# ---- paths ------------------------------------------------------------------------------------

def resolve_coco_paths(root: str | os.PathLike | None, split: str = "train",
                       ann_file: str | os.PathLike | None = None,
                       img_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(annotation json, images folder): the standard COCO 2017 layout under ``root``, or an
    explicit ``ann_file``/``img_dir`` for a custom dataset (relative ones are taken under ``root``
    when it is given). Whichever of the two is not given comes from the standard layout."""
    if not split:
        raise ValueError("split must be a name such as 'train' or 'val'")
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory; expected {STANDARD_LAYOUT}")
    json_path = _explicit_or_standard(root, ann_file, Path("annotations") / f"instances_{split}2017.json",
                                      "ann_file")
    images_dir = _explicit_or_standard(root, img_dir, Path(f"{split}2017"), "img_dir")
    _check_annotation_file(json_path, explicit=ann_file is not None, split=split)
    _check_images_dir(images_dir, explicit=img_dir is not None, split=split)
    return json_path, images_dir


def _explicit_or_standard(root, given, standard: Path, name: str) -> Path:
    if given is not None:
        given = Path(given)
        return given if given.is_absolute() or root is None else Path(root) / given
    if root is None:
        raise ValueError(f"no dataset root and no {name}: pass a root with the standard layout "
                         f"({STANDARD_LAYOUT}) or both ann_file and img_dir for a custom dataset")
    return Path(root) / standard


def _check_annotation_file(path: Path, *, explicit: bool, split: str) -> None:
    if path.is_dir():
        raise ValueError(f"annotation file {path} is a directory; pass the COCO json file itself")
    if not path.is_file():
        hint = ("check the ann_file path" if explicit else
                f"expected {STANDARD_LAYOUT.format(split=split)} (unzip COCO's annotations there), "
                "or pass ann_file and img_dir for a custom dataset")
        raise FileNotFoundError(f"annotation file {path} not found; {hint}")


def _check_images_dir(path: Path, *, explicit: bool, split: str) -> None:
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"images folder {path} is not a directory")
    if not path.is_dir():
        hint = ("check the img_dir path" if explicit else
                f"expected {STANDARD_LAYOUT.format(split=split)} (unzip COCO's {split}2017 images "
                "there), or pass img_dir for a custom dataset")
        raise FileNotFoundError(f"images folder {path} not found; {hint}")


# ---- per-image records --------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRecord:
    """One image with its usable boxes, in the original image's pixel coordinates."""
    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray    # (N, 4) float32 xyxy
    labels: np.ndarray   # (N,) int64, 0-based
    iscrowd: np.ndarray  # (N,) bool

    @property
    def num_usable(self) -> int:
        """Boxes that take part in matching (crowd boxes do not)."""
        return int((~self.iscrowd).sum())


def _xyxy_in_image(bbox, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """COCO's [x, y, w, h] as clipped xyxy, or the reason it is unusable."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, SKIP_MALFORMED
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):
        return None, SKIP_MALFORMED
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, SKIP_MALFORMED
    if w <= 0 or h <= 0:
        return None, SKIP_EMPTY_BOX
    # boxes that stick out a little are common in real annotations: clip them to the image
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None, SKIP_OUTSIDE
    return [x0, y0, x1, y1], None


def _image_record(image: dict, annotations: list[dict], images_dir: Path,
                  label_of_cat: dict[int, int], skipped: Counter) -> ImageRecord:
    width, height = int(image["width"]), int(image["height"])
    boxes, labels, crowd = [], [], []
    for ann in annotations:
        if ann["category_id"] not in label_of_cat:
            skipped[SKIP_UNKNOWN_CATEGORY] += 1
            continue
        box, reason = _xyxy_in_image(ann.get("bbox"), width, height)
        if reason:
            skipped[reason] += 1
            continue
        boxes.append(box)
        labels.append(label_of_cat[ann["category_id"]])
        crowd.append(ann.get("iscrowd", 0) == 1)  # COCO's 0/1; a string "0" is not crowd
    return ImageRecord(image_id=image["id"], path=str(images_dir / image["file_name"]),
                       width=width, height=height,
                       boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                       labels=np.asarray(labels, dtype=np.int64),
                       iscrowd=np.asarray(crowd, dtype=bool))


def _warn_skipped(skipped: Counter, ann_file: Path) -> None:
    if not skipped:
        return
    order = (SKIP_MALFORMED, SKIP_EMPTY_BOX, SKIP_OUTSIDE, SKIP_UNKNOWN_CATEGORY, SKIP_UNKNOWN_IMAGE)
    reasons = ", ".join(f"{skipped[reason]} with {reason}" for reason in order if skipped[reason])
    warnings.warn(f"skipped {sum(skipped.values())} annotations in {ann_file}: {reasons}", stacklevel=4)


# ---- dataset ------------------------------------------------------------------------------------

Transform = Callable[[np.ndarray, dict], tuple]


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format json; see the module docstring for what is checked.

    ``dataset[i]`` is ``(image, target)``: a float32 (3, H, W) normalized tensor and a dict with
    ``boxes`` (N, 4) float32 xyxy in the transformed image's pixels, ``labels`` (N,) int64,
    ``iscrowd`` (N,) bool, ``image_id``, ``orig_size`` and ``size`` as (H, W), and ``scale`` a
    float32 tensor [sx, sy] with ``original = boxes / [sx, sy, sx, sy]`` (for resize-only
    transforms)."""

    def __init__(self, ann_file: str | os.PathLike, images_dir: str | os.PathLike,
                 transform: Transform | None = None, *, skip_empty: bool = False,
                 check_files: bool = True):
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder {self.images_dir} not found")
        self.transform = transform if transform is not None else default_eval_transform()
        self.coco = load_coco(self.ann_file)
        self._index_categories()
        self.records = self._build_records(check_files, skip_empty)
        self.image_ids = [record.image_id for record in self.records]

    def _index_categories(self) -> None:
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if not categories:
            raise ValueError(f"annotation file {self.ann_file} defines no categories")
        self.cat_ids: list[int] = [c["id"] for c in categories]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in categories]
        self.num_classes = len(categories)
        self.label_of_cat: dict[int, int] = {cat: label for label, cat in enumerate(self.cat_ids)}
        self.cat_of_label: list[int] = list(self.cat_ids)

    def _build_records(self, check_files: bool, skip_empty: bool) -> list[ImageRecord]:
        images = usable_images(self.coco, self.images_dir, self.ann_file, check_files=check_files, stacklevel=4)
        skipped = Counter()
        known = self.coco.imgs.keys()
        skipped[SKIP_UNKNOWN_IMAGE] = sum(1 for ann in self.coco.dataset.get("annotations", [])
                                          if ann["image_id"] not in known)
        records = [_image_record(im, self.coco.imgToAnns.get(im["id"], []), self.images_dir,
                                 self.label_of_cat, skipped) for im in images]
        _warn_skipped(+skipped, self.ann_file)
        if skip_empty:
            records = [record for record in records if record.num_usable > 0]
            if not records:
                raise ValueError(f"no image in {self.ann_file} has a usable non-crowd box "
                                 "(skip_empty=True leaves the dataset empty)")
        return records

    def __len__(self) -> int:
        return len(self.records)

    def get_image_info(self, index: int) -> tuple[int, int, int]:
        """(image_id, width, height) of the original image, without reading it."""
        record = self.records[index]
        return record.image_id, record.width, record.height

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        record = self.records[index]
        image = read_rgb(record.path, record.width, record.height)
        target = {"boxes": record.boxes.copy(), "labels": record.labels.copy(),
                  "iscrowd": record.iscrowd.copy(), "scale": np.ones(2, dtype=np.float32)}
        image, target = self.transform(image, target)
        return _as_tensors(image, target, record)

    def __repr__(self) -> str:
        return (f"CocoDetection({self.ann_file}, {len(self)} images, {self.num_classes} classes, "
                f"transform={self.transform!r})")


def _as_tensors(image, target: dict, record: ImageRecord) -> tuple[torch.Tensor, dict]:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        # a custom transform that stops before normalizing gets the default ending
        image, target = default_eval_transform()(image, target)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"the transform must return a tensor or a uint8 HWC array, got {type(image).__name__}")
    return image, {
        "boxes": torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(target["labels"], dtype=torch.int64),
        "iscrowd": torch.as_tensor(target["iscrowd"], dtype=torch.bool),
        "image_id": int(record.image_id),
        "orig_size": (record.height, record.width),
        "size": tuple(image.shape[-2:]),
        "scale": torch.as_tensor(target.get("scale", np.ones(2)), dtype=torch.float32),
    }
