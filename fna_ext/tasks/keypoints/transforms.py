"""SimpleBaseline's top-down transforms: a person's box becomes a crop of the input's aspect ratio,
enlarged by 1.25; training jitters the crop's scale and rotation and mirrors it; the joints become
Gaussian heatmaps at a quarter of the input's resolution.

Coordinates are continuous, as :func:`fna_ext.data.transforms.flip_keypoints` takes them: pixel
``i`` spans ``[i, i + 1)``, so a mirror maps ``x`` to ``width - x`` (the loader moves COCO's pixel
indices there by adding 0.5). Pillow's
affine warp samples at pixel centres in the same convention, so the crop, its heatmaps and the
map back to the image agree exactly, and a mirrored crop needs no one-pixel shift of its heatmaps
(which SimpleBaseline's code applies to undo its own half-pixel offset).

Random draws come from torch's global generator, as the other tasks' transforms do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ...data.transforms import ToNormalizedTensor, _coin

# SimpleBaseline: the box is enlarged by 1.25 so a person's limbs stay in the crop
BOX_PADDING = 1.25
HEATMAP_STRIDE = 4  # three stride-2 deconvolutions on a stride-32 feature
HEATMAP_SIGMA = 2.0
# A joint whose Gaussian lies wholly outside the heatmap (SimpleBaseline: 3 sigma) gets no weight.
GAUSSIAN_RADIUS = 3.0


@dataclass(frozen=True)
class Crop:
    """A person's crop in the image: its centre (x, y), its (width, height) in image pixels, and
    the angle in degrees by which the output turns its content (the training jitter)."""

    center: tuple[float, float]
    size: tuple[float, float]
    rotation: float = 0.0

    def scaled(self, factor: float) -> "Crop":
        return Crop(self.center, (self.size[0] * factor, self.size[1] * factor), self.rotation)

    def rotated(self, degrees: float) -> "Crop":
        return Crop(self.center, self.size, self.rotation + degrees)


def box_crop(box: Sequence[float], aspect: float, padding: float = BOX_PADDING) -> Crop:
    """The crop of a COCO box [x, y, w, h]: its centre, widened or heightened to ``aspect``
    (width / height of the input), then enlarged by ``padding`` (SimpleBaseline's ``_box2cs``)."""
    x, y, w, h = (float(v) for v in box)
    w, h = max(w, 1.0), max(h, 1.0)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return Crop((x + float(box[2]) / 2, y + float(box[3]) / 2), (w * padding, h * padding))


def crop_matrix(crop: Crop, output_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine map from image to output coordinates (output_size = (H, W)): the crop's
    centre to the output's, its width to the output's (the crop has the output's aspect ratio),
    turned by its rotation about the centre."""
    out_h, out_w = output_size
    scale = out_w / crop.size[0]
    angle = math.radians(crop.rotation)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    center = np.asarray(crop.center, dtype=np.float64)
    offset = np.array([out_w / 2, out_h / 2]) - linear @ center
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear, -(linear @ matrix[:, 2])[:, None]], axis=1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``points`` (..., 2) mapped by the 2x3 ``matrix``."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 output of ``image`` under ``matrix``; outside the image is black."""
    out_h, out_w = output_size
    inverse = invert_affine(matrix)  # Pillow asks, for each output pixel, where to read
    warped = Image.fromarray(image).transform((out_w, out_h), Image.AFFINE, data=tuple(inverse.reshape(-1)),
                                              resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.array(warped)  # writable, for torch.from_numpy


def heatmap_size(input_size: tuple[int, int]) -> tuple[int, int]:
    return input_size[0] // HEATMAP_STRIDE, input_size[1] // HEATMAP_STRIDE


def to_heatmap_coordinates(points: np.ndarray) -> np.ndarray:
    """Continuous input coordinates -> heatmap pixel indices (a heatmap pixel's centre is where
    its stride x stride block of input pixels has its centre)."""
    return points / HEATMAP_STRIDE - 0.5


def from_heatmap_coordinates(points: np.ndarray) -> np.ndarray:
    return (points + 0.5) * HEATMAP_STRIDE


def gaussian_heatmaps(joints: np.ndarray, visible: np.ndarray, size: tuple[int, int],
                      sigma: float = HEATMAP_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) float32 Gaussians of ``sigma`` centred on ``joints`` (K, 2) heatmap pixel indices,
    at their sub-pixel positions, and (K,) float32 weights: 1 for a labelled joint (``visible``)
    whose Gaussian reaches the heatmap, else 0 with an empty heatmap."""
    h, w = size
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    margin = GAUSSIAN_RADIUS * sigma
    inside = ((joints[:, 0] > -margin) & (joints[:, 0] < w - 1 + margin) &
              (joints[:, 1] > -margin) & (joints[:, 1] < h - 1 + margin))
    weights = (visible & inside).astype(np.float32)
    dx = xs[None] - joints[:, 0, None, None].astype(np.float32)
    dy = ys[None] - joints[:, 1, None, None].astype(np.float32)
    heatmaps = np.exp(-(dx ** 2 + dy ** 2) / np.float32(2 * sigma ** 2))
    heatmaps[(dx ** 2 + dy ** 2) > np.float32(margin ** 2)] = 0  # truncated at 3 sigma
    return heatmaps * weights[:, None, None], weights


# the other tasks' last step: uint8 (H, W, 3) -> ImageNet-normalised float32 (3, H, W)
_TO_TENSOR = ToNormalizedTensor()


def normalize(image: np.ndarray) -> torch.Tensor:
    return _TO_TENSOR(image, None)[0]


def mirrored_crop(crop: Crop, width: int) -> Crop:
    """The same crop in the image mirrored about its vertical centre line."""
    return Crop((width - crop.center[0], crop.center[1]), crop.size, -crop.rotation)


@dataclass(frozen=True)
class Augmentation:
    """The training jitter, drawn as SimpleBaseline draws it but within +-35% and +-45 degrees (its
    COCO configs use 0.3 and 40, and clip the rotation at twice that): a scale factor from
    N(1, ``scale``) clipped to 1 +- scale, with probability ``rotation_p`` a rotation from
    N(0, ``rotation`` / 2) clipped to +- ``rotation`` degrees, and a mirror with probability ``flip_p``."""

    scale: float = 0.35
    rotation: float = 45.0
    rotation_p: float = 0.6
    flip_p: float = 0.5

    def draw(self) -> tuple[float, float, bool]:
        factor = float(torch.randn(()).item()) * self.scale + 1
        factor = min(max(factor, 1 - self.scale), 1 + self.scale)
        degrees = 0.0
        if _coin(self.rotation_p):
            degrees = min(max(float(torch.randn(()).item()) * self.rotation / 2, -self.rotation), self.rotation)
        return factor, degrees, _coin(self.flip_p)
