"""Test-time post-processing: scores, score threshold, candidate cap, box decoding, class-wise
NMS (the csrc kernel) and the per-image cap. Detections come back per image as ``boxes``
(x1, y1, x2, y2 in the input image's pixels, clipped to its unpadded size), ``scores`` and
0-based ``labels``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ops import batched_nms
from .boxes import clip_boxes


@dataclass
class PostprocessConfig:
    score_threshold: float
    nms_iou: float
    max_per_image: int
    candidates: int  # kept before NMS: per image for SSD, per level for RetinaNet


SSD_TEST = PostprocessConfig(score_threshold=0.02, nms_iou=0.6, max_per_image=200, candidates=1000)
RETINANET_TEST = PostprocessConfig(score_threshold=0.05, nms_iou=0.5, max_per_image=100, candidates=1000)


def _top_candidates(scores: torch.Tensor, threshold: float, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor index, class, score) of the best (anchor, class) pairs above ``threshold``."""
    flat = scores.flatten()
    keep = torch.nonzero(flat > threshold).flatten()
    if len(keep) > limit:
        keep = keep[flat[keep].topk(limit).indices]
    num_classes = scores.shape[1]
    return keep // num_classes, keep % num_classes, flat[keep]


def _finish(boxes, scores, labels, image_size, config: PostprocessConfig) -> dict[str, torch.Tensor]:
    boxes = clip_boxes(boxes, *image_size)
    keep = batched_nms(boxes.float(), scores.float(), labels, config.nms_iou)[:config.max_per_image]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def softmax_without_background(logits: torch.Tensor) -> torch.Tensor:
    """SSD's per-class probabilities: softmax over (..., K + 1) logits, background (0) dropped."""
    return logits.float().softmax(dim=-1)[..., 1:]


def ssd_postprocess(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                    image_sizes: list[tuple[int, int]], coder, config: PostprocessConfig = SSD_TEST) -> list[dict]:
    """Softmax over classes with background at index 0, which is then dropped."""
    results = []
    probabilities = softmax_without_background(logits)
    for i, image_size in enumerate(image_sizes):
        anchor, label, score = _top_candidates(probabilities[i], config.score_threshold, config.candidates)
        boxes = coder.decode(deltas[i, anchor].float(), anchors[anchor])
        results.append(_finish(boxes, score, label, image_size, config))
    return results


def retinanet_postprocess(logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                          image_sizes: list[tuple[int, int]], coder,
                          config: PostprocessConfig = RETINANET_TEST) -> list[dict]:
    """Sigmoid per class; the best ``config.candidates`` (anchor, class) pairs of each level."""
    results = []
    for i, image_size in enumerate(image_sizes):
        boxes, scores, labels = [], [], []
        for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
            anchor, label, score = _top_candidates(level_logits[i].float().sigmoid(),
                                                   config.score_threshold, config.candidates)
            boxes.append(coder.decode(level_deltas[i, anchor].float(), level_anchors[anchor]))
            scores.append(score)
            labels.append(label)
        results.append(_finish(torch.cat(boxes), torch.cat(scores), torch.cat(labels), image_size, config))
    return results
