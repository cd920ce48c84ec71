"""Which backbone features a detector takes. A tap names a place in any Arch-built
:class:`~fna_ext.families.mbconv.Network`, so the same detector builds on a seed, a searched target or
a super network's sampled path:

- ``"stage:I"``: the output of stage I (0-based; stage 0 is the fixed k3_e1 block);
- ``"expand:I"``: the expansion output (after BN and ReLU6) of stage I's first layer, before
  its depthwise conv; SSDLite's 576-channel, stride-16 feature is ``"expand:5"`` of MobileNetV2;
- ``"head"``: the output of the 1x1 head conv (1280 channels in MobileNetV2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...arch import Arch, Op
from ...families.mbconv.blocks import MBConv
from ...families.mbconv.network import Network


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


def _first_layer_op(arch: Arch, stage: int) -> Op:
    return arch.stages[stage].layer_ops()[0]


def tap_channels(arch: Arch, taps: list[Tap], head_channels: int | None) -> list[int]:
    """Channels of each tapped feature of a network built from ``arch``."""
    channels = []
    for tap in taps:
        if tap.kind == "head":
            if not head_channels:
                raise ValueError("feature tap 'head' needs a backbone with a head conv")
            channels.append(head_channels)
        elif tap.kind == "stage":
            channels.append(arch.stages[tap.stage].out_channels)
        else:
            op = _first_layer_op(arch, tap.stage)
            if op.expansion == 1:
                raise ValueError(f"feature tap 'expand:{tap.stage}' needs an expansion conv in "
                                 f"stage {tap.stage}'s first layer, which is {op.name}")
            channels.append(arch.stages[tap.stage].in_channels * op.expansion)
    return channels


def _run_first_layer_tapping_expand(layer: MBConv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = layer.expand(x)
    out = layer.project(layer.depthwise(hidden))
    return (out + x if layer.use_residual else out), hidden


def extract_features(network: Network, taps: list[Tap], x: torch.Tensor) -> list[torch.Tensor]:
    """Runs ``network`` only as far as the last tap needs and returns the tapped features."""
    wanted = {tap: None for tap in taps}
    last_stage = max(len(network.stages) - 1 if t.kind == "head" else t.stage for t in taps)
    x = network.stem(x)
    for i, stage in enumerate(network.stages):
        if i > last_stage:
            break
        layers = list(stage)
        if Tap("expand", i) in wanted:
            # a super network's searched layer knows how to tap its own expansion
            tapping = getattr(layers[0], "forward_tapping_expand", None)
            x, wanted[Tap("expand", i)] = (tapping(x) if tapping is not None
                                           else _run_first_layer_tapping_expand(layers[0], x))
            layers = layers[1:]
        for layer in layers:
            x = layer(x)
        if Tap("stage", i) in wanted:
            wanted[Tap("stage", i)] = x
    if Tap("head") in wanted:
        wanted[Tap("head")] = network.head(x)
    return [wanted[tap] for tap in taps]
