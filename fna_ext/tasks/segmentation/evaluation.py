"""Segmentation evaluation as FNA's published code ran it on Cityscapes: sliding-window inference
(crops of 769x769 at a stride of 2/3 of the crop, single scale, no flip) and the mean IoU from a
confusion matrix over the train ids, ignoring label 255. Flipped and rescaled copies of each image
(``eval.flip``, ``eval.scales``) are optional: their class probabilities are averaged, as
DeepLab's multi-scale evaluation does."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class, over the
    pixels whose label is a class (the ignored 255, and anything else out of range, left out)."""
    valid = (label >= 0) & (label < num_classes)
    index = label[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """mIoU over the classes that occur in the labels or the predictions (a class absent from
    both has no IoU, and no entry), pixel accuracy, mean class accuracy, and each class's IoU by
    name. Every value is a number, so metrics.json stays strict JSON."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    labelled, predicted = confusion.sum(1), confusion.sum(0)
    union = labelled + predicted - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
    accuracy = torch.where(labelled > 0, true_positive / labelled.clamp(min=1), torch.full_like(labelled, math.nan))
    metrics = {"mIoU": float(iou.nanmean()), "pixel_accuracy": float(true_positive.sum() / confusion.sum().clamp(min=1)),
               "mean_accuracy": float(accuracy.nanmean())}
    metrics.update({f"IoU/{name}": float(value) for name, value in zip(class_names, iou) if not math.isnan(value)})
    return metrics


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Starts of the windows along one side: every ``stride``, the last flush with the end."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride))
    return starts + [length - crop]


@torch.no_grad()
def sliding_window_logits(model: nn.Module, image: torch.Tensor, num_classes: int, crop: tuple[int, int] = (769, 769),
                          stride: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits (1, classes, H, W) of one image (1, 3, H, W), averaged over overlapping crops.
    A crop larger than the image runs on the image padded at the bottom and right, as training
    padded its crops."""
    _, _, height, width = image.shape
    crop_h, crop_w = crop
    stride = stride or (math.ceil(crop_h * 2 / 3), math.ceil(crop_w * 2 / 3))
    logits = image.new_zeros((1, num_classes, height, width))
    counts = image.new_zeros((1, 1, height, width))
    for top in window_starts(height, crop_h, stride[0]):
        for left in window_starts(width, crop_w, stride[1]):
            window = image[:, :, top:top + crop_h, left:left + crop_w]
            h, w = window.shape[-2:]
            padded = F.pad(window, (0, max(0, crop_w - w), 0, max(0, crop_h - h)))
            logits[:, :, top:top + h, left:left + w] += model(padded)[:, :, :h, :w]
            counts[:, :, top:top + h, left:left + w] += 1
    return logits / counts


@dataclass(frozen=True)
class EvalSettings:
    """How each image is predicted: windows of ``crop``, and optionally the mean of the class
    probabilities over the image ``flip``-ped and rescaled by each of ``scales``."""

    crop: tuple[int, int] = (769, 769)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def from_config(cls, config: dict) -> "EvalSettings":
        evaluation = config.get("eval", {})
        return cls(tuple(config["data"]["eval_crop"]), bool(evaluation.get("flip", False)),
                   tuple(float(s) for s in evaluation.get("scales", (1.0,))))

    @property
    def single(self) -> bool:
        return not self.flip and tuple(self.scales) == (1.0,)


@torch.no_grad()
def predict_scores(model: nn.Module, image: torch.Tensor, num_classes: int,
                   settings: EvalSettings = EvalSettings()) -> torch.Tensor:
    """Class scores (1, classes, H, W) of one image (1, 3, H, W): the sliding-window logits, or
    with flip or several scales the mean of each copy's softmax, resized back to the image."""
    if settings.single:
        return sliding_window_logits(model, image, num_classes, settings.crop)
    height, width = image.shape[-2:]
    total, copies = None, 0
    for scale in settings.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = image if size == (height, width) else F.interpolate(image, size=size, mode="bilinear",
                                                                     align_corners=False)
        for flipped in (False, True) if settings.flip else (False,):
            logits = sliding_window_logits(model, scaled.flip(-1) if flipped else scaled, num_classes, settings.crop)
            logits = logits.flip(-1) if flipped else logits
            if size != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = logits.softmax(1)
            total = probabilities if total is None else total + probabilities
            copies += 1
    return total / copies


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, *, settings: EvalSettings = EvalSettings(),
                          device="cpu") -> dict[str, float]:
    """The metrics of ``model`` (logits at the input size) over ``dataset``'s (image, label) pairs."""
    was_training = model.training
    model.eval()
    num_classes = len(dataset.class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    try:
        for index in range(len(dataset)):
            image, label = dataset[index]
            scores = predict_scores(model, image[None].to(device), num_classes, settings)
            confusion += confusion_matrix(scores.argmax(1)[0].cpu(), label, num_classes)
    finally:
        model.train(was_training)
    return segmentation_metrics(confusion, dataset.class_names)

