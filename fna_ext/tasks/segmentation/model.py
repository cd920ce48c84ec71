"""DeepLabv3 and DeepLabv3+ on any Arch-built backbone (or a super network of the same layout), at
output stride 16 or 8: the stages past the output stride run at stride 1 and dilate instead
(:func:`fna_ext.arch.stage_geometry`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...arch import Arch
from ...families import get_family
from ...families.features import Tap, extract_features
from .heads import DeepLabV3Head, DeepLabV3PlusHead, aspp_rates
from .labels import IGNORE

VERSIONS = ("deeplabv3", "deeplabv3plus")


@dataclass(frozen=True)
class DeepLabConfig:
    """What a DeepLab model is, beyond its backbone's Arch (saved with a trained model)."""

    version: str = "deeplabv3"
    output_stride: int = 16
    channels: int = 256
    dropout: float = 0.1
    backbone_bn_eps: float = 1e-5

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"unknown DeepLab version {self.version!r}; use one of {VERSIONS}")
        if self.output_stride not in (8, 16):
            raise ValueError(f"DeepLab's output stride is 8 or 16, got {self.output_stride}")


class DeepLab(nn.Module):
    """``backbone`` features at ``taps`` -> ``head`` -> logits, bilinearly upsampled to the input.
    ``arch`` is the backbone's (what a trained model's file records)."""

    def __init__(self, backbone: nn.Module, taps: list[Tap], head: nn.Module, arch: Arch):
        super().__init__()
        self.backbone, self.taps, self.head, self.arch = backbone, list(taps), head, arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(extract_features(self.backbone, self.taps, images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel cross-entropy over the labelled pixels (255 ignored)."""
        return {"loss_ce": F.cross_entropy(logits, labels, ignore_index=IGNORE)}


def collate_segmentation(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one size (the training crops) stacked into (N, 3, H, W) and (N, H, W)."""
    if not batch:
        raise ValueError("collate_segmentation: empty batch")
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) != 1:
        raise ValueError(f"collate_segmentation: images of sizes {sorted(sizes)} in one batch; crop them to one "
                         "size (training) or evaluate one image at a time")
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


def deeplab_taps(arch: Arch, version: str, output_stride: int) -> tuple[list[Tap], list[int]]:
    """The features DeepLab takes and their channels: the last stage's output, and for v3+ first
    the last stage output at stride 4 (MobileNetV2's 24-channel stage, a ResNet's layer1)."""
    stages = [f for f in get_family(arch.family).feature_info(arch, None, output_stride) if f.kind == "stage"]
    last = stages[-1]
    taps, channels = [Tap("stage", last.stage)], [last.channels]
    if version == "deeplabv3plus":
        low = [f for f in stages if f.stride == 4]
        if not low:
            raise ValueError(f"DeepLabv3+ needs a stage output at stride 4; {arch} has none")
        taps, channels = [Tap("stage", low[-1].stage), *taps], [low[-1].channels, *channels]
    return taps, channels


def build_deeplab(arch: Arch, num_classes: int, config: DeepLabConfig = DeepLabConfig(), *,
                  backbone: nn.Module | None = None) -> DeepLab:
    """DeepLab on a new backbone built from ``arch`` with no head conv, or on ``backbone`` (a seed
    network or a super network built at ``config.output_stride``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if backbone is None:
        backbone = get_family(arch.family).build_network(arch, None, head_channels=None,
                                                         bn_eps=config.backbone_bn_eps,
                                                         output_stride=config.output_stride)
    taps, channels = deeplab_taps(arch, config.version, config.output_stride)
    rates = aspp_rates(config.output_stride)
    if config.version == "deeplabv3":
        head = DeepLabV3Head(channels[-1], num_classes, channels=config.channels, rates=rates,
                             dropout=config.dropout)
    else:
        head = DeepLabV3PlusHead(channels[0], channels[-1], num_classes, channels=config.channels, rates=rates)
    return DeepLab(backbone, taps, head, arch)
