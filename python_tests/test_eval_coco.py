"""COCO evaluation against cases worked out by hand: perfect boxes, boxes of known IoU, misses,
false positives on images without objects, and the inputs pycocotools itself cannot take."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fna_ext.data.coco_eval import (STAT_NAMES, detections_to_results, evaluate_coco, evaluate_detections,
                          write_results_json)

# COCOeval's defaults: IoU thresholds 0.50:0.05:0.95 and 101 recall points 0:0.01:1.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
CAT_OF_LABEL = (1, 2)

SMALL, MEDIUM, LARGE = (10, 10, 20, 20), (60, 60, 50, 50), (150, 150, 120, 120)  # x y w h


def ground_truth(boxes_by_image, path):
    """A gt json (deliberately without 'info' or 'licenses') with one category-1 object per box;
    images listed with no boxes have no annotations."""
    images = [{"id": image_id, "file_name": f"{image_id}.jpg", "width": 400, "height": 400}
              for image_id in boxes_by_image]
    annotations = [{"image_id": image_id, "category_id": 1, "bbox": list(box),
                    "area": box[2] * box[3], "iscrowd": 0}
                   for image_id, boxes in boxes_by_image.items() for box in boxes]
    for annotation_id, annotation in enumerate(annotations, start=1):
        annotation["id"] = annotation_id
    categories = [{"id": 1, "name": "a", "supercategory": "x"}, {"id": 2, "name": "b", "supercategory": "x"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def xyxy(box, dx=0.0):
    x, y, w, h = box
    return [x + dx, y, x + w + dx, y + h]


def detection(image_id, boxes, scores=None, labels=None):
    scores = [1.0] * len(boxes) if scores is None else scores
    labels = [0] * len(boxes) if labels is None else labels
    return {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def box_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def evaluate(gt_path, detections, **kw):
    return evaluate_coco(gt_path, detections_to_results(detections, CAT_OF_LABEL), **kw)


def test_perfect_detections_score_one_everywhere(tmp_path):
    gt = ground_truth({1: [SMALL, MEDIUM, LARGE], 2: [LARGE, SMALL]}, tmp_path / "gt.json")
    stats = evaluate(gt, [detection(1, [xyxy(b) for b in (SMALL, MEDIUM, LARGE)]),
                          detection(2, [xyxy(b) for b in (LARGE, SMALL)])])
    assert list(stats) == list(STAT_NAMES) and all(type(v) is float for v in stats.values())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert stats[name] == pytest.approx(1.0), name
    assert stats["AR1"] == pytest.approx(2 / 5)  # one detection per image finds 2 of the 5 objects


@pytest.mark.parametrize("shift", [5, 20, 30, 45])
def test_ap_is_the_fraction_of_iou_thresholds_the_overlap_clears(tmp_path, shift):
    boxes = [(20, 20, 100, 100), (200, 200, 100, 100)]  # large, far apart
    gt = ground_truth({1: boxes, 2: boxes[:1]}, tmp_path / "gt.json")
    stats = evaluate(gt, [detection(1, [xyxy(b, shift) for b in boxes]),
                          detection(2, [xyxy(boxes[0], shift)])])
    iou = box_iou(xyxy(boxes[0]), xyxy(boxes[0], shift))  # e.g. shift 20: 80 / 120 = 0.667
    cleared = IOU_THRESHOLDS <= iou
    assert stats["AP"] == pytest.approx(cleared.mean())
    assert stats["AP50"] == pytest.approx(float(iou >= 0.5))
    assert stats["AP75"] == pytest.approx(float(iou >= 0.75))
    assert stats["APl"] == pytest.approx(cleared.mean()) and stats["AR100"] == pytest.approx(cleared.mean())
    assert stats["APs"] == stats["APm"] == -1.0  # no small or medium objects: undefined


def test_one_missed_object_of_two(tmp_path):
    found, missed = (20, 20, 100, 100), (200, 200, 100, 100)
    gt = ground_truth({1: [found, missed]}, tmp_path / "gt.json")
    stats = evaluate(gt, [detection(1, [xyxy(found)])])
    # Recall reaches 0.5 at precision 1, and nothing beyond: of COCO's 101 recall points, those
    # at or below 0.5 (0.00 ... 0.50: 51 of them) score 1, the rest 0.
    expected_ap = np.mean(RECALL_POINTS <= 0.5 + 1e-9)
    assert expected_ap == pytest.approx(51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)
    assert stats["AP"] == pytest.approx(expected_ap) and stats["AP50"] == pytest.approx(expected_ap)


@pytest.mark.parametrize("false_positive_score, expected_ap", [
    (0.5, 1.0),   # ranked after the true positive: precision 1 up to recall 1
    (0.95, 0.5),  # ranked first: precision 1/2 when recall reaches 1, and interpolation carries
                  # that back to every recall point
])
def test_false_positive_on_an_image_without_annotations(tmp_path, false_positive_score, expected_ap):
    gt = ground_truth({1: [LARGE], 2: []}, tmp_path / "gt.json")
    stats = evaluate(gt, [detection(1, [xyxy(LARGE)], [0.9]),
                          detection(2, [xyxy(LARGE)], [false_positive_score])])
    assert stats["AP"] == pytest.approx(expected_ap)
    assert stats["AR100"] == pytest.approx(1.0)


def test_no_detections_give_zeros_not_a_crash(tmp_path, capsys):
    gt = ground_truth({1: [SMALL, MEDIUM, LARGE], 2: []}, tmp_path / "gt.json")
    assert evaluate_coco(gt, []) == {name: 0.0 for name in STAT_NAMES}
    assert evaluate(gt, [detection(1, []), detection(2, [])]) == {name: 0.0 for name in STAT_NAMES}
    only_large = ground_truth({1: [LARGE]}, tmp_path / "large.json")
    stats = evaluate_coco(only_large, [])
    assert stats["AP"] == stats["APl"] == stats["AR100"] == 0.0
    assert stats["APs"] == stats["APm"] == stats["ARs"] == stats["ARm"] == -1.0
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced


def test_numpy_and_torch_scalar_types_become_plain_python(tmp_path):
    gt = ground_truth({1: [MEDIUM, LARGE]}, tmp_path / "gt.json")
    detections = [{"image_id": np.int64(1),
                   "boxes": np.array([xyxy(MEDIUM), xyxy(LARGE)], dtype=np.float32),
                   "scores": np.array([0.9, 0.8], dtype=np.float32),
                   "labels": np.array([0, 0], dtype=np.int64)}]
    results = detections_to_results(detections, np.array([1, 2], dtype=np.int64))
    assert json.loads(json.dumps(results)) == results
    for result in results:
        assert type(result["image_id"]) is int and type(result["category_id"]) is int
        assert type(result["score"]) is float and all(type(v) is float for v in result["bbox"])
    assert results[0]["bbox"] == [60.0, 60.0, 50.0, 50.0] and results[0]["score"] == 0.9
    assert evaluate_coco(gt, results)["AP"] == pytest.approx(1.0)


def test_labels_map_to_categories_and_bad_input_is_a_value_error():
    [result] = detections_to_results([detection(7, [[1, 2, 4, 8]], [0.25], [1])], CAT_OF_LABEL)
    assert result == {"image_id": 7, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.25}
    assert detections_to_results([detection(7, [[1, 2, 4, 8]], [0.5], [0])], {0: 90})[0]["category_id"] == 90
    with pytest.raises(ValueError, match="label 2 has no COCO category"):
        detections_to_results([detection(7, [[1, 2, 4, 8]], [0.5], [2])], CAT_OF_LABEL)
    with pytest.raises(ValueError, match="label -1"):
        detections_to_results([detection(7, [[1, 2, 4, 8]], [0.5], [-1])], CAT_OF_LABEL)
    with pytest.raises(ValueError, match="must match"):
        detections_to_results([{"image_id": 1, "boxes": np.zeros((2, 4)), "scores": [1.0], "labels": [0]}],
                              CAT_OF_LABEL)


def test_results_file_round_trip_and_caller_results_untouched(tmp_path):
    gt = ground_truth({1: [LARGE]}, tmp_path / "gt.json")
    results = detections_to_results([detection(1, [xyxy(LARGE)])], CAT_OF_LABEL)
    before = json.dumps(results)
    path = write_results_json(results, tmp_path / "out" / "results.json")
    assert json.loads(path.read_text()) == results
    assert evaluate_coco(str(gt), path)["AP"] == pytest.approx(1.0)
    assert evaluate_coco(gt, results)["AP"] == pytest.approx(1.0)
    assert json.dumps(results) == before  # pycocotools adds ids and areas to the dicts it loads


def test_unknown_images_and_missing_files_are_clear_errors(tmp_path):
    gt = ground_truth({1: [LARGE]}, tmp_path / "gt.json")
    with pytest.raises(ValueError, match="missing from the ground truth"):
        evaluate(gt, [detection(99, [xyxy(LARGE)])])
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_coco(gt, [], image_ids=[1, 5])
    with pytest.raises(FileNotFoundError):
        evaluate_coco(tmp_path / "absent.json", [])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(gt, [], iou_type="masks")
    with pytest.raises(ValueError, match="no keypoint category"):
        evaluate_coco(gt, [], iou_type="keypoints")


def test_evaluate_detections_evaluates_only_the_dataset_images(tmp_path):
    from pycocotools.coco import COCO

    gt = ground_truth({1: [LARGE], 2: [LARGE]}, tmp_path / "gt.json")
    coco = COCO(str(gt))
    # Image 2's object is never detected, but image 2 is not in this dataset's split.
    dataset = SimpleNamespace(coco=coco, cat_of_label=CAT_OF_LABEL, image_ids=[1])
    assert evaluate_detections(dataset, [detection(1, [xyxy(LARGE)])])["AP"] == pytest.approx(1.0)
    dataset.image_ids = [1, 2]
    assert evaluate_detections(dataset, [detection(1, [xyxy(LARGE)])])["AR100"] == pytest.approx(0.5)


def test_ground_truth_ids_pycocotools_would_silently_mishandle_are_refused(tmp_path):
    gt = ground_truth({1: [LARGE, MEDIUM]}, tmp_path / "gt.json")
    document = json.loads(gt.read_text())
    document["annotations"][0]["id"] = 0  # COCOeval would count its match as a false positive
    gt.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="must not be 0"):
        evaluate_coco(gt, [])
    document["annotations"][0]["id"] = document["annotations"][1]["id"]
    gt.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="repeat"):
        evaluate_coco(gt, [])
