"""Detection losses. Per-anchor class targets use the matcher's codes: a 0-based foreground
class, BACKGROUND (-1) or IGNORE (-2). Both losses are normalised by the number of positive
anchors in the batch, as SSD and RetinaNet are."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...engine.distributed import global_sum
from .matcher import BACKGROUND, IGNORE


def anchor_targets(anchors: torch.Tensor, targets: list[dict], matcher, coder) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N, A), box_targets (N, A, 4)) for a batch: each anchor's class code and, for
    positives, the encoded box of the object it matched."""
    labels, boxes = [], []
    for target in targets:
        gt_boxes = target["boxes"].to(anchors)
        matches = matcher(anchors, gt_boxes, target.get("iscrowd"))
        positive = matches >= 0
        image_labels = matches.clone()
        image_labels[positive] = target["labels"].to(matches.device)[matches[positive]]
        encoded = torch.zeros_like(anchors)
        if positive.any():
            encoded[positive] = coder.encode(gt_boxes[matches[positive]], anchors[positive])
        labels.append(image_labels)
        boxes.append(encoded)
    return torch.stack(labels), torch.stack(boxes)


def _num_positives(labels: torch.Tensor) -> torch.Tensor:
    # over the global batch: processes sharing a batch then sum to the one-process loss
    return global_sum((labels >= 0).sum().to(torch.float32)).clamp(min=1)


def ssd_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor, box_targets: torch.Tensor,
             *, neg_pos_ratio: int = 3, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Softmax cross-entropy (class 0 is background) with hard negative mining: per image, only
    the ``neg_pos_ratio`` x positives background anchors with the highest loss count. Smooth-L1
    on the boxes of positives."""
    positive = labels >= 0
    cls_target = torch.where(positive, labels + 1, torch.zeros_like(labels))
    ce = F.cross_entropy(logits.float().flatten(0, 1), cls_target.flatten(), reduction="none").view_as(labels)
    negative_loss = torch.where(labels == BACKGROUND, ce.detach(), torch.full_like(ce, -1.0))
    num_negatives = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).clamp(max=labels.shape[1])
    rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
    hard_negative = (rank < num_negatives) & (labels == BACKGROUND)
    num_pos = _num_positives(labels)
    cls_loss = ce[positive | hard_negative].sum() / num_pos
    box_loss = F.smooth_l1_loss(deltas.float()[positive], box_targets[positive], beta=beta,
                                reduction="sum") / num_pos
    return {"loss_cls": cls_loss, "loss_box": box_loss}


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (Lin et al.) for one-hot ``targets``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def retinanet_loss(logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   box_targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0,
                   beta: float = 0.11) -> dict[str, torch.Tensor]:
    """Sigmoid focal loss over every anchor that is not ignored, smooth-L1 (beta 0.11) on the
    boxes of positives."""
    positive = labels >= 0
    counted = labels != IGNORE
    one_hot = torch.zeros_like(logits, dtype=torch.float32)
    one_hot[positive] = F.one_hot(labels[positive], logits.shape[-1]).to(one_hot.dtype)
    num_pos = _num_positives(labels)
    cls_loss = sigmoid_focal_loss(logits.float()[counted], one_hot[counted], alpha, gamma).sum() / num_pos
    box_loss = F.smooth_l1_loss(deltas.float()[positive], box_targets[positive], beta=beta,
                                reduction="sum") / num_pos
    return {"loss_cls": cls_loss, "loss_box": box_loss}
