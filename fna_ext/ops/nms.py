"""Non-maximum suppression with torchvision's semantics (boxes as x1, y1, x2, y2; a box is dropped
when its IoU with a kept, higher-scoring box is above the threshold; kept indices come back by
descending score, ties in input order)."""

from __future__ import annotations

import numpy as np
import torch

from .. import _extension


def _check(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None = None) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"batched_nms: idxs must have shape ({boxes.shape[0]},), got {tuple(idxs.shape)}")


def _pairwise_iou_above(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    # Same comparison as the kernels, inter > t * union, so 0/0 for empty boxes is "not above".
    b = boxes.double() if boxes.dtype == torch.float64 else boxes.float()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter > threshold * (area[:, None] + area[None, :] - inter)


def batched_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None,
                          iou_threshold: float) -> torch.Tensor:
    """Pure-PyTorch greedy NMS; with ``idxs``, boxes only suppress boxes of the same idxs entry."""
    _check(boxes, scores, idxs)
    order = torch.sort(scores, descending=True, stable=True).indices
    above = _pairwise_iou_above(boxes[order], iou_threshold)
    if idxs is not None:
        group = idxs[order]
        above &= group[:, None] == group[None, :]
    above = above.cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= above[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return batched_nms_reference(boxes, scores, None, iou_threshold)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (int64) of the boxes NMS keeps, by descending score."""
    _check(boxes, scores)
    if _extension.has_kernel("nms", boxes.device):
        return torch.ops.fna_ext.nms(boxes, scores, float(iou_threshold))
    return nms_reference(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """Class-wise NMS: boxes with different ``idxs`` never suppress each other."""
    _check(boxes, scores, idxs)
    if _extension.has_kernel("batched_nms", boxes.device):
        return torch.ops.fna_ext.batched_nms(boxes, scores, idxs, float(iou_threshold))
    return batched_nms_reference(boxes, scores, idxs, iou_threshold)


def _register_fake_kernels() -> None:
    # The number of kept boxes depends on the data, so the fake result has a dynamic size.
    def fake_nms(boxes, scores, iou_threshold):
        return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.long)

    def fake_batched_nms(boxes, scores, idxs, iou_threshold):
        return fake_nms(boxes, scores, iou_threshold)

    torch.library.register_fake("fna_ext::nms", fake_nms)
    torch.library.register_fake("fna_ext::batched_nms", fake_batched_nms)


_extension.on_load(_register_fake_kernels)
