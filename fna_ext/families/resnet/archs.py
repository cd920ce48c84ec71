"""Named architectures of the ResNet family: torchvision's ResNet-18/34/50 backbones (layer1..4)."""

from __future__ import annotations

from ...arch import Arch, Stage
from .blocks import EXPANSION

# (block, layers per stage); stage widths 64, 128, 256, 512, the first stage at stride 1 (the
# stem's max pool has already reduced the input by 4)
_RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
            "resnet50": ("bottleneck", (3, 4, 6, 3))}
_WIDTHS = (64, 128, 256, 512)
STEM_CHANNELS = 64


def resnet_arch(block: str, depths: tuple[int, ...], kernel: int = 3) -> Arch:
    """A ResNet backbone of ``block`` stages with ``depths`` layers each."""
    stages, in_ch = [], STEM_CHANNELS
    for i, (width, depth) in enumerate(zip(_WIDTHS, depths)):
        out_ch = width * EXPANSION[block]
        stages.append(Stage(in_ch, out_ch, (f"{block}_k{kernel}",) * depth, 1 if i == 0 else 2))
        in_ch = out_ch
    return Arch(tuple(stages), family="resnet")


def _named(name: str):
    block, depths = _RESNETS[name]
    return lambda: resnet_arch(block, depths)


NAMED_ARCHS = {name: _named(name) for name in _RESNETS}
