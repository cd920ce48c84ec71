"""The pose task's export wrapper: a SimpleBaseline model for a fixed crop size, raw 0..255 RGB
person crops in, one heatmap per joint at a quarter of the crop's resolution out. Decoding is left
to the runtime, as fna_ext does it (:mod:`.decode`): each heatmap's argmax ``(x, y)``, moved a
quarter pixel towards its higher neighbour, is at ``((x + 0.5) * 4, (y + 0.5) * 4)`` in the crop;
the peak is the joint's confidence."""

from __future__ import annotations

import torch
from torch import nn

from ...data.transforms import RawImageInput


class PoseHeatmaps(RawImageInput):
    """``model`` behind the normalisation it was trained with: crops (N, 3, H, W) float RGB in
    0..255 -> heatmaps (N, joints, H/4, W/4)."""

    output_names = ("heatmaps",)
    # the largest difference an exported file may show against the original (heatmaps peak near 1)
    tolerances = (1e-3,)

    def __init__(self, model: nn.Module, input_size: tuple[int, int]):
        super().__init__(input_size)
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(self.normalize(images)),)
