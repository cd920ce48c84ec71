"""Anchor generators. Anchors of a level are laid out location-major (row, column, then anchor),
the order in which the heads' outputs are flattened."""

from __future__ import annotations

import math
from typing import Sequence

import torch


class _CachedAnchors:
    """Anchors depend only on the feature and image sizes, so each layout is built once."""

    def __init__(self):
        self._cache: dict = {}

    def __call__(self, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 device=None, dtype=torch.float32) -> list[torch.Tensor]:
        """One (H_l * W_l * A_l, 4) tensor of (x1, y1, x2, y2) pixel anchors per level."""
        key = (tuple(map(tuple, feature_sizes)), tuple(image_size), str(device), dtype)
        if key not in self._cache:
            levels = self.build(list(map(tuple, feature_sizes)), tuple(image_size))
            self._cache[key] = [a.to(device=device, dtype=dtype) for a in levels]
        return self._cache[key]

    def build(self, feature_sizes, image_size) -> list[torch.Tensor]:
        raise NotImplementedError


def _grid(shapes_wh: torch.Tensor, feature_size: tuple[int, int], step: tuple[float, float]) -> torch.Tensor:
    """Anchors of sizes ``shapes_wh`` (A, 2) centred on every cell of a feature map."""
    fh, fw = feature_size
    cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * step[0]
    cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * step[1]
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    half = torch.cat((-shapes_wh / 2, shapes_wh / 2), dim=1).reshape(1, -1, 4)
    return (centres + half).reshape(-1, 4)


class SSDAnchorGenerator(_CachedAnchors):
    """SSD default boxes. Level k has scale s_k, spaced linearly from ``min_scale`` to
    ``max_scale`` (fractions of the image side), and boxes of scale s_k at ratio 1,
    sqrt(s_k * s_{k+1}) at ratio 1, and s_k at each ratio r and 1/r in ``aspect_ratios[k]``: 4
    boxes for ``[2]`` and 6 for ``[2, 3]``. Centres sit at cell centres; boxes are clipped to the
    image."""

    def __init__(self, aspect_ratios: Sequence[Sequence[float]], min_scale: float = 0.2,
                 max_scale: float = 0.95, clip: bool = True):
        super().__init__()
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"anchor scales must satisfy 0 < min_scale <= max_scale <= 1, got "
                             f"{min_scale}, {max_scale}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        levels = len(self.aspect_ratios)
        step = (max_scale - min_scale) / max(levels - 1, 1)
        self.scales = [min_scale + step * k for k in range(levels)] + [1.0]
        self.clip = clip

    def num_anchors(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _shapes(self, level: int) -> torch.Tensor:
        s, s_next = self.scales[level], self.scales[level + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in self.aspect_ratios[level]:
            root = math.sqrt(r)
            shapes += [(s * root, s / root), (s / root, s * root)]
        return torch.tensor(shapes, dtype=torch.float64)

    def build(self, feature_sizes, image_size):
        if len(feature_sizes) != len(self.aspect_ratios):
            raise ValueError(f"SSD anchors: {len(feature_sizes)} feature maps but "
                             f"{len(self.aspect_ratios)} levels of aspect ratios")
        h, w = image_size
        levels = []
        for k, (fh, fw) in enumerate(feature_sizes):
            shapes = self._shapes(k) * torch.tensor([w, h], dtype=torch.float64)
            anchors = _grid(shapes, (fh, fw), (h / fh, w / fw))
            if self.clip:
                anchors[:, 0::2] = anchors[:, 0::2].clamp(0, w)
                anchors[:, 1::2] = anchors[:, 1::2].clamp(0, h)
            levels.append(anchors)
        return levels


class GridAnchorGenerator(_CachedAnchors):
    """RetinaNet anchors: per level of stride s, sizes ``octave_base_scale * s * 2^(i/n)`` for
    i < n = ``scales_per_octave``, each at every ratio h/w in ``ratios``; 9 per location by
    default."""

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), octave_base_scale: float = 4.0,
                 scales_per_octave: int = 3, ratios: Sequence[float] = (0.5, 1.0, 2.0)):
        super().__init__()
        self.strides = list(strides)
        self.sizes = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.ratios = list(ratios)

    def num_anchors(self) -> list[int]:
        return [len(self.sizes) * len(self.ratios)] * len(self.strides)

    def build(self, feature_sizes, image_size):
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"grid anchors: {len(feature_sizes)} feature maps but "
                             f"{len(self.strides)} strides")
        levels = []
        for stride, size in zip(self.strides, feature_sizes):
            shapes = [(stride * s / math.sqrt(r), stride * s * math.sqrt(r))
                      for r in self.ratios for s in self.sizes]
            levels.append(_grid(torch.tensor(shapes, dtype=torch.float64), size, (stride, stride)))
        return levels
