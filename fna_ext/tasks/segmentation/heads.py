"""DeepLab's heads on any backbone's features: the ASPP (DeepLabv3) and the decoder of DeepLabv3+.

The configurations reproduce the Params/MAdds of FNA's Table 1 under the paper's counting
convention (``../shared/REFERENCE.md``; tested in python_tests/test_segmentation_models.py):

- **DeepLabv3** as FNA's published code builds it: the ASPP on the last stage's features (320
  channels in MobileNetV2) with a 1x1 branch, three depthwise-separable 3x3 branches at rates
  6, 12 and 18 and an image-pooling branch, 256 channels each; the concatenation projected to 256
  by a 1x1 conv, dropout 0.1 and a 1x1 classifier. No 3x3 conv after the ASPP (torchvision's
  DeepLabHead has one).
- **DeepLabv3+** with the usual decoder, which Table 1 does not describe: plain 3x3 ASPP branches,
  the stride-4 feature projected to 48 channels by a 1x1 conv, concatenated with the upsampled
  ASPP output, two plain 3x3 convs of 256 and the 1x1 classifier. With MobileNetV2 at 1024x2048
  this counts 5.82M params and 210.4B MAdds at output stride 16 (317.2B at 8), against Table 1's
  5.71M and 210.11B (313.87B) for FNA's own adapted backbone.

Every conv but the classifier is conv -> BN -> ReLU; ``norm_layer`` and ``act_layer`` choose
others (timm's style: the blocks take their parts).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


class AtrousConv2d(nn.Conv2d):
    """A dilated conv with "same" padding that skips the taps which can only read padding.

    Where the dilation is at least the feature map's side (the ASPP's rates 12 and 18 on the 8x8
    map of a 128-pixel crop at output stride 16, or the search's 321-pixel crops' 21x21 map at
    rate 24 under output stride 8), every off-centre row (or column) of taps lands outside the map
    for every output position, so the conv equals its centre row (column) alone. The result and the
    gradients are the same (those taps' gradients are zero either way); the multiplies by
    padding are gone, which matters most in eager PyTorch's slow dilated backward on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        same = self.padding == (dh * (kh - 1) // 2, dw * (kw - 1) // 2) and kh % 2 == 1 and kw % 2 == 1
        rows, cols = kh > 1 and dh >= x.shape[-2], kw > 1 and dw >= x.shape[-1]
        if not (rows or cols) or not same or self.stride != (1, 1) or self.padding_mode != "zeros":
            return super().forward(x)
        weight = self.weight
        if rows:
            weight = weight[:, :, kh // 2:kh // 2 + 1]
        if cols:
            weight = weight[:, :, :, kw // 2:kw // 2 + 1]
        return F.conv2d(x, weight, self.bias, 1, (0 if rows else self.padding[0], 0 if cols else self.padding[1]),
                        (1 if rows else dh, 1 if cols else dw), self.groups)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 1, *, dilation: int = 1,
                  groups: int = 1, norm_layer: NormLayer = nn.BatchNorm2d,
                  act_layer: ActLayer = nn.ReLU) -> nn.Sequential:
    """A bias-free conv with "same" padding for its dilation, then the norm and the activation."""
    padding = dilation * (kernel_size - 1) // 2
    conv = AtrousConv2d if dilation > 1 else nn.Conv2d
    return nn.Sequential(conv(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              groups=groups, bias=False),
                         norm_layer(out_channels), act_layer())


def separable_conv(in_channels: int, out_channels: int, *, dilation: int, norm_layer: NormLayer = nn.BatchNorm2d,
                   act_layer: ActLayer = nn.ReLU) -> nn.Sequential:
    """A dilated 3x3 depthwise conv and a 1x1 pointwise conv, each with its norm and activation."""
    return nn.Sequential(conv_norm_act(in_channels, in_channels, 3, dilation=dilation, groups=in_channels,
                                       norm_layer=norm_layer, act_layer=act_layer),
                         conv_norm_act(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer))


class ImagePooling(nn.Module):
    """The ASPP's global branch: average over the image, a 1x1 conv, and the result spread back
    over every position."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer = nn.BatchNorm2d,
                 act_layer: ActLayer = nn.ReLU):
        super().__init__()
        self.project = conv_norm_act(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate (depthwise-separable
    or plain), the image-pooling branch, all concatenated and projected to ``channels``.

    ``rates`` are for output stride 16; DeepLab doubles them at output stride 8
    (:func:`aspp_rates`)."""

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18), *,
                 separable: bool = True, norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU):
        super().__init__()
        parts = dict(norm_layer=norm_layer, act_layer=act_layer)
        branches = [conv_norm_act(in_channels, channels, 1, **parts)]
        for rate in rates:
            branches.append(separable_conv(in_channels, channels, dilation=rate, **parts) if separable
                            else conv_norm_act(in_channels, channels, 3, dilation=rate, **parts))
        branches.append(ImagePooling(in_channels, channels, **parts))
        self.branches = nn.ModuleList(branches)
        self.project = conv_norm_act(channels * len(branches), channels, 1, **parts)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def aspp_rates(output_stride: int, rates_at_16: Sequence[int] = (6, 12, 18)) -> tuple[int, ...]:
    """The ASPP's rates at ``output_stride``: DeepLab's are for 16 and scale with the feature size."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"DeepLab runs at output stride 8, 16 or 32, got {output_stride}")
    return tuple(max(1, r * 16 // output_stride) for r in rates_at_16)


class DeepLabV3Head(nn.Module):
    """ASPP -> dropout -> 1x1 classifier (with bias) on the backbone's last feature."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), separable: bool = True, dropout: float = 0.1,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU):
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, separable=separable, norm_layer=norm_layer,
                         act_layer=act_layer)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.aspp(features[-1])))


class DeepLabV3PlusHead(nn.Module):
    """The ASPP on the last feature, upsampled to the low-level (stride-4) feature, which a 1x1
    conv projects to ``low_channels``; both concatenated, two 3x3 convs, a 1x1 classifier.
    ``features`` is ``[low-level, last]``."""

    def __init__(self, low_level_channels: int, in_channels: int, num_classes: int, *, channels: int = 256,
                 low_channels: int = 48, rates: Sequence[int] = (6, 12, 18), separable: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d, act_layer: ActLayer = nn.ReLU):
        super().__init__()
        parts = dict(norm_layer=norm_layer, act_layer=act_layer)
        self.aspp = ASPP(in_channels, channels, rates, separable=separable, **parts)
        self.low_level = conv_norm_act(low_level_channels, low_channels, 1, **parts)
        self.fuse = nn.Sequential(conv_norm_act(channels + low_channels, channels, 3, **parts),
                                  conv_norm_act(channels, channels, 3, **parts))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, last = features
        context = F.interpolate(self.aspp(last), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.low_level(low)], dim=1)))
