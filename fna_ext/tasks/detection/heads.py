"""Detection heads: per level, class logits and box deltas for every anchor, flattened to
(N, H * W * A, K) in the anchors' location-major order."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ...families.mbconv.blocks import ConvBNAct


def _flatten(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """(N, A * K, H, W) -> (N, H * W * A, K)."""
    n, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w * (x.shape[1] // per_anchor), per_anchor)


def _separable_predictor(channels: int, outputs: int, bn_eps: float) -> nn.Sequential:
    return nn.Sequential(ConvBNAct(channels, channels, 3, groups=channels, bn_eps=bn_eps),
                         nn.Conv2d(channels, outputs, 1))


class SSDLiteHead(nn.Module):
    """One class and one box predictor per level, each depthwise-separable (3x3 depthwise + BN +
    ReLU6, then a 1x1 conv with bias). Classes include background at index 0 (softmax)."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 bn_eps: float = 1e-3):
        super().__init__()
        self.num_classes = num_classes  # background included
        self.cls = nn.ModuleList(_separable_predictor(c, a * num_classes, bn_eps)
                                 for c, a in zip(in_channels, num_anchors))
        self.box = nn.ModuleList(_separable_predictor(c, a * 4, bn_eps)
                                 for c, a in zip(in_channels, num_anchors))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits = [_flatten(head(f), self.num_classes) for head, f in zip(self.cls, features)]
        deltas = [_flatten(head(f), 4) for head, f in zip(self.box, features)]
        return logits, deltas


def _conv_tower(channels: int, depth: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """RetinaNet's head, shared by all levels: per branch four 3x3 convs with ReLU, then a 3x3
    predictor. Class logits are per class (sigmoid, no background), the class bias starts at the
    prior probability 0.01 so that early focal losses are not swamped by easy negatives."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, depth: int = 4,
                 prior: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower, self.box_tower = _conv_tower(in_channels, depth), _conv_tower(in_channels, depth)
        self.cls = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.box = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits = [_flatten(self.cls(self.cls_tower(f)), self.num_classes) for f in features]
        deltas = [_flatten(self.box(self.box_tower(f)), 4) for f in features]
        return logits, deltas
