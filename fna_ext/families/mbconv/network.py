"""The classification network of any :class:`~fna_ext.arch.Arch`: stem, stages, 1x1 head conv,
pooling, MobileNetV3's pre-logits layer where the arch has one, and classifier, laid out as
MobileNetV2 is."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ...arch import Arch, stage_geometry
from .archs import make_divisible, mobilenet_v2_arch
from ..base import ARCH_HEAD
from ..network import StagedNetwork
from .blocks import ACTIVATIONS, ConvBNAct, make_layer, relu6
from .family import MBCONV
from .op import ACT_TOKENS



def fixed_act(arch: Arch, act_layer: Callable[[], nn.Module] | None = None) -> Callable[[], nn.Module] | None:
    """The stem's and head's activation: the arch's ``act`` setting, else the one passed in."""
    token = arch.fixed.get("act")
    return ACTIVATIONS[ACT_TOKENS[token]] if token else act_layer


def build_stem(arch: Arch, **parts) -> nn.Module:
    """The 3x3 stride-2 conv to the first stage's input channels (``parts``: ``bn_eps``,
    ``norm_layer``, ``act_layer``), with the arch's activation."""
    parts["act_layer"] = fixed_act(arch, parts.get("act_layer"))
    return ConvBNAct(3, arch.stem_channels, 3, stride=2, **parts)


def build_head(arch: Arch, head_channels: int | str | None, **parts) -> nn.Module | None:
    """The 1x1 head conv to ``head_channels`` (None: no head conv; ``"arch"``: the arch's)."""
    head_channels = MBCONV.head_width(arch, head_channels)
    parts["act_layer"] = fixed_act(arch, parts.get("act_layer"))
    return ConvBNAct(arch.out_channels, head_channels, 1, **parts) if head_channels else None


def build_pre_logits(arch: Arch, in_features: int, act_layer=None) -> nn.Module | None:
    """MobileNetV3's last hidden layer, after pooling: a linear layer with bias (timm writes it as
    a 1x1 conv, torchvision as a Linear) and the arch's activation."""
    width = arch.fixed.get("pre_logits")
    if not width:
        return None
    return nn.Sequential(nn.Linear(in_features, width), (fixed_act(arch, act_layer) or relu6)())


class Network(StagedNetwork):
    """``stem`` -> ``stages[i][j]`` (MBConv or Skip) -> ``head`` (1x1 conv) -> pool ->
    ``classifier``. With ``num_classes=None`` there is no classifier and ``forward`` returns the
    pooled features; ``forward_stages`` gives every stage's output for dense tasks."""

    def __init__(self, arch: Arch, num_classes: int | None = 1000, head_channels: int | str | None = ARCH_HEAD,
                 dropout: float = 0.2, bn_eps: float = 1e-5, *, output_stride: int | None = None,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.arch, self.output_stride = arch, output_stride
        parts = dict(bn_eps=bn_eps, norm_layer=norm_layer, act_layer=act_layer)
        self.stem = build_stem(arch, **parts)
        self.stages = nn.ModuleList(
            nn.Sequential(*(make_layer(c_in, c_out, geometry.stride if j == 0 else 1, op,
                                       dilation=geometry.first_dilation if j == 0 else geometry.dilation, **parts)
                            for j, (c_in, c_out, _, op) in enumerate(stage.layers())))
            for stage, geometry in zip(arch.stages, stage_geometry(arch, output_stride)))
        self.head = build_head(arch, head_channels, **parts)
        features = MBCONV.head_width(arch, head_channels) or arch.out_channels
        # part of the classifier: a backbone (no classes) ends at the pooled head features
        self.pre_logits = build_pre_logits(arch, features, act_layer) if num_classes else None
        features = arch.fixed["pre_logits"] if self.pre_logits is not None else features
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, num_classes) if num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)



def build_network(arch: Arch | str, num_classes: int | None = 1000, *,
                  head_channels: int | str | None = ARCH_HEAD, dropout: float = 0.2,
                  bn_eps: float = 1e-5, **options) -> Network:
    """The classification network of ``arch`` (an Arch, or text :meth:`Arch.parse` accepts);
    ``options`` go to :class:`Network` (``output_stride``, ``norm_layer``, ``act_layer``)."""
    if isinstance(arch, str):
        arch = Arch.parse(arch)
    return Network(arch, num_classes, head_channels, dropout, bn_eps, **options)


def mobilenet_v2(num_classes: int | None = 1000, width_mult: float = 1.0, **kwargs) -> Network:
    """MobileNetV2 (torchvision's layout and channel rounding): 3,504,872 parameters at width 1."""
    head = make_divisible(1280 * max(1.0, width_mult))
    return build_network(mobilenet_v2_arch(width_mult), num_classes, head_channels=head, **kwargs)
