"""A picture of a segmentation model's predictions, as the paper's Figure 5 shows them: a few
validation images, each with its ground truth and the prediction beside it, coloured by class
(Cityscapes' own colours for its 19 classes; ignored pixels black)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from torch import nn

from ...data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ...plots import _new_figure, _save_figure
from .evaluation import EvalSettings, predict_scores
from .labels import CITYSCAPES_CLASSES, IGNORE

# cityscapesScripts' colours of the 19 train ids, in train-id order
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def palette(class_names) -> np.ndarray:
    """(256, 3) uint8 colours by label value: Cityscapes' for its classes, else tab20's, and black
    for the ignored 255 (and any value past the classes)."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    if tuple(class_names) == CITYSCAPES_CLASSES:
        colors[:len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    else:
        table = colormaps["tab20"]
        for index in range(min(len(class_names), IGNORE)):
            colors[index] = np.round(np.array(table(index % 20)[:3]) * 255)
    return colors


def image_to_rgb(image: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image back to (H, W, 3) uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.cpu().float() * std + mean).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).numpy()


def example_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over a dataset of ``length`` (all of them when fewer)."""
    if length <= count:
        return list(range(length))
    return [round(i * (length - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]


@torch.no_grad()
def write_predictions(model: nn.Module, dataset, path: str | os.PathLike, *, count: int = 4,
                      settings: EvalSettings = EvalSettings(), device="cpu") -> Path:
    """Writes ``path``: ``count`` images of ``dataset`` as rows of image, ground truth and
    prediction (``model`` run as evaluation runs it)."""
    if len(dataset) == 0:
        raise ValueError("there is no validation image to draw")
    was_training = model.training
    model.eval()
    colors = palette(dataset.class_names)
    indices = example_indices(len(dataset), count)
    samples = [dataset[index] for index in indices]
    height, width = samples[0][0].shape[-2:]
    figure = _new_figure(3 * 3.2, len(indices) * 3.2 * height / width + 0.4)
    axes = figure.subplots(len(indices), 3, squeeze=False)
    try:
        for row, index, (image, label) in zip(axes, indices, samples):
            scores = predict_scores(model, image[None].to(device), len(dataset.class_names), settings)
            prediction = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
            truth = label.numpy().clip(0, IGNORE).astype(np.uint8)
            for ax, picture, title in zip(row, (image_to_rgb(image), colors[truth], colors[prediction]),
                                          (f"image {index}", "ground truth", "prediction")):
                ax.imshow(picture, interpolation="nearest")
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
    finally:
        model.train(was_training)
    return _save_figure(figure, path)
