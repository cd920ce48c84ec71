"""OKS AP of a pose model, as SimpleBaseline evaluates COCO keypoints: every person crop (on its
ground-truth or detected box) is predicted, with flip testing; each person's score is its box score
times the mean confidence of its joints above 0.2; OKS non-maximum suppression at 0.9 removes
duplicates within an image; pycocotools' ``COCOeval(..., "keypoints")`` with the dataset's sigmas
gives the 10 standard statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...data.coco_eval import evaluate_coco
from .data import CocoKeypoints, collate_keypoints
from .decode import decode, predict_heatmaps

CONFIDENT_JOINT = 0.2  # SimpleBaseline's in_vis_thre: joints that count towards a person's score
OKS_NMS_THRESHOLD = 0.9


@dataclass
class PosePrediction:
    image_id: int
    joints: np.ndarray       # (K, 2) continuous image coordinates
    confidences: np.ndarray  # (K,)
    area: float              # of its crop, the OKS scale of the duplicate suppression (SimpleBaseline's)
    score: float             # box score x mean confident joint confidence


def person_score(confidences: np.ndarray, box_score: float) -> float:
    confident = confidences[confidences > CONFIDENT_JOINT]
    return float(box_score * (confident.mean() if confident.size else 0.0))


def object_keypoint_similarity(joints: np.ndarray, others: np.ndarray, sigmas: np.ndarray,
                               areas: np.ndarray) -> np.ndarray:
    """OKS of ``joints`` (K, 2) with each of ``others`` (M, K, 2), every joint counted, at the
    scales ``areas`` (M,) (SimpleBaseline's oks_iou for its NMS)."""
    variances = (2 * sigmas) ** 2
    squared = ((others - joints[None]) ** 2).sum(-1)
    return np.exp(-squared / variances[None] / (areas[:, None] + np.spacing(1)) / 2).mean(-1)


def oks_nms(predictions: list[PosePrediction], sigmas: np.ndarray,
            threshold: float = OKS_NMS_THRESHOLD) -> list[PosePrediction]:
    """The predictions of one image, highest score first, without those whose OKS with a kept
    one exceeds ``threshold`` (at the mean of the two crops' areas)."""
    order = sorted(range(len(predictions)), key=lambda i: -predictions[i].score)
    kept = []
    while order:
        best, rest = order[0], order[1:]
        kept.append(predictions[best])
        if not rest:
            break
        others = np.stack([predictions[i].joints for i in rest])
        areas = (np.array([predictions[i].area for i in rest]) + predictions[best].area) / 2
        similarity = object_keypoint_similarity(predictions[best].joints, others, sigmas, areas)
        order = [i for i, s in zip(rest, similarity) if s <= threshold]
    return kept


@torch.no_grad()
def predict_people(model: nn.Module, dataset: CocoKeypoints, *, batch_size: int = 32, device="cpu",
                   flip: bool = True) -> list[PosePrediction]:
    """One prediction per person crop of ``dataset``, in its order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_keypoints)
    permutation = dataset.skeleton.flip_permutation() if flip else None
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for images, targets in loader:
            heatmaps = predict_heatmaps(model, images.to(device), permutation)
            joints, peaks = decode(heatmaps.cpu(), targets["inverse"])
            for index, person_joints, person_peaks in zip(targets["index"].tolist(), joints.numpy(), peaks.numpy()):
                person = dataset.people[index]
                crop = dataset.crop_of(person)
                predictions.append(PosePrediction(person.image_id, person_joints, person_peaks,
                                                  crop.size[0] * crop.size[1], person_score(person_peaks, person.score)))
    finally:
        model.train(was_training)
    return predictions


def to_results(predictions: list[PosePrediction], category_id: int) -> list[dict]:
    """COCO keypoint results: ``keypoints`` as [x, y, confidence] per joint, in COCO's pixel
    indices (the continuous coordinates less 0.5, as the loader added it)."""
    results = []
    for p in predictions:
        values = np.concatenate([p.joints - 0.5, p.confidences[:, None]], axis=1).reshape(-1)
        results.append({"image_id": int(p.image_id), "category_id": int(category_id),
                        "keypoints": [round(float(v), 3) for v in values], "score": round(p.score, 5)})
    return results


def suppress_duplicates(predictions: list[PosePrediction], sigmas: np.ndarray) -> list[PosePrediction]:
    by_image: dict[int, list[PosePrediction]] = {}
    for p in predictions:
        by_image.setdefault(p.image_id, []).append(p)
    return [kept for image_id in sorted(by_image) for kept in oks_nms(by_image[image_id], sigmas)]


def evaluate_pose(model: nn.Module, dataset: CocoKeypoints, *, batch_size: int = 32, device="cpu",
                  flip: bool = True) -> dict[str, float]:
    """The 10 COCO keypoint statistics (:data:`KEYPOINT_STAT_NAMES`) of ``model`` on ``dataset``."""
    sigmas = np.asarray(dataset.skeleton.sigmas)
    predictions = suppress_duplicates(predict_people(model, dataset, batch_size=batch_size, device=device,
                                                     flip=flip), sigmas)
    return evaluate_coco(dataset.coco, to_results(predictions, dataset.category_id), iou_type="keypoints",
                         image_ids=dataset.image_ids, sigmas=sigmas)
