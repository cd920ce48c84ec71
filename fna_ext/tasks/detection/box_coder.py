"""Box coding: a box as offsets from its anchor, (dx, dy, dw, dh) divided by per-coordinate
standard deviations. SSD uses (0.1, 0.1, 0.2, 0.2) (its "variances"); RetinaNet (1, 1, 1, 1)."""

from __future__ import annotations

import math

import torch

# Largest log-scale change a decoded box may take: keeps exp() finite for wild early predictions.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    def __init__(self, stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        self.stds = tuple(float(s) for s in stds)

    def _std_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(self.stds)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(N, 4) targets for (N, 4) ``boxes`` matched to (N, 4) ``anchors``."""
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        eps = torch.finfo(boxes.dtype).eps
        deltas = torch.stack(((bx - ax) / aw, (by - ay) / ah,
                              torch.log(bw.clamp(min=eps) / aw), torch.log(bh.clamp(min=eps) / ah)), 1)
        return deltas / self._std_tensor(deltas)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from (..., 4) ``deltas`` relative to (..., 4) ``anchors`` (inverse of encode)."""
        deltas = deltas * self._std_tensor(deltas)
        aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
        ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
        cx, cy = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
        w = aw * deltas[..., 2].clamp(max=_MAX_LOG_SCALE).exp()
        h = ah * deltas[..., 3].clamp(max=_MAX_LOG_SCALE).exp()
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
