"""SSDLite and RetinaNet on any Arch backbone, as FNA built them (see ``shared`` REFERENCE):
backbone features -> neck -> head, with anchors, box coding, matching, losses and
post-processing each from its own module.

A detector's ``forward(images)`` returns the raw head outputs (what export and counting need);
``loss(outputs, targets)`` trains it and ``postprocess(outputs, image_sizes)`` gives detections.
``predict`` does forward and post-processing in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...arch import Arch
from ...families import ARCH_HEAD, get_family
from .anchors import GridAnchorGenerator, SSDAnchorGenerator
from .box_coder import BoxCoder
from ...families.features import Tap, extract_features, tap_channels
from .heads import RetinaHead, SSDLiteHead
from .losses import anchor_targets, retinanet_loss, ssd_loss
from .matcher import Matcher
from .necks import FPN, SSDLiteExtras
from .postprocess import (RETINANET_TEST, SSD_TEST, PostprocessConfig, retinanet_postprocess,
                          softmax_without_background, ssd_postprocess)


def stage_strides(arch: Arch) -> list[int]:
    """Output stride of each stage, as the backbone's family declares its features."""
    return [info.stride for info in get_family(arch.family).feature_info(arch) if info.kind == "stage"]


def last_stage_at_stride(arch: Arch, stride: int) -> int:
    strides = stage_strides(arch)
    if stride not in strides:
        raise ValueError(f"the backbone has no stage at stride {stride} (stage strides: {strides})")
    return len(strides) - 1 - strides[::-1].index(stride)


def first_stage_at_stride(arch: Arch, stride: int) -> int:
    strides = stage_strides(arch)
    if stride not in strides:
        raise ValueError(f"the backbone has no stage at stride {stride} (stage strides: {strides})")
    return strides.index(stride)


class Detector(nn.Module):
    """Backbone (an Arch-built network of the arch's family, without classifier), neck and head."""

    def __init__(self, backbone: nn.Module, taps: list[Tap], neck: nn.Module, head: nn.Module,
                 anchor_generator, coder: BoxCoder, matcher: Matcher, test_config: PostprocessConfig):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        self.taps = taps
        self.anchor_generator, self.coder, self.matcher = anchor_generator, coder, matcher
        self.test_config = test_config

    @property
    def arch(self) -> Arch:
        return self.backbone.arch

    def forward(self, images: torch.Tensor) -> dict:
        """``cls_logits`` and ``box_deltas``: per level (N, H*W*A, K) and (N, H*W*A, 4);
        ``anchors``: per level (H*W*A, 4) pixel boxes for these images' (padded) size."""
        features = self.neck(self.backbone_features(images))
        logits, deltas = self.head(features)
        anchors = self.anchor_generator([f.shape[-2:] for f in features], images.shape[-2:],
                                        images.device, torch.float32)
        return {"cls_logits": logits, "box_deltas": deltas, "anchors": anchors}

    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        # a seed, a derived network and a super network (its sampled path or mixture) share one
        # layout: stem, stages of layers, head
        return extract_features(self.backbone, self.taps, images)

    def predict(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """Detections per image; ``image_sizes`` are the unpadded (H, W) to clip boxes to."""
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * len(images)
        return self.postprocess(self(images), image_sizes)

    def _targets(self, outputs: dict, targets: list[dict]):
        anchors = torch.cat(outputs["anchors"])
        return anchor_targets(anchors, targets, self.matcher, self.coder)


class SSDLite(Detector):
    """Softmax classification with background; hard negative mining 3:1; smooth-L1 (beta 1)."""

    neg_pos_ratio = 3

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        labels, box_targets = self._targets(outputs, targets)
        return ssd_loss(torch.cat(outputs["cls_logits"], 1), torch.cat(outputs["box_deltas"], 1),
                        labels, box_targets, neg_pos_ratio=self.neg_pos_ratio)

    @staticmethod
    def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
        return softmax_without_background(logits)

    def postprocess(self, outputs: dict, image_sizes) -> list[dict]:
        return ssd_postprocess(torch.cat(outputs["cls_logits"], 1), torch.cat(outputs["box_deltas"], 1),
                               torch.cat(outputs["anchors"]), image_sizes, self.coder, self.test_config)


class RetinaNet(Detector):
    """Sigmoid focal loss (alpha 0.25, gamma 2); smooth-L1 (beta 0.11)."""

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        labels, box_targets = self._targets(outputs, targets)
        return retinanet_loss(torch.cat(outputs["cls_logits"], 1), torch.cat(outputs["box_deltas"], 1),
                              labels, box_targets)

    @staticmethod
    def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities from (..., K) logits: an independent sigmoid per class."""
        return logits.float().sigmoid()

    def postprocess(self, outputs: dict, image_sizes) -> list[dict]:
        return retinanet_postprocess(outputs["cls_logits"], outputs["box_deltas"], outputs["anchors"],
                                     image_sizes, self.coder, self.test_config)


@dataclass
class SSDLiteConfig:
    head_channels: int | str = ARCH_HEAD  # the backbone's own head conv (1280 in MobileNetV2, 960 in MobileNetV3)
    extra_channels: tuple[int, ...] = (512, 256, 256, 128)
    aspect_ratios: tuple[tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    min_scale: float = 0.2
    max_scale: float = 0.95
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    match_iou: float = 0.5
    bn_eps: float = 1e-3
    test: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(**vars(SSD_TEST)))


@dataclass
class RetinaNetConfig:
    fpn_channels: int = 256
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    test: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(**vars(RETINANET_TEST)))


def ssdlite_taps(arch: Arch) -> list[Tap]:
    """SSDLite's backbone features: the first stride-32 layer's expansion, and the head conv."""
    return [Tap("expand", first_stage_at_stride(arch, 32)), Tap("head")]


def takes_ssdlite(arch: Arch) -> bool:
    """Whether ``arch``'s family offers the features SSDLite reads (a ResNet offers neither)."""
    try:
        tap_channels(arch, ssdlite_taps(arch), SSDLiteConfig.head_channels)
    except ValueError:
        return False
    return True


def ssdlite(arch: Arch, num_classes: int, config: SSDLiteConfig | None = None,
            backbone_bn_eps: float = 1e-5, backbone: nn.Module | None = None) -> SSDLite:
    """SSDLite: features from the expansion output of the first stride-32 stage's first layer
    (stride 16; 576 channels in MobileNetV2) and the 1x1 head conv (stride 32; 1280, MobileNetV3's 960), four extra
    blocks, depthwise-separable predictors. ``num_classes`` counts foreground classes; the
    classifier adds background (81 outputs for COCO's 80). ``backbone`` replaces the Network
    built from ``arch`` (a super network, whose ``arch`` gives the tapped channels)."""
    config = config or SSDLiteConfig()
    if backbone is None:
        backbone = get_family(arch.family).build_network(arch, None, head_channels=config.head_channels,
                                                          bn_eps=backbone_bn_eps)
    taps = ssdlite_taps(arch)
    try:
        channels = tap_channels(arch, taps, config.head_channels)
    except ValueError as err:  # a backbone without MobileNet's expansions and head conv, e.g. a ResNet
        raise ValueError(f"SSDLite reads an inverted-residual expansion and a head conv: {err}; "
                         "use --model retinanet for this backbone") from None
    neck = SSDLiteExtras(channels[-1], config.extra_channels, config.bn_eps)
    anchors = SSDAnchorGenerator(config.aspect_ratios, config.min_scale, config.max_scale)
    head = SSDLiteHead(channels + list(config.extra_channels), anchors.num_anchors(), num_classes + 1,
                       config.bn_eps)
    matcher = Matcher(config.match_iou, config.match_iou)
    return SSDLite(backbone, taps, neck, head, anchors, BoxCoder(config.variances), matcher, config.test)


def retinanet(arch: Arch, num_classes: int, config: RetinaNetConfig | None = None,
              backbone_bn_eps: float = 1e-5, backbone: nn.Module | None = None) -> RetinaNet:
    """RetinaNet: FPN on the last outputs at strides 8, 16 and 32 (32, 96 and 320 channels in
    MobileNetV2), P6 and P7, 9 anchors per location, the shared four-conv head."""
    config = config or RetinaNetConfig()
    if backbone is None:
        backbone = get_family(arch.family).build_network(arch, None, head_channels=None, bn_eps=backbone_bn_eps)
    taps = [Tap("stage", last_stage_at_stride(arch, s)) for s in (8, 16, 32)]
    neck = FPN(tap_channels(arch, taps, None), config.fpn_channels, extra_levels=len(config.strides) - 3)
    anchors = GridAnchorGenerator(config.strides)
    head = RetinaHead(config.fpn_channels, anchors.num_anchors()[0], num_classes)
    matcher = Matcher(config.pos_iou, config.neg_iou)
    return RetinaNet(backbone, taps, neck, head, anchors, BoxCoder(), matcher, config.test)


# The detectors the detection task builds, by the name configs and model files use.
BUILDERS = {"ssdlite": ssdlite, "retinanet": retinanet}


def detector_options(model_config: dict) -> dict:
    """What a config's ``model`` section sets of its detector beyond the arch and the classes:
    the backbone's BN epsilon, and RetinaNet's FPN and head width (``fpn_channels``; files
    written before the setting existed were all 256 wide)."""
    options = {"backbone_bn_eps": float(model_config["backbone_bn_eps"])}
    if model_config["name"] == "retinanet":
        options["config"] = RetinaNetConfig(fpn_channels=int(model_config.get("fpn_channels", 256)))
    return options
