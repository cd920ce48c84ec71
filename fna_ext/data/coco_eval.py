"""COCO box (and mask) AP through pycocotools, with the corners pycocotools leaves sharp made safe.

pycocotools crashes on an empty result list, asserts (rather than explains) on results for
unknown images, mutates the result dicts it is given, needs ``info`` in the ground truth in some
versions, and prints to stdout. ``evaluate_coco`` handles each and returns the 12 standard
statistics by name.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_text

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# COCOeval's 10 keypoint statistics: OKS AP and AR at 0.5:0.95, 0.5 and 0.75, and by size (no small)
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm", "keypoints")
REQUIRED_RESULT_KEYS = frozenset({"image_id", "category_id", "score"})


def _numpy(values: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad), ndarray or sequence as an ndarray."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def detections_to_results(detections: Iterable[Mapping[str, Any]],
                          cat_of_label: Sequence[int] | Mapping[int, int]) -> list[dict]:
    """COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (plain
    Python numbers) from per-image detections ``{"image_id", "boxes": (N, 4) x1 y1 x2 y2 in
    original image pixels, "scores": (N,), "labels": (N,) 0-based}``; ``cat_of_label[label]``
    is the COCO category id of a label."""
    results = []
    for detection in detections:
        image_id = int(detection["image_id"])
        boxes = _numpy(detection["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(detection["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(detection["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(labels)} labels; they must match")
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": image_id, "category_id": _category(cat_of_label, label),
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(score, 5)})
    return results


def _category(cat_of_label: Sequence[int] | Mapping[int, int], label: int) -> int:
    try:
        if label < 0 and not isinstance(cat_of_label, Mapping):
            raise IndexError  # a negative index would silently pick a category from the end
        return int(cat_of_label[label])
    except (IndexError, KeyError):
        raise ValueError(f"label {label} has no COCO category (cat_of_label has "
                         f"{len(cat_of_label)} entries)") from None


def write_results_json(results: list[dict], path: str | os.PathLike) -> Path:
    """Writes COCO results to ``path`` atomically (the format pycocotools' loadRes reads)."""
    return atomic_write_text(path, json.dumps(results, separators=(",", ":")))


def _load_ground_truth(coco_gt):
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    path = Path(coco_gt)
    if not path.is_file():
        raise FileNotFoundError(f"no ground-truth annotation file at {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _check_annotation_ids(gt) -> None:
    # COCOeval records a match as the matched annotation's id and reads 0 as "unmatched", so a
    # ground-truth id 0 silently turns a true positive into a false positive; and the index
    # keeps one annotation per id, so a repeated id silently drops objects.
    if 0 in gt.anns:
        raise ValueError("ground-truth annotation ids must not be 0 (pycocotools reads 0 as "
                         "'unmatched'); number them from 1")
    if len(gt.anns) != len(gt.dataset.get("annotations", [])):
        raise ValueError("ground-truth annotation ids repeat; every annotation needs its own id")


def _load_results(results: list[dict] | str | os.PathLike) -> list[dict]:
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"no results file at {path}")
        results = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(results, list):
        raise ValueError(f"COCO results must be a list of dicts, got {type(results).__name__}")
    for result in results:
        if not isinstance(result, Mapping) or not REQUIRED_RESULT_KEYS <= result.keys():
            raise ValueError(f"a COCO result needs the keys {sorted(REQUIRED_RESULT_KEYS)}, got {result!r}")
    # pycocotools writes ids, areas and segmentations into the dicts it loads: give it copies.
    return [dict(result) for result in results]


def _result_coco(gt, results: list[dict]):
    """The results as a COCO object; for no results, an empty one (loadRes cannot make it)."""
    from pycocotools.coco import COCO

    unknown = sorted({r["image_id"] for r in results} - set(gt.getImgIds()))
    if unknown:
        raise ValueError(f"results name {len(unknown)} image id(s) missing from the ground truth, "
                         f"e.g. {unknown[:5]}")
    if results:
        return gt.loadRes(results)
    empty = COCO()
    empty.dataset = {"info": copy.deepcopy(gt.dataset.get("info", {})), "images": list(gt.dataset["images"]),
                     "categories": copy.deepcopy(gt.dataset.get("categories", [])), "annotations": []}
    empty.createIndex()
    return empty


def evaluate_coco(coco_gt, results: list[dict] | str | os.PathLike, *, iou_type: str = "bbox",
                  image_ids: Iterable[int] | None = None, sigmas: Sequence[float] | None = None,
                  verbose: bool = False) -> dict[str, float]:
    """The 12 COCO statistics (STAT_NAMES) of ``results`` against ``coco_gt``; for ``iou_type``
    ``"keypoints"`` the 10 of KEYPOINT_STAT_NAMES, by the OKS with the per-joint ``sigmas``
    (default: pycocotools' own, COCO's 17 person joints).

    ``coco_gt`` is a pycocotools ``COCO`` or the path of an annotation json; ``results`` a list
    of result dicts or the path of a results json. Only ``image_ids`` (default: every ground-truth
    image) are evaluated; images without annotations are fine. pycocotools' own convention is
    kept: a statistic is -1.0 when it is undefined, i.e. the evaluated images hold no ground
    truth of that kind (for example APs when no object is small). So with no detections at all
    every defined statistic is 0.0 rather than an error. pycocotools' printing is shown only
    when ``verbose``.
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {list(IOU_TYPES)}, got {iou_type!r}")
    gt = _load_ground_truth(coco_gt)
    # Some pycocotools versions read gt.dataset['info'] / ['licenses'] unconditionally.
    gt.dataset.setdefault("info", {})
    gt.dataset.setdefault("licenses", [])
    _check_annotation_ids(gt)
    ids = sorted(gt.getImgIds()) if image_ids is None else sorted({int(i) for i in image_ids})
    missing = sorted(set(ids) - set(gt.getImgIds()))
    if missing:
        raise ValueError(f"image_ids holds {len(missing)} id(s) missing from the ground truth, "
                         f"e.g. {missing[:5]}")
    if not ids:
        raise ValueError("no images to evaluate")
    results = _load_results(results)
    if iou_type == "keypoints" and any("keypoints" not in result for result in results):
        raise ValueError("a keypoint result needs 'keypoints' ([x, y, score] per joint) beside image_id, "
                         "category_id and score")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        evaluator = COCOeval(gt, _result_coco(gt, results), iou_type)
        evaluator.params.imgIds = ids
        if iou_type == "keypoints":
            _set_sigmas(evaluator, gt, sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
    return {name: float(value) for name, value in zip(names, evaluator.stats)}


def _set_sigmas(evaluator, gt, sigmas: Sequence[float] | None) -> None:
    """The OKS sigmas, one per joint of the ground truth's keypoint category."""
    keypoint_categories = [c for c in gt.dataset.get("categories", []) if c.get("keypoints")]
    joints = {len(c["keypoints"]) for c in keypoint_categories}
    if not joints:
        raise ValueError("the ground truth has no keypoint category (one with a 'keypoints' list of joint names); "
                         "keypoint results are scored against a person_keypoints file")
    if sigmas is not None:
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    if len(joints) != 1 or joints != {len(evaluator.params.kpt_oks_sigmas)}:
        raise ValueError(f"the ground truth's keypoint categories have {sorted(joints)} joints but there are "
                         f"{len(evaluator.params.kpt_oks_sigmas)} OKS sigmas; pass one sigma per joint")
    # only the categories with joints: COCOeval would read num_keypoints of any other's annotations
    evaluator.params.catIds = sorted(c["id"] for c in keypoint_categories)


def evaluate_detections(dataset, detections: Iterable[Mapping[str, Any]], *,
                        verbose: bool = False) -> dict[str, float]:
    """``evaluate_coco`` of per-image ``detections`` (see detections_to_results) on a dataset
    with ``.coco`` (its pycocotools COCO), ``.cat_of_label`` and ``.image_ids`` (the images it
    holds, which are the ones evaluated)."""
    results = detections_to_results(detections, dataset.cat_of_label)
    return evaluate_coco(dataset.coco, results, image_ids=dataset.image_ids, verbose=verbose)
