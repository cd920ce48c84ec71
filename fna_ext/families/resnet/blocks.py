"""BasicBlock and Bottleneck in torchvision's layout (``conv1``/``bn1``..., ``downsample.{0,1}``),
so torchvision's ResNet weights load by renaming prefixes only, with the stride on the K x K conv
as torchvision's v1.5 Bottleneck has it. Unlike torchvision, the K x K kernel size is a parameter
(the search's candidates) and a BasicBlock may be dilated (DeepLab's output stride)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import batch_norm
from .op import Op

EXPANSION = {"basic": 1, "bottleneck": 4}  # block output channels / inner width


def relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def spatial_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A bias-free K x K conv whose padding keeps the size (up to the stride) at any dilation."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2 * dilation,
                     dilation=dilation, bias=False)


def run_spatial(conv: nn.Conv2d, x: torch.Tensor, kernel: int | None) -> torch.Tensor:
    """``conv(x)``, or with only the centre ``kernel`` x ``kernel`` taps of its weight: a shared
    search layer runs its smaller candidates on the slices of one max-size block."""
    size = conv.kernel_size[0]
    if kernel is None or kernel == size:
        return conv(x)
    start = (size - kernel) // 2
    weight = conv.weight[:, :, start:start + kernel, start:start + kernel]
    return F.conv2d(x, weight, None, conv.stride, kernel // 2 * conv.dilation[0], conv.dilation, conv.groups)


def downsample(in_channels: int, out_channels: int, stride: int, norm_layer) -> nn.Sequential | None:
    """The shortcut's 1x1 conv + norm, where the residual's shape changes (None: identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels))


class _Residual(nn.Module):
    """What both blocks share: the op they stand for and the shortcut around them."""

    block = ""

    @property
    def op(self) -> Op:
        return Op(self.block, self.kernel_size)

    @property
    def width(self) -> int:
        """The inner channels (conv1's output), which width remapping may change."""
        return self.conv1.out_channels

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) if self.downsample is not None else x

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, None): a ResNet block declares no inner feature (``FeatureInfo`` kind ``expand``)."""
        return self(x), None


class BasicBlock(_Residual):
    """conv1 (K x K, stride) -> bn1 -> act -> conv2 (K x K) -> bn2, plus the shortcut, -> act."""

    block = "basic"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        super().__init__()
        norm_layer, act_layer = norm_layer or batch_norm(), act_layer or relu
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.conv1 = spatial_conv(in_channels, out_channels, kernel_size, stride, dilation)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = spatial_conv(out_channels, out_channels, kernel_size, 1, dilation)
        self.bn2 = norm_layer(out_channels)
        self.act = act_layer()
        self.downsample = downsample(in_channels, out_channels, stride, norm_layer)

    def forward(self, x: torch.Tensor, kernel: int | None = None) -> torch.Tensor:
        out = self.act(self.bn1(run_spatial(self.conv1, x, kernel)))
        out = self.bn2(run_spatial(self.conv2, out, kernel))
        return self.act(out + self._shortcut(x))


class Bottleneck(_Residual):
    """conv1 (1x1 to width = C_out / 4) -> bn1 -> act -> conv2 (K x K, stride) -> bn2 -> act ->
    conv3 (1x1 to C_out) -> bn3, plus the shortcut, -> act (torchvision's v1.5)."""

    block = "bottleneck"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        super().__init__()
        if out_channels % EXPANSION["bottleneck"]:
            raise ValueError(f"a bottleneck block's output channels ({out_channels}) must be a multiple of "
                             f"{EXPANSION['bottleneck']} (its inner width times the expansion)")
        norm_layer, act_layer = norm_layer or batch_norm(), act_layer or relu
        width = out_channels // EXPANSION["bottleneck"]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = spatial_conv(width, width, kernel_size, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.act = act_layer()
        self.downsample = downsample(in_channels, out_channels, stride, norm_layer)

    def forward(self, x: torch.Tensor, kernel: int | None = None) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(run_spatial(self.conv2, out, kernel)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self._shortcut(x))


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_block(in_channels: int, out_channels: int, stride: int, op: Op | str, *, dilation: int = 1,
               norm_layer: Callable[[int], nn.Module] | None = None,
               act_layer: Callable[[], nn.Module] | None = None) -> _Residual:
    op = op if isinstance(op, Op) else Op.parse(op)
    return BLOCK_TYPES[op.block](in_channels, out_channels, op.kernel, stride, dilation, norm_layer, act_layer)
