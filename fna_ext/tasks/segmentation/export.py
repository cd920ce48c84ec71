"""The segmentation task's export wrapper: a DeepLab model for a fixed input size, raw 0..255 RGB
in, per-pixel class logits at the input size out (argmax over the classes gives the train ids;
softmax the probabilities). Sliding windows, flips and scales are left to the runtime."""

from __future__ import annotations

from ...data.transforms import NormalizedModel


class SegmentationLogits(NormalizedModel):
    """``model`` behind the normalisation it was trained with: images (N, 3, H, W) float RGB in
    0..255 -> logits (N, classes, H, W)."""

    output_names = ("logits",)
    # the largest difference an exported file may show against the original, in logits
    tolerances = (1e-3,)
