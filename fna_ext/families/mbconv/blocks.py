"""The building blocks every network of fna_ext is made of: the seed, the derived target
networks and the super network's sampled paths all use the same MBConv definition, so remapping
and weight loading can match them by structure."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..norm import batch_norm
from .op import Op


def relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> norm -> activation (or none). ``norm_layer(channels)`` and
    ``act_layer()`` build the norm and the activation; by default BatchNorm2d with ``bn_eps`` and
    ReLU6, as MobileNetV2 has them."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: bool = True, bn_eps: float = 1e-5,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = (norm_layer or batch_norm(bn_eps))(out_channels)
        self.act = (act_layer or relu6)() if act else nn.Identity()


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand (absent when expansion is 1) -> KxK depthwise ->
    1x1 project, with a residual connection when stride is 1 and channels do not change."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, expansion: int,
                 stride: int = 1, dilation: int = 1, bn_eps: float = 1e-5,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        super().__init__()
        hidden = in_channels * expansion
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.expansion, self.stride, self.dilation = kernel_size, expansion, stride, dilation
        parts = dict(bn_eps=bn_eps, norm_layer=norm_layer, act_layer=act_layer)
        self.expand = ConvBNAct(in_channels, hidden, 1, **parts) if expansion != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, dilation=dilation, **parts)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False, **parts)
        self.use_residual = stride == 1 and in_channels == out_channels

    @property
    def op(self) -> Op:
        return Op(self.kernel_size, self.expansion)

    @property
    def hidden_channels(self) -> int:
        return self.depthwise.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tapping_expand(x, tap=False)[0]

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, expansion output after BN and activation): the inner feature the block
        declares (``FeatureInfo`` kind ``expand``), which SSDLite reads; None when not asked."""
        hidden = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(hidden))
        return (out + x if self.use_residual else out), (hidden if tap else None)


class Skip(nn.Identity):
    """A ``skip`` layer of an architecture: the identity, kept as a module so that layer indices
    match the architecture's."""

    op = Op()


def make_layer(in_channels: int, out_channels: int, stride: int, op: Op, bn_eps: float = 1e-5,
               dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
               act_layer: Callable[[], nn.Module] | None = None) -> nn.Module:
    if op.is_skip:
        return Skip()
    return MBConv(in_channels, out_channels, op.kernel, op.expansion, stride, dilation, bn_eps,
                  norm_layer=norm_layer, act_layer=act_layer)
