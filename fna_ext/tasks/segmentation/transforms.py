"""Segmentation transforms: each takes and returns ``(image, label)``, an RGB ``uint8`` array
(H, W, 3) and a ``uint8`` array (H, W) of train ids with 255 ignored. Images resize bilinearly,
labels by nearest neighbour; padding gives the image zeros and the label IGNORE. Random draws come
from torch's global generator, as the detection transforms' do (:mod:`fna_ext.data.transforms`).

The recipes of FNA's segmentation experiments (``../shared/REFERENCE.md``):

- search: the image resized to 512x1024, then random 321x321 crops and a flip;
- fine-tuning: a random scale in {0.75, 1.0, ..., 2.0}, a random 769x769 crop and a flip;
- evaluation: the full image (sliding-window inference handles its size).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD, Compose, ToNormalizedTensor, _choice, _coin
from .labels import IGNORE

Pair = tuple[np.ndarray, np.ndarray]


def _resized(image: np.ndarray, label: np.ndarray, height: int, width: int) -> Pair:
    if image.shape[:2] == (height, width):
        return image, label
    return (np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST)))


class Resize:
    """To a fixed (height, width)."""

    def __init__(self, size: Sequence[int]):
        self.height, self.width = (int(v) for v in size)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        return _resized(image, label, self.height, self.width)

    def __repr__(self) -> str:
        return f"Resize({self.height}x{self.width})"


class RandomScale:
    """By a factor drawn from ``scales``."""

    def __init__(self, scales: Sequence[float] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)):
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {list(scales)}")
        self.scales = tuple(float(s) for s in scales)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        scale = _choice(self.scales)
        height, width = label.shape
        return _resized(image, label, max(1, round(height * scale)), max(1, round(width * scale)))

    def __repr__(self) -> str:
        return f"RandomScale({list(self.scales)})"


class RandomCrop:
    """A random (height, width) window; a smaller image is first padded at the bottom and right
    (image zeros, label IGNORE), so every crop has the full size."""

    def __init__(self, size: Sequence[int]):
        self.height, self.width = (int(v) for v in size)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        height, width = label.shape
        if height < self.height or width < self.width:
            pad_h, pad_w = max(0, self.height - height), max(0, self.width - width)
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
            height, width = label.shape
        top = int(torch.randint(height - self.height + 1, ()).item())
        left = int(torch.randint(width - self.width + 1, ()).item())
        window = (slice(top, top + self.height), slice(left, left + self.width))
        return image[window], label[window]

    def __repr__(self) -> str:
        return f"RandomCrop({self.height}x{self.width})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        if _coin(self.p):
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensors:
    """The last step: the normalised float32 CHW image and the int64 label."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.normalize = ToNormalizedTensor(mean, std)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tensor, _ = self.normalize(np.ascontiguousarray(image), None)
        return tensor, torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))

    def __repr__(self) -> str:
        return "ToTensors()"


def search_transform(resize: Sequence[int] = (512, 1024), crop: Sequence[int] = (321, 321)) -> Compose:
    return Compose([Resize(resize), RandomCrop(crop), RandomHorizontalFlip(), ToTensors()])


def finetune_transform(crop: Sequence[int] = (769, 769),
                       scales: Sequence[float] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)) -> Compose:
    return Compose([RandomScale(scales), RandomCrop(crop), RandomHorizontalFlip(), ToTensors()])


def eval_transform() -> Compose:
    return Compose([ToTensors()])
