"""SimpleBaseline (Xiao et al., ECCV 2018) on any Arch-built backbone, or a super network of the
same layout: the backbone's last feature map (MobileNetV2's 1280-channel head conv, a ResNet's
C5), three 4x4 stride-2 deconvolutions with BN and ReLU, and a 1x1 conv to one heatmap per joint
at a quarter of the input's resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...arch import Arch
from ...families import ARCH_HEAD, get_family
from ...families.features import Tap, extract_features, tap_channels

MODELS = ("simplebaseline",)


@dataclass(frozen=True)
class SimpleBaselineConfig:
    """What the model is beyond its backbone's Arch and the joints (saved with a trained model).
    ``deconv_channels`` is SimpleBaseline's 256; a smaller one makes a cheaper head."""

    deconv_channels: int = 256
    deconv_layers: int = 3
    backbone_bn_eps: float = 1e-5

    def __post_init__(self):
        if self.deconv_channels < 1 or self.deconv_layers < 1:
            raise ValueError(f"SimpleBaseline needs at least one deconvolution of at least one channel, got "
                             f"{self.deconv_layers} of {self.deconv_channels}")


class DeconvHead(nn.Module):
    """``layers`` x (ConvTranspose2d 4x4 stride 2, no bias; BN; ReLU), then a 1x1 conv (with bias)
    to ``num_joints`` heatmaps; initialised as SimpleBaseline is (normal std 0.001)."""

    def __init__(self, in_channels: int, num_joints: int, channels: int = 256, layers: int = 3):
        super().__init__()
        blocks = []
        for i in range(layers):
            blocks += [nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1,
                                          bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.deconvs = nn.Sequential(*blocks)
        self.final = nn.Conv2d(channels, num_joints, 1)
        for module in self.modules():
            if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.final(self.deconvs(feature))


class SimpleBaseline(nn.Module):
    """``backbone`` feature at ``tap`` -> ``head`` -> heatmaps (N, joints, H/4, W/4)."""

    def __init__(self, backbone: nn.Module, tap: Tap, head: DeconvHead, arch: Arch):
        super().__init__()
        self.backbone, self.tap, self.head, self.arch = backbone, tap, head, arch

    @property
    def num_joints(self) -> int:
        return self.head.final.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(extract_features(self.backbone, [self.tap], images)[0])

    @staticmethod
    def loss(heatmaps: torch.Tensor, targets: dict) -> dict[str, torch.Tensor]:
        """SimpleBaseline's JointsMSELoss: half the mean squared error of the heatmaps, each joint
        weighted by its target weight (0 for an unlabelled joint or one outside the crop)."""
        weights = targets["weights"][:, :, None, None].to(heatmaps.dtype)
        error = (heatmaps - targets["heatmaps"].to(heatmaps.dtype)) * weights
        return {"loss_heatmap": 0.5 * error.pow(2).mean()}


def backbone_tap(arch: Arch) -> Tap:
    """The backbone's last feature map: its head conv where its family has one (MobileNetV2's
    1280, MobileNetV3's 960), else its last stage (a ResNet's C5)."""
    family = get_family(arch.family)
    return Tap("head") if family.default_head_channels(arch) else Tap("stage", len(arch.stages) - 1)


def build_simplebaseline(arch: Arch, num_joints: int, config: SimpleBaselineConfig = SimpleBaselineConfig(), *,
                         backbone: nn.Module | None = None) -> SimpleBaseline:
    """SimpleBaseline on a new backbone built from ``arch`` (with its own head conv, no classifier),
    or on ``backbone`` (a seed network or a super network of the same layout)."""
    if num_joints < 1:
        raise ValueError(f"SimpleBaseline needs at least one joint, got {num_joints}")
    tap = backbone_tap(arch)
    head_channels = ARCH_HEAD if tap.kind == "head" else None
    if backbone is None:
        backbone = get_family(arch.family).build_network(arch, None, head_channels=head_channels,
                                                         bn_eps=config.backbone_bn_eps)
    channels = tap_channels(arch, [tap], get_family(arch.family).head_width(arch, head_channels))[0]
    head = DeconvHead(channels, num_joints, config.deconv_channels, config.deconv_layers)
    return SimpleBaseline(backbone, tap, head, arch)
