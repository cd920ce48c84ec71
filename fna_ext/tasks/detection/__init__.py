"""Object detection for FNA: SSDLite and RetinaNet on any Arch backbone. One concept per module:
anchors, box coding, matching, features taken from the backbone, necks, heads, losses and
post-processing."""

from .anchors import GridAnchorGenerator, SSDAnchorGenerator
from .box_coder import BoxCoder
from .boxes import box_area, box_ioa, box_iou, clip_boxes
from .detector import (Detector, RetinaNet, RetinaNetConfig, SSDLite, SSDLiteConfig, retinanet,
                       ssdlite, stage_strides)
from .matcher import BACKGROUND, IGNORE, Matcher
from .postprocess import PostprocessConfig

__all__ = ["GridAnchorGenerator", "SSDAnchorGenerator", "BoxCoder", "box_area", "box_ioa", "box_iou",
           "clip_boxes", "Detector", "RetinaNet", "RetinaNetConfig", "SSDLite", "SSDLiteConfig",
           "retinanet", "ssdlite", "stage_strides", "BACKGROUND", "IGNORE", "Matcher", "PostprocessConfig"]
