"""OKS AP through pycocotools on hand-made cases whose answer the OKS formula gives, and the
pose evaluation's own rescoring and OKS non-maximum suppression."""

import json
import math

import numpy as np
import pytest

from fna_ext.data.coco_eval import KEYPOINT_STAT_NAMES, evaluate_coco
from fna_ext.tasks.keypoints.evaluation import (PosePrediction, object_keypoint_similarity, oks_nms, person_score,
                                                to_results)

SIGMAS = [0.026, 0.079, 0.079, 0.107]
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def ground_truth(tmp_path, people):
    """A keypoints file of one 200x200 image holding ``people``: (joints (K, 3), area)."""
    annotations = []
    for index, (joints, area) in enumerate(people):
        joints = np.asarray(joints, dtype=float)
        labelled = joints[joints[:, 2] > 0]
        x0, y0 = labelled[:, :2].min(0)
        x1, y1 = labelled[:, :2].max(0)
        annotations.append({"id": index + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": area,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "keypoints": joints.reshape(-1).tolist(),
                            "num_keypoints": int((joints[:, 2] > 0).sum())})
    document = {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}],
                "annotations": annotations,
                "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "a", "b", "c"],
                                "skeleton": [[1, 2]], "sigmas": SIGMAS}]}
    path = tmp_path / "person_keypoints_val2017.json"
    path.write_text(json.dumps(document))
    return path


def result(joints, score=1.0):
    joints = np.asarray(joints, dtype=float)
    values = np.concatenate([joints[:, :2], np.ones((len(joints), 1))], axis=1)
    return {"image_id": 1, "category_id": 1, "keypoints": values.reshape(-1).tolist(), "score": score}


JOINTS = [[50, 40, 2], [60, 60, 2], [40, 60, 1], [50, 100, 2]]
AREA = 2500.0


def formula_oks(shift, labelled, area=AREA):
    """OKS by its definition: the mean over labelled joints of exp(-d^2 / (2 s^2 k^2)), s^2 the
    area, k = 2 sigma."""
    return float(np.mean([math.exp(-shift ** 2 / (2 * area * (2 * sigma) ** 2))
                          for sigma, keep in zip(SIGMAS, labelled) if keep]))


def test_a_perfect_prediction_has_ap_one(tmp_path):
    stats = evaluate_coco(ground_truth(tmp_path, [(JOINTS, AREA)]), [result(JOINTS)], iou_type="keypoints",
                          sigmas=SIGMAS)
    assert list(stats) == list(KEYPOINT_STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0, 8.0])
def test_a_known_shift_gives_the_oks_the_formula_gives(tmp_path, shift):
    predicted = [[x + shift, y, v] for x, y, v in JOINTS]
    stats = evaluate_coco(ground_truth(tmp_path, [(JOINTS, AREA)]), [result(predicted)], iou_type="keypoints",
                          sigmas=SIGMAS)
    oks = formula_oks(shift, [True] * 4)
    # one person, one prediction: the AP at a threshold is 1 where the OKS reaches it, else 0
    assert stats["AP"] == pytest.approx(float((THRESHOLDS <= oks + 1e-12).mean()))
    assert stats["AP50"] == pytest.approx(1.0 if oks >= 0.5 else 0.0)
    assert stats["AP75"] == pytest.approx(1.0 if oks >= 0.75 else 0.0)
    assert object_keypoint_similarity(np.asarray(JOINTS, float)[:, :2], np.asarray(predicted, float)[None, :, :2],
                                      np.asarray(SIGMAS), np.array([AREA]))[0] == pytest.approx(oks)


def test_the_shift_of_the_test_crosses_thresholds():
    # the parametrised shifts give OKS 0.98, 0.83, 0.61 and 0.49: AP from 1 to 0, AP75 and AP50 missed
    oks = [formula_oks(shift, [True] * 4) for shift in (1.0, 3.0, 6.0, 8.0)]
    assert oks[0] > 0.95 and 0.75 < oks[1] < 0.95 and 0.5 < oks[2] < 0.75 and oks[3] < 0.5


def test_unlabelled_joints_are_ignored(tmp_path):
    joints = [list(j) for j in JOINTS]
    joints[0] = [0, 0, 0]  # the nose, with the smallest sigma, is not labelled
    predicted = [[x + 3.0, y, 2] for x, y, _ in JOINTS]
    predicted[0] = [190.0, 190.0, 2]  # far off, at a joint the ground truth does not label
    stats = evaluate_coco(ground_truth(tmp_path, [(joints, AREA)]), [result(predicted)], iou_type="keypoints",
                          sigmas=SIGMAS)
    # 0.94 over the three labelled joints (AP 0.9); with the far-off nose counted it would be
    # about 0.71 (AP 0.5)
    oks = formula_oks(3.0, [False, True, True, True])
    assert stats["AP"] == pytest.approx(float((THRESHOLDS <= oks).mean())) == pytest.approx(0.9)


def test_a_duplicate_costs_precision_and_a_missed_person_recall(tmp_path):
    other = [[x + 100, y, v] for x, y, v in JOINTS]
    gt = ground_truth(tmp_path, [(JOINTS, AREA), (other, AREA)])
    stats = evaluate_coco(gt, [result(JOINTS, 0.9)], iou_type="keypoints", sigmas=SIGMAS)
    assert stats["AR"] == pytest.approx(0.5)
    both = evaluate_coco(gt, [result(JOINTS, 0.9), result(other, 0.8)], iou_type="keypoints", sigmas=SIGMAS)
    assert both["AP"] == pytest.approx(1.0)


def test_sigmas_must_match_the_joints(tmp_path):
    with pytest.raises(ValueError, match="sigma"):
        evaluate_coco(ground_truth(tmp_path, [(JOINTS, AREA)]), [result(JOINTS)], iou_type="keypoints",
                      sigmas=SIGMAS[:3])
    with pytest.raises(ValueError, match="keypoints"):
        evaluate_coco(ground_truth(tmp_path, [(JOINTS, AREA)]), [{"image_id": 1, "category_id": 1, "score": 1.0,
                                                                   "bbox": [0, 0, 1, 1]}], iou_type="keypoints")


def prediction(joints, score, area=AREA):
    return PosePrediction(1, np.asarray(joints, float)[:, :2], np.ones(len(joints)), area, score)


def test_oks_nms_keeps_the_best_of_near_duplicates_and_distinct_people():
    near = [[x + 0.5, y, v] for x, y, v in JOINTS]
    far = [[x + 100, y, v] for x, y, v in JOINTS]
    kept = oks_nms([prediction(near, 0.5), prediction(JOINTS, 0.9), prediction(far, 0.7)], np.asarray(SIGMAS))
    assert [p.score for p in kept] == [0.9, 0.7]


def test_a_persons_score_is_its_box_score_times_its_confident_joints_mean():
    assert person_score(np.array([0.9, 0.5, 0.1, 0.7]), 0.8) == pytest.approx(0.8 * (0.9 + 0.5 + 0.7) / 3)
    assert person_score(np.array([0.1, 0.05]), 1.0) == 0.0
    # predictions are continuous coordinates; results go back to COCO's pixel indices
    (entry,) = to_results([prediction(JOINTS, 0.75)], category_id=1)
    assert entry["keypoints"][:3] == [49.5, 39.5, 1.0] and len(entry["keypoints"]) == 12 and entry["score"] == 0.75
