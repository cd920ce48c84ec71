"""Named architectures of the MBConv family."""

from __future__ import annotations

from ...arch import Arch, Stage


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of ``divisor`` without going more than 10% below (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# MobileNetV2: (expansion, channels, layers, stride of the first layer) per stage.
_MOBILENET_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2_arch(width_mult: float = 1.0) -> Arch:
    """MobileNetV2's backbone, channels scaled by ``width_mult`` and rounded to multiples of 8."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    in_ch = make_divisible(32 * width_mult)
    stages = []
    for expansion, channels, layers, stride in _MOBILENET_V2_STAGES:
        out_ch = make_divisible(channels * width_mult)
        stages.append(Stage(in_ch, out_ch, (f"k3_e{expansion}",) * layers, stride))
        in_ch = out_ch
    return Arch(tuple(stages))


NAMED_ARCHS = {"mobilenet_v2": mobilenet_v2_arch}
