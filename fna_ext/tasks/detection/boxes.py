"""Box geometry shared by matching, coding and post-processing. Boxes are (x1, y1, x2, y2) in
pixels, with width x2 - x1 (the continuous convention, as torchvision and current MMDetection)."""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) intersection over union; 0 where both boxes are empty."""
    inter = _intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def box_ioa(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) intersection over the area of each box of ``a``: how much of an anchor a
    crowd region covers, whatever the region's size."""
    inter = _intersection(a, b)
    return inter / box_area(a)[:, None].clamp(min=torch.finfo(inter.dtype).tiny)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)
