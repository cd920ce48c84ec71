"""The building blocks every network of fna_ext is made of: the seed, the derived target
networks and the super network's sampled paths all use the same MBConv definition, so remapping
and weight loading can match them by structure."""

from __future__ import annotations

import torch
from torch import nn

from ...arch import Op


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6 (or no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: bool = True, bn_eps: float = 1e-5):
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand (absent when expansion is 1) -> KxK depthwise ->
    1x1 project, with a residual connection when stride is 1 and channels do not change."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, expansion: int,
                 stride: int = 1, dilation: int = 1, bn_eps: float = 1e-5):
        super().__init__()
        hidden = in_channels * expansion
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.expansion, self.stride = kernel_size, expansion, stride
        self.expand = (ConvBNAct(in_channels, hidden, 1, bn_eps=bn_eps)
                       if expansion != 1 else None)
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden,
                                   dilation=dilation, bn_eps=bn_eps)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False, bn_eps=bn_eps)
        self.use_residual = stride == 1 and in_channels == out_channels

    @property
    def op(self) -> Op:
        return Op(self.kernel_size, self.expansion)

    @property
    def hidden_channels(self) -> int:
        return self.depthwise.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.use_residual else out


class Skip(nn.Identity):
    """A ``skip`` layer of an architecture: the identity, kept as a module so that layer indices
    match the architecture's."""

    op = Op()


def make_layer(in_channels: int, out_channels: int, stride: int, op: Op, bn_eps: float = 1e-5,
               dilation: int = 1) -> nn.Module:
    if op.is_skip:
        return Skip()
    return MBConv(in_channels, out_channels, op.kernel, op.expansion, stride, dilation, bn_eps)
