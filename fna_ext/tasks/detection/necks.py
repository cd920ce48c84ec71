"""Necks: what sits between the backbone's features and the heads. SSDLite's extra layers
continue the pyramid below the backbone; RetinaNet's FPN merges the backbone's levels top-down."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...families.mbconv.blocks import ConvBNAct


class SSDLiteExtraBlock(nn.Sequential):
    """1x1 conv to half the output width, 3x3 depthwise stride 2, 1x1 conv; BN and ReLU6 after
    each."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-3):
        mid = out_channels // 2
        super().__init__(ConvBNAct(in_channels, mid, 1, bn_eps=bn_eps),
                         ConvBNAct(mid, mid, 3, stride=2, groups=mid, bn_eps=bn_eps),
                         ConvBNAct(mid, out_channels, 1, bn_eps=bn_eps))


class SSDLiteExtras(nn.Module):
    """Appends one extra level per entry of ``channels`` (512, 256, 256, 128 in SSDLite), each
    computed from the previous last level."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (512, 256, 256, 128),
                 bn_eps: float = 1e-3):
        super().__init__()
        ins = [in_channels, *channels[:-1]]
        self.blocks = nn.ModuleList(SSDLiteExtraBlock(i, o, bn_eps) for i, o in zip(ins, channels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = list(features)
        for block in self.blocks:
            out.append(block(out[-1]))
        return out


class FPN(nn.Module):
    """Feature pyramid (Lin et al.) as RetinaNet uses it: 1x1 laterals and 3x3 output convs with
    bias, nearest upsampling, then P6 by a 3x3 stride-2 conv on the last backbone feature (C5)
    and P7 by ReLU and a 3x3 stride-2 conv on P6."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, extra_levels: int = 2):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.outputs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                     for _ in in_channels)
        extra_in = [in_channels[-1]] + [out_channels] * (extra_levels - 1)
        self.extras = nn.ModuleList(nn.Conv2d(c, out_channels, 3, stride=2, padding=1) for c in extra_in)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.laterals, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        out = [conv(x) for conv, x in zip(self.outputs, laterals)]
        x = features[-1]
        for i, conv in enumerate(self.extras):
            x = conv(F.relu(x) if i > 0 else x)
            out.append(x)
        return out
