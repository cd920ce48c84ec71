"""A picture of a pose model's predictions: a few validation images, each drawn twice, with the
ground-truth skeletons (every person the file annotates) and with the predicted ones (joints below the confidence that counts
towards a person's score are left out, as a viewer would want)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ...plots import _new_figure, _save_figure
from .data import CocoKeypoints, collate_keypoints
from .decode import decode, predict_heatmaps
from .evaluation import CONFIDENT_JOINT


def _draw_skeleton(ax, joints: np.ndarray, shown: np.ndarray, edges, colour: str) -> None:
    joints = joints - 0.5  # imshow puts pixel i's centre at i, the continuous coordinates at i + 0.5
    for a, b in edges:
        if shown[a] and shown[b]:
            ax.plot([joints[a, 0], joints[b, 0]], [joints[a, 1], joints[b, 1]], color=colour, linewidth=1.5)
    ax.scatter(joints[shown, 0], joints[shown, 1], s=8, color=colour, zorder=3)


@torch.no_grad()
def write_predictions(model: nn.Module, dataset: CocoKeypoints, path: str | os.PathLike, *, count: int = 4,
                      device="cpu") -> Path:
    """Writes ``path``: ``count`` images of ``dataset`` (spread over it) as rows of ground truth
    and prediction, every person of the image drawn."""
    if len(dataset) == 0:
        raise ValueError("there is no validation person to draw")
    image_ids = list(dict.fromkeys(person.image_id for person in dataset.people))
    chosen = [image_ids[round(i * (len(image_ids) - 1) / max(count - 1, 1))] for i in range(min(count, len(image_ids)))]
    chosen = list(dict.fromkeys(chosen))
    was_training = model.training
    model.eval()
    edges = dataset.skeleton.edges
    figure = _new_figure(2 * 3.2, len(chosen) * 3.2 + 0.4)
    axes = figure.subplots(len(chosen), 2, squeeze=False)
    try:
        for row, image_id in zip(axes, chosen):
            indices = [i for i, person in enumerate(dataset.people) if person.image_id == image_id]
            images, targets = collate_keypoints([dataset[i] for i in indices])
            flip = dataset.skeleton.flip_permutation() if getattr(dataset, "eval_flip", True) else None
            heatmaps = predict_heatmaps(model, images.to(device), flip)
            joints, peaks = decode(heatmaps.cpu(), targets["inverse"])
            picture = np.asarray(Image.open(dataset.people[indices[0]].path).convert("RGB"))
            for ax, title in zip(row, ("ground truth", "prediction")):
                ax.imshow(picture)
                # joints predicted off the image must not rescale the axes
                ax.set_xlim(-0.5, picture.shape[1] - 0.5)
                ax.set_ylim(picture.shape[0] - 0.5, -0.5)
                ax.set_autoscale_on(False)
                ax.set_title(f"image {image_id}: {title}", fontsize=9)
                ax.set_axis_off()
            # the truth from the file: with detected boxes, the crops carry none
            for annotation in dataset.coco.imgToAnns.get(image_id, []):
                if annotation["category_id"] == dataset.category_id and annotation.get("keypoints"):
                    truth = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(-1, 3)
                    _draw_skeleton(row[0], truth[:, :2] + 0.5, truth[:, 2] > 0, edges, "lime")
            for person_joints, person_peaks in zip(joints.numpy(), peaks.numpy()):
                _draw_skeleton(row[1], person_joints, person_peaks > CONFIDENT_JOINT, edges, "red")
    finally:
        model.train(was_training)
    return _save_figure(figure, path)
