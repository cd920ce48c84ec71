"""The layout every family's network shares, which the core relies on: ``stem`` ->
``stages[i][j]`` -> ``head`` (None where the family has no head conv) -> pool -> ``classifier``
(None without one). Dense tasks read ``forward_stages``; the super network keeps the same parts."""

from __future__ import annotations

import torch
from torch import nn


class StagedNetwork(nn.Module):
    """Subclasses build ``stem``, ``stages``, ``head``, ``classifier`` and ``dropout`` (or None);
    no class-level defaults, which would shadow the registered submodules."""

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (before the head conv)."""
        outputs, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stages(x)[-1]
        if self.head is not None:
            x = self.head(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        if self.classifier is None:
            return x
        pre_logits = getattr(self, "pre_logits", None)  # MobileNetV3's hidden layer after pooling
        if pre_logits is not None:
            x = pre_logits(x)
        dropout = getattr(self, "dropout", None)
        return self.classifier(dropout(x) if dropout is not None else x)
