"""Anchor-to-object matching by IoU, with crowd regions ignored rather than counted as
background."""

from __future__ import annotations

import torch

from .boxes import box_ioa, box_iou

BACKGROUND = -1
IGNORE = -2


class Matcher:
    """Anchors with IoU >= ``pos_iou`` to an object match it; below ``neg_iou`` they are
    background; between, ignored. Each object also claims its best anchor, so no object goes
    unmatched (``allow_low_quality``). Anchors that a crowd region covers by more than
    ``crowd_ioa`` are ignored unless they matched a real object: COCO does not count detections
    of crowds as false positives, so training should not call them background either.

    SSD: pos 0.5, neg 0.5. RetinaNet: pos 0.5, neg 0.4."""

    def __init__(self, pos_iou: float = 0.5, neg_iou: float = 0.5, allow_low_quality: bool = True,
                 crowd_ioa: float = 0.5):
        if not 0 <= neg_iou <= pos_iou <= 1:
            raise ValueError(f"matcher needs 0 <= neg_iou <= pos_iou <= 1, got {neg_iou}, {pos_iou}")
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.allow_low_quality, self.crowd_ioa = allow_low_quality, crowd_ioa

    def __call__(self, anchors: torch.Tensor, boxes: torch.Tensor,
                 iscrowd: torch.Tensor | None = None) -> torch.Tensor:
        """Per anchor: the index into ``boxes`` it matches, BACKGROUND or IGNORE."""
        matches = anchors.new_full((len(anchors),), BACKGROUND, dtype=torch.long)
        crowd = (iscrowd.to(boxes.device).bool() if iscrowd is not None
                 else torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device))
        objects = torch.nonzero(~crowd).flatten()
        if len(objects):
            iou = box_iou(anchors, boxes[objects])
            best_iou, best = iou.max(dim=1)
            matches[(best_iou >= self.neg_iou) & (best_iou < self.pos_iou)] = IGNORE
            positive = best_iou >= self.pos_iou
            matches[positive] = objects[best[positive]]
            if self.allow_low_quality:
                best_anchor = iou.argmax(dim=0)
                has_overlap = iou[best_anchor, torch.arange(len(objects), device=iou.device)] > 0
                # an anchor that is two objects' best goes to the later one; index_put_ leaves which
                # to chance on CUDA, so the rule is written out
                matches.scatter_reduce_(0, best_anchor[has_overlap], objects[has_overlap], reduce="amax",
                                        include_self=False)
        if crowd.any():
            covered = box_ioa(anchors, boxes[crowd]).max(dim=1).values > self.crowd_ioa
            matches[covered & (matches < 0)] = IGNORE
        return matches
