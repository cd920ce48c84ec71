"""What part of a shared max-size weight one sampled candidate uses, so that a weight step can
update that part alone (:func:`fna_ext.nas.search.step_inside`).

A region is a box (one slice per leading dimension: a centre window of kernel taps, the first
channels) and, where the used entries are not the whole box, a boolean ``inside`` mask that
broadcasts over it (a grouped conv's block-diagonal of channels). The optimiser then runs on the
box's view: its cost follows the candidate's size, not the max-size weight's, which for a ResNet
layer's 7x7 weights is most of a weight step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampledRegion:
    box: tuple[slice, ...]
    inside: torch.Tensor | None = None  # bool, broadcastable to the box's shape; None: all of it

    def mask(self, tensor: torch.Tensor) -> torch.Tensor:
        """The region as a full-size boolean mask of ``tensor`` (for checks and references)."""
        mask = torch.zeros_like(tensor, dtype=torch.bool)
        box = mask[self.box]
        box.copy_(self.inside.expand_as(box) if self.inside is not None else torch.ones_like(box))
        return mask
