"""The pose task's export wrapper: a SimpleBaseline model for a fixed crop size, raw 0..255 RGB
person crops in, one heatmap per joint at a quarter of the crop's resolution out. Decoding is left
to the runtime, as fna_ext does it (:mod:`.decode`): each heatmap's argmax ``(x, y)``, moved a
quarter pixel towards its higher neighbour, is at ``((x + 0.5) * 4, (y + 0.5) * 4)`` in the crop;
the peak is the joint's confidence."""

from __future__ import annotations

from ...data.transforms import NormalizedModel


class PoseHeatmaps(NormalizedModel):
    """``model`` behind the normalisation it was trained with: crops (N, 3, H, W) float RGB in
    0..255 -> heatmaps (N, joints, H/4, W/4)."""

    output_names = ("heatmaps",)
    # the largest difference an exported file may show against the original (heatmaps peak near 1)
    tolerances = (1e-3,)
