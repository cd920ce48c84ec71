"""Which backbone features a dense task's model takes (a detector's pyramid, DeepLab's low- and
high-level features). A tap names a place in any Arch-built :class:`~fna_ext.families.mbconv.Network`
(or any family's network of the same layout), so the same model builds on a seed, a searched
target or a super network's sampled path:

- ``"stage:I"``: the output of stage I (0-based; stage 0 is the fixed k3_e1 block);
- ``"expand:I"``: the expansion output (after BN and ReLU6) of stage I's first layer, before
  its depthwise conv; SSDLite's 576-channel, stride-16 feature is ``"expand:5"`` of MobileNetV2;
- ``"head"``: the output of the 1x1 head conv (1280 channels in MobileNetV2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torch import nn

from ..arch import Arch
from . import get_family


@dataclass(frozen=True)
class Tap:
    kind: str  # "stage", "expand" or "head"
    stage: int = -1

    @classmethod
    def parse(cls, text: str) -> "Tap":
        kind, _, index = text.partition(":")
        if kind == "head" and not index:
            return cls("head")
        if kind in ("stage", "expand") and index.isdigit():
            return cls(kind, int(index))
        raise ValueError(f"unknown feature tap {text!r}; use 'stage:I', 'expand:I' or 'head'")


def tap_channels(arch: Arch, taps: list[Tap], head_channels: int | None) -> list[int]:
    """Channels of each tapped feature of a network built from ``arch``, as its family declares
    them (:meth:`~fna_ext.families.Family.feature_info`)."""
    offered = {info.name: info.channels for info in get_family(arch.family).feature_info(arch, head_channels)}
    channels = []
    for tap in taps:
        name = "head" if tap.kind == "head" else f"{tap.kind}:{tap.stage}"
        if name not in offered:
            raise ValueError(f"feature tap {name!r} is not offered by the backbone {arch} (it offers "
                             f"{sorted(offered)}); an 'expand' tap needs a first layer with an inner expansion, "
                             "'head' a head conv")
        channels.append(offered[name])
    return channels


def extract_features(network: nn.Module, taps: list[Tap], x: torch.Tensor) -> list[torch.Tensor]:
    """Runs ``network`` only as far as the last tap needs and returns the tapped features."""
    wanted = {tap: None for tap in taps}
    last_stage = max(len(network.stages) - 1 if t.kind == "head" else t.stage for t in taps)
    x = network.stem(x)
    for i, stage in enumerate(network.stages):
        if i > last_stage:
            break
        layers = list(stage)
        if Tap("expand", i) in wanted:
            # the block declares its inner feature (a searched layer, a weighted mixture of them)
            x, wanted[Tap("expand", i)] = layers[0].forward_tapping_expand(x)
            layers = layers[1:]
        for layer in layers:
            x = layer(x)
        if Tap("stage", i) in wanted:
            wanted[Tap("stage", i)] = x
    if Tap("head") in wanted:
        wanted[Tap("head")] = network.head(x)
    return [wanted[tap] for tap in taps]
