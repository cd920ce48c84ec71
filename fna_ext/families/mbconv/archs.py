"""Named architectures of the MBConv family."""

from __future__ import annotations

from ...arch import Arch, Stage
from .op import make_divisible


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


# NAS-found MBConv networks, as timm defines them (timm's model names in brackets): the stem's
# width, the fixed parts' settings, and per stage (C_out, stride of the first layer, ops, where
# "op*n" repeats an op). Their parameter counts at 1000 classes are timm's (python_tests).
_NAS_SEEDS = {
    "mnasnet_a1": (32, {"act": "re"}, [  # [semnasnet_100]
        (16, 1, "k3_e1_re"), (24, 2, "k3_e6_re*2"), (40, 2, "k5_e3_se0.25_re*3"), (80, 2, "k3_e6_re*4"),
        (112, 1, "k3_e6_se0.25_re*2"), (160, 2, "k5_e6_se0.25_re*3"), (320, 1, "k3_e6_re")]),
    "mnasnet_b1": (32, {"act": "re"}, [  # [mnasnet_100], torchvision's mnasnet1_0
        (16, 1, "k3_e1_re"), (24, 2, "k3_e3_re*3"), (40, 2, "k5_e3_re*3"), (80, 2, "k5_e6_re*3"),
        (96, 1, "k3_e6_re*2"), (192, 2, "k5_e6_re*4"), (320, 1, "k3_e6_re")]),
    "spnasnet_100": (32, {"act": "re"}, [  # Single-Path NAS, ProxylessNAS's space [spnasnet_100]
        (16, 1, "k3_e1_re"), (24, 2, "k3_e3_re*3"), (40, 2, "k5_e6_re k3_e3_re*3"),
        (80, 2, "k5_e6_re k3_e3_re*3"), (96, 1, "k5_e6_re k5_e3_re*3"), (192, 2, "k5_e6_re*4"),
        (320, 1, "k3_e6_re")]),
    "fbnet_c": (16, {"act": "re", "head": 1984}, [  # [fbnetc_100]
        (16, 1, "k3_e1_pw_re"), (24, 2, "k3_e6_re k3_e1_pw_re*2"), (32, 2, "k5_e6_re k5_e3_re k5_e6_re k3_e6_re"),
        (64, 2, "k5_e6_re k5_e3_re k5_e6_re*2"), (112, 1, "k5_e6_re*3 k5_e3_re"), (184, 2, "k5_e6_re*4"),
        (352, 1, "k3_e6_re")]),
    "mobilenet_v3_large": (16, {"act": "hs", "head": 960, "pre_logits": 1280}, [  # [mobilenetv3_large_100]
        (16, 1, "k3_e1_re"), (24, 2, "k3_e4_re k3_e3_re"), (40, 2, "k5_e3_hse0.25_re*3"),
        (80, 2, "k3_e6_hs k3_e2.5_hs k3_e2.3_hs*2"), (112, 1, "k3_e6_hse0.25_hs*2"), (160, 2, "k5_e6_hse0.25_hs*3")]),
    "mobilenet_v3_small": (16, {"act": "hs", "head": 576, "pre_logits": 1024}, [  # [mobilenetv3_small_100]
        (16, 2, "k3_e1_hse0.25_re"), (24, 2, "k3_e4.5_re k3_e3.67_re"),
        (40, 2, "k5_e4_hse0.25_hs k5_e6_hse0.25_hs*2"), (48, 1, "k5_e3_hse0.25_hs*2"), (96, 2, "k5_e6_hse0.25_hs*3")]),
    "efficientnet_b0": (32, {"act": "sw"}, [  # [efficientnet_b0]
        (16, 1, "k3_e1_se0.25_sw"), (24, 2, "k3_e6_se0.25_sw*2"), (40, 2, "k5_e6_se0.25_sw*2"),
        (80, 2, "k3_e6_se0.25_sw*3"), (112, 1, "k5_e6_se0.25_sw*3"), (192, 2, "k5_e6_se0.25_sw*4"),
        (320, 1, "k3_e6_se0.25_sw")]),
}


def _ops(text: str) -> tuple[str, ...]:
    ops = []
    for item in text.split():
        op, _, repeat = item.partition("*")
        ops += [op] * int(repeat or 1)
    return tuple(ops)


def nas_seed_arch(name: str) -> Arch:
    """One of the NAS-found seeds (:data:`_NAS_SEEDS`) as an Arch."""
    stem, fixed, rows = _NAS_SEEDS[name]
    stages, in_ch = [], stem
    for out_ch, stride, ops in rows:
        stages.append(Stage(in_ch, out_ch, _ops(ops), stride))
        in_ch = out_ch
    return Arch(tuple(stages), fixed=fixed)


NAMED_ARCHS = {"mobilenet_v2": mobilenet_v2_arch,
               **{name: (lambda name=name: nas_seed_arch(name)) for name in _NAS_SEEDS}}
