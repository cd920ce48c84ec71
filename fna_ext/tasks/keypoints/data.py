"""COCO keypoints, top-down: every person with a labelled joint is a sample, cropped around its
box (:mod:`.transforms`). The standard layout is ``ROOT/annotations/person_keypoints_{split}2017.json``
with the images in ``ROOT/{split}2017/``.

Everything is checked once, when the dataset is built: a keypoint list that is not 3 x K numbers,
visibility flags outside {0, 1, 2}, coordinates that are not finite numbers, a ``num_keypoints``
of 0 on a labelled person (or the reverse), an ``image_id`` the file does not list, and boxes that
cannot be cropped are counted and reported in one ValueError naming the file (the annotation file
is wrong, and a model trained or scored on part of it would mislead); labelled joints off their
image, which converted datasets hold, are kept with one warning; missing or unreadable images are
skipped with one warning that counts them, as for detection. The person annotations are checked
on validation with detected boxes too, since OKS still scores against them.

Validation can crop around detected people instead of the ground-truth boxes:
``person_boxes`` is a COCO detection results file (``[{"image_id", "category_id", "bbox",
"score"}, ...]``), as a real top-down evaluation uses.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...data.coco import load_coco, usable_images
from ...data.images import read_rgb
from ...data.transforms import flip_keypoints
from .skeleton import Skeleton, skeleton_of_category
from .transforms import (Augmentation, Crop, apply_affine, box_crop, crop_matrix, gaussian_heatmaps, heatmap_size,
                         invert_affine, mirrored_crop, normalize, to_heatmap_coordinates, warp)

STANDARD_LAYOUT = "ROOT/annotations/person_keypoints_{split}2017.json with images in ROOT/{split}2017/"
VISIBILITIES = (0, 1, 2)
MAX_EXAMPLES = 3  # problems quoted in an error, beside their count


@dataclass(frozen=True)
class Person:
    """One sample: a person's box [x, y, w, h] in image ``image_id``, its joints (K, 3) as
    (x, y, visibility) in continuous coordinates (zeros for a detected box) and its box score."""

    image_id: int
    path: str
    width: int
    height: int
    box: tuple[float, float, float, float]
    joints: np.ndarray
    score: float = 1.0


def standard_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    root = Path(root)
    json_path, images = root / "annotations" / f"person_keypoints_{split}2017.json", root / f"{split}2017"
    for path, what in ((json_path, "annotation file"), (images, "images folder")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} not found; expected {STANDARD_LAYOUT.format(split=split)}, "
                                    "or pass data.ann_file and data.img_dir")
    return json_path, images


def person_category(coco, source: str) -> tuple[int, Skeleton]:
    """The id and skeleton of the file's one keypoint category."""
    categories = [c for c in coco.dataset["categories"] if c.get("keypoints")]
    if len(categories) != 1:
        raise ValueError(f"{source} has {len(categories)} categories with 'keypoints'; a keypoints file has one "
                         "(COCO's person)")
    return categories[0]["id"], skeleton_of_category(categories[0], source)


def is_finite_number(value) -> bool:
    """A JSON number that is neither a bool, an infinity, NaN, nor too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a 400-digit integer
        return False


def _joint_problem(annotation: dict, num_joints: int, image: dict | None) -> str | None:
    """Why an annotation's keypoints cannot be used, or None. ``image`` is the entry of its
    ``image_id`` (None when the file lists no such image)."""
    ann_id = annotation["id"]
    if image is None:
        return f"annotation {ann_id}: image_id {annotation['image_id']} is not in 'images'"
    values = annotation.get("keypoints")
    if not isinstance(values, list) or len(values) != 3 * num_joints:
        size = len(values) if isinstance(values, list) else type(values).__name__
        return f"annotation {ann_id}: 'keypoints' holds {size} values, not 3 x {num_joints}"
    if not all(is_finite_number(v) for v in values):
        return f"annotation {ann_id}: 'keypoints' holds a value that is not a finite number"
    flags = set(values[2::3])
    if not flags <= set(VISIBILITIES):
        return f"annotation {ann_id}: visibility flags {sorted(flags - set(VISIBILITIES))}, not 0, 1 or 2"
    return _count_problem(annotation) or _scoring_problem(annotation)


def _labelled(annotation: dict) -> list[tuple]:
    values = annotation["keypoints"]
    return [(x, y) for x, y, v in zip(values[0::3], values[1::3], values[2::3]) if v > 0]


def _count_problem(annotation: dict) -> str | None:
    """A ``num_keypoints`` of 0 on a person with labelled joints, or the reverse: pycocotools
    ignores a person whose ``num_keypoints`` is 0, so either would skew AP without a sign (other
    miscounts change nothing, since OKS counts the labelled joints itself)."""
    count, labelled = annotation.get("num_keypoints"), len(_labelled(annotation))
    if is_finite_number(count) and not isinstance(count, float) and (count == 0) != (labelled == 0):
        return (f"annotation {annotation['id']}: 'num_keypoints' is {count}, but {labelled} joints are "
                "labelled (visibility 1 or 2); pycocotools ignores a person counted 0")
    return None


def _off_image(annotation: dict, image: dict) -> str | None:
    """Where a labelled joint lies off its image (one pixel of slack: indices run 0..W-1), or None."""
    width, height = float(image["width"]), float(image["height"])
    outside = [(x, y) for x, y in _labelled(annotation) if not (-1 <= x <= width and -1 <= y <= height)]
    if outside:
        return (f"annotation {annotation['id']}: joint at {outside[0]} in the "
                f"{int(width)}x{int(height)} image {image['id']}")
    return None


def _scoring_problem(annotation: dict) -> str | None:
    """Why pycocotools' keypoint evaluation could not score an annotation, or None: it reads
    ``num_keypoints``, ``iscrowd``, ``area`` and ``bbox`` of every one, labelled or not."""
    ann_id = annotation["id"]
    if isinstance(annotation.get("num_keypoints"), bool) or not isinstance(annotation.get("num_keypoints"), int):
        return f"annotation {ann_id}: 'num_keypoints' is {annotation.get('num_keypoints')!r}, not a count"
    if annotation.get("iscrowd", 0) not in (0, 1) or isinstance(annotation.get("iscrowd"), bool):
        return f"annotation {ann_id}: 'iscrowd' is {annotation.get('iscrowd')!r}, not 0 or 1"
    if not is_finite_number(annotation.get("area")) or annotation["area"] <= 0:
        return f"annotation {ann_id}: 'area' is {annotation.get('area')!r}, not a positive number"
    box = annotation.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or not all(is_finite_number(v) for v in box):
        return f"annotation {ann_id}: 'bbox' is {box!r}, not four numbers [x, y, w, h]"
    return None


def _box_of(annotation: dict, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The annotation's box clipped to the image, or None when nothing of it is left."""
    box = annotation.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or not all(is_finite_number(v) for v in box):
        return None
    x, y, w, h = (float(v) for v in box)
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def _raise_problems(problems: list[str], source: str, what: str) -> None:
    if problems:
        examples = "; ".join(problems[:MAX_EXAMPLES])
        raise ValueError(f"{source}: {len(problems)} {what} cannot be used ({examples}); fix the file")


def check_person_annotations(coco, category_id: int, num_joints: int, source: str) -> None:
    """Every person annotation usable for training and for pycocotools' scoring (ValueError
    counting the problems); labelled joints off their image are kept with one warning. Run
    whichever boxes are cropped: validation on detected people still scores against these."""
    annotations = coco.dataset.get("annotations", [])
    people = [ann for ann in annotations if ann["category_id"] == category_id]
    problems = [problem for ann in people
                for problem in [_joint_problem(ann, num_joints, coco.imgs.get(ann["image_id"]))] if problem]
    _raise_problems(problems, source, "person annotations")
    ids = [ann["id"] for ann in annotations]
    if 0 in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{source}: annotation ids must be unique and not 0 (pycocotools reads 0 as 'unmatched'); "
                         "number them from 1")
    off = [message for ann in people for message in [_off_image(ann, coco.imgs[ann["image_id"]])] if message]
    if off:
        warnings.warn(f"{source}: {len(off)} person annotations have a labelled joint off their image "
                      f"({off[0]}); they are kept, and OKS scores against them as written", stacklevel=4)


def ground_truth_people(coco, category_id: int, skeleton: Skeleton, images: list[dict], images_dir: Path,
                        source: str) -> list[Person]:
    """Every non-crowd person with a labelled joint and a box, in image order, its joints moved from
    COCO's pixel indices (a joint on pixel i is at i, detectron2's reading) to continuous
    coordinates (i + 0.5), in which crops and mirrors are exact."""
    people, unboxed = [], []
    for image in images:
        width, height = int(image["width"]), int(image["height"])
        for ann in coco.imgToAnns.get(image["id"], []):
            if ann["category_id"] != category_id or ann.get("iscrowd", 0) == 1:
                continue
            joints = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
            joints[joints[:, 2] > 0, :2] += 0.5
            if not (joints[:, 2] > 0).any():
                continue  # SimpleBaseline trains and evaluates only people with a labelled joint
            box = _box_of(ann, width, height)
            if box is None:
                unboxed.append(f"annotation {ann['id']}: bbox {ann.get('bbox')!r} holds no pixel of the image")
                continue
            people.append(Person(image["id"], str(images_dir / image["file_name"]), width, height, box, joints))
    _raise_problems(unboxed, source, "person boxes")
    return people


def detected_people(path: str | os.PathLike, coco, category_id: int, num_joints: int, images: list[dict],
                    images_dir: Path, min_score: float = 0.0) -> list[Person]:
    """People from a COCO detection results file: its boxes of the person category that score at
    least ``min_score``, in the images of the split."""
    path = Path(path)
    results = _read_detections(path)
    known = {image["id"]: image for image in images}
    problems, people = [], []
    for index, result in enumerate(results):
        problem = _detection_problem(index, result, coco, category_id)
        if problem:
            problems.append(problem)
            continue
        if result["category_id"] != category_id or result["score"] < min_score:
            continue
        image = known.get(result["image_id"])
        if image is None:
            continue  # its file is missing, and was reported so
        box = _box_of(result, int(image["width"]), int(image["height"]))
        if box is None:
            problems.append(f"entry {index} has bbox {result['bbox']!r}, which holds no pixel of "
                            f"its {image['width']}x{image['height']} image")
            continue
        people.append(Person(image["id"], str(images_dir / image["file_name"]), int(image["width"]),
                             int(image["height"]), box, np.zeros((num_joints, 3), np.float32), float(result["score"])))
    _raise_problems(problems, str(path), "detections")
    if not people:
        raise ValueError(_no_people_reason(path, results, category_id, min_score))
    return people


def _read_detections(path: Path) -> list:
    what = "person boxes file"
    if path.is_dir():
        raise ValueError(f"{what} {path} (eval.person_boxes, evaluate's --person-boxes) is a folder; "
                         "pass the COCO detection results json inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} (eval.person_boxes, evaluate's --person-boxes) not found; "
                                "pass a COCO detection results json")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{what} {path} is not valid json ({type(err).__name__})") from None
    if not isinstance(results, list):
        raise ValueError(f"{what} {path} holds a json {type(results).__name__}, not a list of detections")
    return results


def _detection_problem(index: int, result, coco, category_id: int) -> str | None:
    """Why entry ``index`` of a detection results file cannot be read, or None."""
    if not isinstance(result, dict) or not {"image_id", "category_id", "bbox", "score"} <= result.keys():
        return f"entry {index} lacks image_id, category_id, bbox or score"
    for key in ("image_id", "category_id"):
        if isinstance(result[key], bool) or not isinstance(result[key], int):
            return f"entry {index} has {key} {result[key]!r}, not an integer id"
    if not is_finite_number(result["score"]):
        return f"entry {index} has score {result['score']!r}, not a number"
    box = result["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(is_finite_number(v) for v in box):
        return f"entry {index} has bbox {box!r}, not four numbers [x, y, w, h]"
    if result["category_id"] == category_id and result["image_id"] not in coco.imgs:
        return f"entry {index} names image {result['image_id']}, which the annotations lack"
    return None


def _no_people_reason(path: Path, results: list, category_id: int, min_score: float) -> str:
    if not results:
        return f"person boxes file {path} holds no detections; it needs the person detector's results"
    of_person = [r for r in results if r["category_id"] == category_id]
    if not of_person:
        found = sorted({r["category_id"] for r in results})
        return (f"person boxes file {path} has no detection of the person category (id {category_id}), "
                f"only of {found}; pass the person detector's results")
    if all(r["score"] < min_score for r in of_person):
        return (f"person boxes file {path}: all {len(of_person)} person detections score under "
                f"eval.min_box_score {min_score}; lower it")
    return f"person boxes file {path} has no person detection in an image of the split whose file is present"


class CocoKeypoints(torch.utils.data.Dataset):
    """Person crops of a COCO keypoints file: ``dataset[i]`` is ``(image, target)``, a normalised
    (3, H, W) crop of ``input_size`` and a dict of ``heatmaps`` (K, H/4, W/4), ``weights`` (K,),
    ``index`` (the sample's position) and ``inverse`` (2, 3), the affine map from crop back to
    image coordinates. ``augmentation`` (training) jitters and mirrors the crop."""

    def __init__(self, ann_file: str | os.PathLike, images_dir: str | os.PathLike, input_size: tuple[int, int],
                 *, augmentation: Augmentation | None = None, person_boxes: str | os.PathLike | None = None,
                 min_box_score: float = 0.0, check_files: bool = True):
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augmentation = augmentation
        self.coco = load_coco(self.ann_file)
        self.category_id, self.skeleton = person_category(self.coco, str(self.ann_file))
        images = usable_images(self.coco, self.images_dir, self.ann_file, check_files=check_files)
        self.image_ids = sorted(im["id"] for im in images)
        check_person_annotations(self.coco, self.category_id, self.num_joints, str(self.ann_file))
        if person_boxes is None:
            self.people = ground_truth_people(self.coco, self.category_id, self.skeleton, images, self.images_dir,
                                              str(self.ann_file))
        else:
            self.people = detected_people(person_boxes, self.coco, self.category_id, self.skeleton.num_joints,
                                          images, self.images_dir, min_box_score)
        if not self.people:
            raise ValueError(f"{self.ann_file} has no non-crowd person with a labelled joint in the images of "
                             f"{self.images_dir}; a keypoints file needs at least one")
        self.class_names = ["person"]
        self.sample_noun = "people"  # a sample is a person crop, for messages that count them

    @property
    def num_joints(self) -> int:
        return self.skeleton.num_joints

    def __len__(self) -> int:
        return len(self.people)

    def crop_of(self, person: Person) -> Crop:
        return box_crop(person.box, self.input_size[1] / self.input_size[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        person = self.people[index]
        image = read_rgb(person.path, person.width, person.height)
        joints, crop = person.joints, self.crop_of(person)
        if self.augmentation is not None:
            factor, degrees, mirror = self.augmentation.draw()
            crop = crop.scaled(factor).rotated(degrees)
            if mirror:
                image = image[:, ::-1]
                joints = flip_keypoints(joints[None], person.width, self.skeleton.flip_pairs)[0]
                crop = mirrored_crop(crop, person.width)
        matrix = crop_matrix(crop, self.input_size)
        pixels = warp(np.ascontiguousarray(image), matrix, self.input_size)
        on_heatmap = to_heatmap_coordinates(apply_affine(joints[:, :2].astype(np.float64), matrix))
        heatmaps, weights = gaussian_heatmaps(on_heatmap, joints[:, 2] > 0, heatmap_size(self.input_size))
        return normalize(pixels), {"heatmaps": torch.from_numpy(heatmaps), "weights": torch.from_numpy(weights),
                                   "index": torch.tensor(index),
                                   "inverse": torch.from_numpy(invert_affine(matrix))}

    def __repr__(self) -> str:
        return (f"CocoKeypoints({self.ann_file}, {len(self)} people in {len(self.image_ids)} images, "
                f"{self.num_joints} joints)")


def collate_keypoints(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    if not batch:
        raise ValueError("collate_keypoints: empty batch")
    images, targets = zip(*batch)
    return torch.stack(images), {key: torch.stack([t[key] for t in targets]) for key in targets[0]}
