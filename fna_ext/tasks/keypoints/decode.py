"""From heatmaps to joints in the image, as SimpleBaseline decodes them: each heatmap's argmax,
moved a quarter pixel towards its higher neighbour in x and in y, mapped from the heatmap to the
crop and through the crop's inverse affine map to the image. Flip testing averages the heatmaps
of the crop and of its mirror image, the mirror's flipped back with left and right swapped."""

from __future__ import annotations

import torch
from torch import nn

from .transforms import HEATMAP_STRIDE


def argmax_joints(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, 2) heatmap pixel positions (x, y), refined by the quarter-pixel shift, and (N, K)
    peak values, of (N, K, h, w) ``heatmaps``."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    peaks, index = flat.max(dim=-1)
    x, y = (index % w).to(heatmaps.dtype), torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype)
    xi, yi = x.long(), y.long()

    def at(dy: int, dx: int) -> torch.Tensor:
        rows, cols = (yi + dy).clamp(0, h - 1), (xi + dx).clamp(0, w - 1)
        return flat.gather(-1, (rows * w + cols).unsqueeze(-1)).squeeze(-1)

    # along each axis only where both neighbours exist (SimpleBaseline's get_final_preds asks it
    # of both axes at once; the two differ only on a heatmap's border rows and columns)
    shift_x = torch.sign(at(0, 1) - at(0, -1)) * ((xi > 0) & (xi < w - 1))
    shift_y = torch.sign(at(1, 0) - at(-1, 0)) * ((yi > 0) & (yi < h - 1))
    return torch.stack([x + 0.25 * shift_x, y + 0.25 * shift_y], dim=-1), peaks


def heatmap_to_image(points: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(N, K, 2) heatmap pixel positions -> image coordinates, by each crop's (N, 2, 3) inverse map."""
    in_crop = (points.double() + 0.5) * HEATMAP_STRIDE
    inverse = inverse.double()
    return in_crop @ inverse[:, :, :2].transpose(1, 2) + inverse[:, None, :, 2]


def flip_back(heatmaps: torch.Tensor, permutation: list[int]) -> torch.Tensor:
    """Heatmaps of a mirrored crop as the crop's own: mirrored, and joint ``i`` taken from
    ``permutation[i]`` (left and right swapped)."""
    return heatmaps.flip(-1)[:, permutation]


@torch.no_grad()
def predict_heatmaps(model: nn.Module, images: torch.Tensor, permutation: list[int] | None = None) -> torch.Tensor:
    """The model's heatmaps for ``images``; with ``permutation`` (flip testing) averaged with the
    heatmaps of the mirrored images flipped back."""
    heatmaps = model(images)
    if permutation is None:
        return heatmaps
    return (heatmaps + flip_back(model(images.flip(-1)), permutation)) / 2


def decode(heatmaps: torch.Tensor, inverse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, 2) float64 joints in image coordinates and (N, K) confidences (the heatmap peaks)."""
    points, peaks = argmax_joints(heatmaps.float())
    return heatmap_to_image(points, inverse), peaks
