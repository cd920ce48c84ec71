"""The classification network of a ResNet :class:`~fna_ext.arch.Arch`: torchvision's stem
(7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool), the stages, global pooling and a linear
classifier. There is no head conv. Module names (``stem.conv``, ``stages.S.J.conv1``,
``classifier``) mirror torchvision's (``conv1``, ``layerS+1.J.conv1``, ``fc``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..network import StagedNetwork
from ...arch import Arch, stage_geometry
from .archs import NAMED_ARCHS
from .blocks import batch_norm, make_block, relu

STEM_STRIDE = 4  # the 7x7 conv's 2 and the max pool's 2


class Stem(nn.Module):
    def __init__(self, out_channels: int, norm_layer: Callable[[int], nn.Module], act_layer: Callable[[], nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 7, 2, 3, bias=False)
        self.bn = norm_layer(out_channels)
        self.act = act_layer()
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


def _parts(bn_eps: float = 1e-5, norm_layer=None, act_layer=None) -> dict:
    return dict(norm_layer=norm_layer or batch_norm(bn_eps), act_layer=act_layer or relu)


def build_stem(arch: Arch, **parts) -> Stem:
    """``parts``: ``bn_eps``, ``norm_layer``, ``act_layer`` (default BatchNorm2d, ReLU)."""
    return Stem(arch.stem_channels, **_parts(**parts))


def build_stage(stage, geometry, **parts) -> nn.Sequential:
    """One stage; under an output stride its first layer strides as ``geometry`` says and keeps the
    dilation before it, the others take the stage's (torchvision's replace_stride_with_dilation)."""
    return nn.Sequential(*(make_block(c_in, c_out, geometry.stride if j == 0 else 1, op,
                                      dilation=geometry.first_dilation if j == 0 else geometry.dilation, **parts)
                           for j, (c_in, c_out, _, op) in enumerate(stage.layers("resnet"))))


class Network(StagedNetwork):
    """``stem`` -> ``stages[i][j]`` (BasicBlock or Bottleneck) -> pool -> ``classifier``.
    ``head`` is None (the core asks every network for one). With ``num_classes=None`` there is no
    classifier and ``forward`` returns the pooled features."""

    head = None

    def __init__(self, arch: Arch, num_classes: int | None = 1000, head_channels: int | None = None,
                 bn_eps: float = 1e-5, *, output_stride: int | None = None, dropout: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        # head_channels is accepted because the tasks pass it to every family; a ResNet has no head conv
        super().__init__()
        self.arch, self.output_stride = arch, output_stride
        parts = _parts(bn_eps, norm_layer, act_layer)
        self.stem = Stem(arch.stem_channels, **parts)
        self.stages = nn.ModuleList(build_stage(stage, geometry, **parts) for stage, geometry in
                                    zip(arch.stages, stage_geometry(arch, output_stride, stem_stride=STEM_STRIDE)))
        self.classifier = nn.Linear(arch.out_channels, num_classes) if num_classes else None
        # torchvision's ResNets have none; pretraining may ask for it before the classifier
        self.dropout = nn.Dropout(dropout) if dropout > 0 and num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal convs (fan out, ReLU gain), BN at (1, 0);
        the classifier keeps nn.Linear's default, as torchvision's ``fc`` does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)



def _named_network(name: str):
    def build(num_classes: int | None = 1000, **options) -> Network:
        return Network(NAMED_ARCHS[name](), num_classes, **options)
    build.__name__ = name
    build.__doc__ = f"torchvision's {name} layout as an fna_ext network."
    return build


resnet18, resnet34, resnet50, wide_resnet50_2, resnext50_32x4d = (
    _named_network(n) for n in ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "resnext50_32x4d"))
