"""Detection transforms in numpy and Pillow: each takes and returns ``(image, target)``, where the
image is an RGB ``uint8`` array of shape (H, W, 3) and the target holds per-box numpy arrays
``boxes`` (N, 4) float32 xyxy pixels, ``labels`` (N,) int64 and ``iscrowd`` (N,) bool, plus
``scale`` (2,) float32 ``[sx, sy]``, the product of every resize so far. Only
:class:`ToNormalizedTensor`, the last step, returns a float tensor instead of an array.

``scale`` maps boxes back to the original image (``original = boxes / [sx, sy, sx, sy]``) only
when resizing is the sole geometric step, as in the evaluation transforms; the training
transforms also crop, pad and flip, which no scale can undo, and training never needs to.

Every random draw comes from torch's global generator, never Python's or numpy's: DataLoader
seeds torch in each worker from its own seeded generator, and ``torch.manual_seed`` fixes the
main process, so one seed reproduces a run.

Two recipes, as in MMDetection's configs: SSD (photometric distortion, expand, min-IoU random
crop, fixed-size resize, flip) and RetinaNet (short-side resize with a cap on the long side, flip).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..ops import photometric
from ..ops.photometric import hsv_to_rgb, photometric_distortion, rgb_to_hsv  # noqa: F401 (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PER_BOX_KEYS = ("boxes", "labels", "iscrowd")

Target = dict
Sample = tuple[np.ndarray, Target]


# ---- randomness (torch's global generator, see the module docstring) ---------------------------

def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _coin(p: float) -> bool:
    return torch.rand(()).item() < p


def _choice(options: Sequence):
    return options[int(torch.randint(len(options), ()).item())]


# ---- target helpers ---------------------------------------------------------------------------

def _keep(target: Target, mask: np.ndarray) -> Target:
    """Filters every per-box array together, so labels and iscrowd stay aligned with boxes."""
    return {**target, **{key: target[key][mask] for key in PER_BOX_KEYS if key in target}}


def _rescale(target: Target, sx: float, sy: float) -> Target:
    boxes = target["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
    scale = target.get("scale", np.ones(2, np.float32)) * np.array([sx, sy], dtype=np.float32)
    return {**target, "boxes": boxes.astype(np.float32), "scale": scale.astype(np.float32)}


def _resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _resize(sample: Sample, width: int, height: int) -> Sample:
    image, target = sample
    sx, sy = width / image.shape[1], height / image.shape[0]
    return _resize_image(image, width, height), _rescale(target, sx, sy)


def _patches_iou(patches: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(P, B) IoU of each xyxy patch with each box."""
    lt = np.maximum(patches[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(patches[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(patches)[:, None] + area(boxes)[None] - inter, 1e-6)


# ---- transforms ---------------------------------------------------------------------------------

class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[np.ndarray, Target], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class PhotometricDistortion:
    """SSD's colour jitter, each step with probability ``p``: brightness, then contrast either
    first or last (a coin decides, as in SSD), saturation and hue in HSV in between, on uint8
    (H, W, 3) RGB images. The pixels go through the compiled kernel
    (:func:`fna_ext.ops.photometric.photometric_distortion`): a loader worker shares the cores
    with the step, and this was its largest cost after decoding."""

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18,
                 p: float = 0.5):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta
        self.p = p
        photometric.compiled()  # loads the extension here, before any DataLoader worker forks

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        # the draws in SSD's order: a seeded sample comes out the same as it always has
        brightness = _uniform(-self.brightness_delta, self.brightness_delta) if _coin(self.p) else 0.0
        contrast_first = _coin(0.5)
        contrast = self._contrast() if contrast_first else 1.0
        saturation = _uniform(*self.saturation_range) if _coin(self.p) else None
        hue = _uniform(-self.hue_delta, self.hue_delta) if _coin(self.p) else None
        if not contrast_first:
            contrast = self._contrast()
        return photometric_distortion(image, brightness, contrast, contrast_first, saturation, hue), target

    def _contrast(self) -> float:
        return _uniform(*self.contrast_range) if _coin(self.p) else 1.0

    def __repr__(self) -> str:
        return (f"PhotometricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
                f"hue_delta={self.hue_delta}, p={self.p})")


class Expand:
    """With probability ``p``, places the image at a random spot of a canvas ``ratio`` times
    larger, filled with the mean colour, so small objects become smaller still (SSD's zoom out)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, ratio_range: tuple[float, float] = (1, 4),
                 p: float = 0.5):
        if ratio_range[0] < 1 or ratio_range[1] < ratio_range[0]:
            raise ValueError(f"Expand: ratio_range must satisfy 1 <= low <= high, got {ratio_range}")
        # the mean is given in [0, 1] like the normalization constants; the canvas is in [0, 255]
        self.fill = np.array([round(255 * m) for m in mean], dtype=np.uint8)
        self.ratio_range = ratio_range
        self.p = p

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        if not _coin(self.p):
            return image, target
        height, width = image.shape[:2]
        ratio = _uniform(*self.ratio_range)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        left = int(_uniform(0, canvas_w - width))
        top = int(_uniform(0, canvas_h - height))
        # repeating one filled row is far faster than broadcasting 3 values over the whole canvas
        row = np.tile(self.fill, (1, canvas_w, 1))
        canvas = np.repeat(row, canvas_h, axis=0)
        canvas[top:top + height, left:left + width] = image
        shift = np.array([left, top, left, top], dtype=np.float32)
        return canvas, {**target, "boxes": target["boxes"] + shift}

    def __repr__(self) -> str:
        return f"Expand(fill={tuple(self.fill.tolist())}, ratio_range={self.ratio_range}, p={self.p})"


class MinIoURandomCrop:
    """SSD's random crop: pick no crop or a minimum IoU (0 meaning any patch), then try up to
    ``max_tries`` patches of ``min_crop_size``..1 of each side with aspect ratio 0.5..2 until every
    non-crowd box overlaps the patch by at least that IoU. Boxes whose centre falls in the patch
    are kept and clipped to it; those left under 1 px wide or high are dropped."""

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 min_crop_size: float = 0.3, aspect_range: tuple[float, float] = (0.5, 2.0),
                 max_tries: int = 50):
        # None: keep the whole image; 0.0: any patch, as in SSD's sampler list
        self.modes = (None, *min_ious, 0.0)
        self.min_crop_size = min_crop_size
        self.aspect_range = aspect_range
        self.max_tries = max_tries

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        # SSD loops until a mode succeeds; each round picks "no crop" with probability 1/7, so a
        # cap on the rounds changes nothing in practice and rules out an endless loop
        for _ in range(100):
            min_iou = _choice(self.modes)
            if min_iou is None:
                return image, target
            found = self.fitting_patch(image.shape[1], image.shape[0], target, min_iou)
            if found is not None:
                return self._crop(image, target, *found)
        return image, target

    def fitting_patch(self, width: int, height: int, target: Target,
                      min_iou: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The first of ``max_tries`` random patches that every non-crowd box overlaps by at least
        ``min_iou`` and that holds the centre of one, with the mask of boxes whose centre it holds;
        None when none does. All tries are drawn and checked at once: one draw of random numbers
        and a (tries x boxes) IoU instead of a Python loop (2.3 ms an image before, the costliest
        step of SSD's augmentation)."""
        draws = torch.rand(self.max_tries, 4, dtype=torch.float64).numpy()
        low_w, low_h = self.min_crop_size * width, self.min_crop_size * height
        new_w = low_w + (width - low_w) * draws[:, 0]
        new_h = low_h + (height - low_h) * draws[:, 1]
        left, top = (width - new_w) * draws[:, 2], (height - new_h) * draws[:, 3]
        patches = np.stack([left.astype(int), top.astype(int), (left + new_w).astype(int),
                            (top + new_h).astype(int)], axis=1).astype(np.float32)
        ratio = new_h / new_w
        fits = ((ratio >= self.aspect_range[0]) & (ratio <= self.aspect_range[1])
                & (patches[:, 2] > patches[:, 0]) & (patches[:, 3] > patches[:, 1]))
        boxes, crowd = target["boxes"], target["iscrowd"].astype(bool)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[None] > patches[:, None, :2]) & (centres[None] < patches[:, None, 2:])).all(axis=2)
        counted = boxes[~crowd]  # crowd regions are ignored by the matchers, so they set no limit
        if len(counted):
            fits &= (_patches_iou(patches, counted) >= min_iou).all(axis=1) & inside[:, ~crowd].any(axis=1)
        first = np.flatnonzero(fits)
        return (patches[first[0]], inside[first[0]]) if len(first) else None

    @staticmethod
    def _crop(image: np.ndarray, target: Target, patch: np.ndarray, inside: np.ndarray) -> Sample:
        """Keeps the boxes whose centre is in ``patch``, clipped to it (those left under 1 px are
        dropped), and the patch of the image."""
        kept = _keep(target, inside)
        shifted = np.clip(kept["boxes"], np.tile(patch[:2], 2), np.tile(patch[2:], 2)) - np.tile(patch[:2], 2)
        sizes = shifted[:, 2:] - shifted[:, :2]
        kept = _keep({**kept, "boxes": shifted.astype(np.float32)}, (sizes >= 1).all(axis=1))
        x0, y0, x1, y1 = patch.astype(int)
        return image[y0:y1, x0:x1], kept

    def __repr__(self) -> str:
        return (f"MinIoURandomCrop(modes={self.modes}, min_crop_size={self.min_crop_size}, "
                f"aspect_range={self.aspect_range}, max_tries={self.max_tries})")


class Resize:
    """Resizes to ``size`` = (H, W); with ``keep_ratio`` the image instead fits inside it."""

    def __init__(self, size: tuple[int, int] = (320, 320), keep_ratio: bool = False):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"Resize: size must be (H, W) with positive sides, got {size}")
        self.size = (int(size[0]), int(size[1]))
        self.keep_ratio = keep_ratio

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        height, width = image.shape[:2]
        if not self.keep_ratio:
            return _resize((image, target), self.size[1], self.size[0])
        factor = min(self.size[0] / height, self.size[1] / width)
        return _resize((image, target), _rounded(width * factor), _rounded(height * factor))

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, keep_ratio={self.keep_ratio})"


class ResizeShortSide:
    """Scales so the short side becomes ``short``, unless the long side would then pass
    ``max_long`` (RetinaNet's 800/1333 rule)."""

    def __init__(self, short: int = 800, max_long: int = 1333):
        if short < 1 or max_long < short:
            raise ValueError(f"ResizeShortSide: need 1 <= short <= max_long, got {short}, {max_long}")
        self.short = short
        self.max_long = max_long

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of ``height`` x ``width`` is resized to."""
        factor = min(self.short / min(height, width), self.max_long / max(height, width))
        return _rounded(height * factor), _rounded(width * factor)

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        height, width = self.output_size(*image.shape[:2])
        return _resize((image, target), width, height)

    def __repr__(self) -> str:
        return f"ResizeShortSide(short={self.short}, max_long={self.max_long})"


def _rounded(x: float) -> int:
    # round half up (Python's round() rounds half to even), and never to an empty image
    return max(1, int(x + 0.5))


# COCO's 17 person keypoints, left and right of each part: a mirrored left wrist is a right wrist
COCO_PERSON_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def flip_keypoints(keypoints: np.ndarray, width: int, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, K, 3) keypoints (x, y, visibility) mirrored in an image ``width`` wide: x -> width - x,
    each (left, right) pair swapped, and unlabelled points (visibility 0) left at zero."""
    flipped = keypoints.copy()
    flipped[..., 0] = width - flipped[..., 0]
    for left, right in flip_pairs:
        flipped[:, [left, right]] = flipped[:, [right, left]]
    flipped[flipped[..., 2] == 0] = 0
    return flipped


class RandomHorizontalFlip:
    """Mirrors the image and what the target holds: ``boxes``, per-pixel ``masks`` (N, H, W) or a
    ``semantic`` label map (H, W), and ``keypoints`` (N, K, 3), whose left and right points trade
    places by ``flip_pairs`` (for COCO persons, :data:`COCO_PERSON_FLIP_PAIRS`)."""

    def __init__(self, p: float = 0.5, flip_pairs: Sequence[tuple[int, int]] = ()):
        self.p, self.flip_pairs = p, tuple(tuple(pair) for pair in flip_pairs)

    def __call__(self, image: np.ndarray, target: Target) -> Sample:
        if not _coin(self.p):
            return image, target
        width = image.shape[1]
        flipped = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            flipped["boxes"] = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                                        axis=1).astype(np.float32)
        if "masks" in target:
            flipped["masks"] = np.ascontiguousarray(target["masks"][..., ::-1])
        if "semantic" in target:
            flipped["semantic"] = np.ascontiguousarray(target["semantic"][:, ::-1])
        if "keypoints" in target:
            if not self.flip_pairs:
                raise ValueError("RandomHorizontalFlip: keypoints need flip_pairs (which left and right points "
                                 "trade places), e.g. COCO_PERSON_FLIP_PAIRS")
            flipped["keypoints"] = flip_keypoints(target["keypoints"], width, self.flip_pairs)
        return np.ascontiguousarray(image[:, ::-1]), flipped

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, flip_pairs={self.flip_pairs})"


class ToNormalizedTensor:
    """The last step: uint8 HWC array -> float32 CHW tensor, ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[torch.Tensor, Target]:
        if not image.flags.writeable:  # arrays from Pillow are read-only; torch wants to own them
            image = image.copy()
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return chw.sub_(self.mean).div_(self.std), target

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


# ---- recipes ----------------------------------------------------------------------------------

def ssd_train_transform(size: tuple[int, int] = (320, 320), expand_max_ratio: float = 4.0) -> Compose:
    """SSD's recipe; ``expand_max_ratio`` (4 in SSD) bounds how far objects are zoomed out."""
    return Compose([PhotometricDistortion(), Expand(IMAGENET_MEAN, (1, expand_max_ratio), p=0.5), MinIoURandomCrop(),
                    Resize(size, keep_ratio=False), RandomHorizontalFlip(0.5), ToNormalizedTensor()])


def ssd_eval_transform(size: tuple[int, int] = (320, 320)) -> Compose:
    return Compose([Resize(size, keep_ratio=False), ToNormalizedTensor()])


def retinanet_train_transform(short: int = 800, max_long: int = 1333, flip: bool = True) -> Compose:
    steps = [ResizeShortSide(short, max_long)] + ([RandomHorizontalFlip(0.5)] if flip else [])
    return Compose(steps + [ToNormalizedTensor()])


def retinanet_eval_transform(short: int = 800, max_long: int = 1333) -> Compose:
    return Compose([ResizeShortSide(short, max_long), ToNormalizedTensor()])


def default_eval_transform() -> Compose:
    """Normalization only: the image keeps its size."""
    return Compose([ToNormalizedTensor()])


class RawImageInput(torch.nn.Module):
    """The base of exported models: they take raw float RGB images in 0..255 of a fixed
    ``input_size`` and normalise them as training did (:meth:`normalize`)."""

    def __init__(self, input_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class NormalizedModel(RawImageInput):
    """``model`` behind the normalisation it was trained with, its one output returned as a tuple
    (the export wrappers of models with a single dense output name it and its tolerance)."""

    def __init__(self, model: torch.nn.Module, input_size: Sequence[int]):
        super().__init__(input_size)
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(self.normalize(images)),)
