"""Image classification data in the ImageNet folder layout: ``root/<split>/<class name>/<image>``.

Classes are the sub-folder names in sorted order (label = position), as torchvision's
ImageFolder numbers them. Images come back as float32 CHW tensors normalized with the ImageNet
mean and std, which the seed networks were trained with. The training augmentation draws its
randomness from torch, so ``torch.manual_seed`` makes it reproducible (and DataLoader workers get
distinct streams).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import UnreadableImage, keep_readable
from .transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm")

Transform = Callable[[Image.Image], Image.Image]


class TrainTransform:
    """A random crop covering ``scale`` of the image's area with an aspect ratio in ``ratio``,
    resized to ``size`` x ``size``, then a horizontal flip half the time (Inception-style
    random resized crop, milder: the synthetic shapes must stay mostly in view)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.scale, self.ratio = size, scale, ratio

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random crop of a ``width`` x ``height`` image."""
        area = width * height * _uniform(*self.scale)
        aspect = float(np.exp(_uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))))
        crop_w = min(width, max(1, round((area * aspect) ** 0.5)))
        crop_h = min(height, max(1, round((area / aspect) ** 0.5)))
        left = int(torch.randint(0, width - crop_w + 1, ()).item())
        top = int(torch.randint(0, height - crop_h + 1, ()).item())
        return left, top, left + crop_w, top + crop_h

    def __call__(self, image: Image.Image) -> Image.Image:
        box = self.crop_box(*image.size)
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if torch.rand(()).item() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


class EvalTransform:
    """Resizes to ``size`` x ``size``."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), Image.Resampling.BILINEAR)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 (3, H, W) tensor normalized with the ImageNet mean/std."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class ImageFolderDataset(Dataset):
    """``root/split/<class>/<image>`` as ``(image tensor, label)`` pairs; ``transform`` maps a
    PIL image to a PIL image before normalization (see TrainTransform, EvalTransform)."""

    def __init__(self, root: str | os.PathLike, split: str, transform: Transform | None = None):
        self.root = Path(root).expanduser() / split
        if not self.root.is_dir():
            raise ValueError(f"no {split!r} folder at {self.root}: expected "
                             f"{Path(root) / split / '<class name>' / '<image>'}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} holds no class folders")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [(path, label) for label, name in enumerate(self.classes)
                        for path in _images_in(self.root / name)]
        if not self.samples:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                             "in its class folders")
        # a file that is not an image is skipped now, not found by a data worker mid-epoch
        self.samples = keep_readable(self.samples, [path for path, _ in self.samples], source=str(self.root))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            # its header was read when the dataset was built: the rest of the file is damaged
            raise UnreadableImage(f"cannot read image {path}: {err}") from err
        if self.transform is not None:
            image = self.transform(image)
        return to_normalized_tensor(image), label


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
