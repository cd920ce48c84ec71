"""Running a detector over a dataset: batches, post-processing, and boxes mapped back from the
transformed image to the original image's pixels, ready for COCO evaluation."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ...data.batching import collate_detection


def to_original_coordinates(detections: dict, target: dict) -> dict:
    """Divides boxes by the target's ``scale`` (sx, sy) and tags them with the image id."""
    scale = target["scale"].to(detections["boxes"]).repeat(2)
    return {"image_id": int(target["image_id"]), "boxes": (detections["boxes"] / scale).cpu(),
            "scores": detections["scores"].cpu(), "labels": detections["labels"].cpu()}


@torch.no_grad()
def predict_dataset(model, dataset, *, batch_size: int = 8, device="cpu", num_workers: int = 0,
                    progress: bool = False, size_divisor: int = 32) -> list[dict]:
    """Detections for every image of ``dataset`` (which must use an evaluation transform), in
    original image coordinates."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers,
                                         collate_fn=lambda b: collate_detection(b, size_divisor))
    was_training = model.training
    model.eval()
    results = []
    try:
        for images, targets in tqdm(loader, disable=not progress, desc="evaluate", leave=False):
            sizes = [tuple(int(v) for v in t["size"]) for t in targets]
            for detections, target in zip(model.predict(images.to(device), sizes), targets):
                results.append(to_original_coordinates(detections, target))
    finally:
        model.train(was_training)
    return results
