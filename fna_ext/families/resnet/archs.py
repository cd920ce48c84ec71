"""Named architectures of the ResNet family: torchvision's ResNet-18/34/50, Wide ResNet-50-2 and
ResNeXt-50 (32x4d) backbones (layer1..4)."""

from __future__ import annotations

from ...arch import Arch, Stage
from .blocks import EXPANSION
from .op import Op

# (block, layers per stage, groups, inner width %); stage widths 64, 128, 256, 512 (times the
# expansion), the first stage at stride 1 (the stem's max pool has already reduced the input by 4).
# torchvision's width_per_group=128 doubles a bottleneck's inner width, and so does 32 groups of 4.
_RESNETS = {"resnet18": ("basic", (2, 2, 2, 2), 1, 100), "resnet34": ("basic", (3, 4, 6, 3), 1, 100),
            "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 100),
            "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 200),
            "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 200)}
_WIDTHS = (64, 128, 256, 512)
STEM_CHANNELS = 64


def resnet_arch(block: str, depths: tuple[int, ...], kernel: int = 3, groups: int = 1, width: int = 100) -> Arch:
    """A ResNet backbone of ``block`` stages with ``depths`` layers each."""
    stages, in_ch, op = [], STEM_CHANNELS, Op(block, kernel, groups, width).name
    for i, (planes, depth) in enumerate(zip(_WIDTHS, depths)):
        out_ch = planes * EXPANSION[block]
        stages.append(Stage(in_ch, out_ch, (op,) * depth, 1 if i == 0 else 2))
        in_ch = out_ch
    return Arch(tuple(stages), family="resnet")


def _named(name: str):
    block, depths, groups, width = _RESNETS[name]
    return lambda: resnet_arch(block, depths, groups=groups, width=width)


NAMED_ARCHS = {name: _named(name) for name in _RESNETS}
