"""The detection task's export wrapper: a detector for a fixed input size, raw 0..255 RGB in,
every anchor's decoded box and per-class probabilities out (SSDLite: softmax with background
dropped; RetinaNet: sigmoid). Score thresholding and NMS are left to the runtime (class-wise NMS
at IoU 0.6 for SSDLite and 0.5 for RetinaNet reproduces fna_ext's detections)."""

from __future__ import annotations

import torch
from torch import nn

from ...data.transforms import RawImageInput
from .boxes import clip_boxes


class DecodedDetector(RawImageInput):
    """A detector's dense outputs for a fixed input size: raw 0..255 RGB in, every anchor's
    decoded box and class probabilities out."""

    output_names = ("boxes", "scores")
    # largest differences an exported file may show against the original: box corners in
    # pixels, probabilities
    tolerances = (1e-2, 1e-4)

    def __init__(self, detector: nn.Module, input_size: tuple[int, int]):
        super().__init__(input_size)
        self.detector = detector.eval()
        with torch.no_grad():  # the anchors depend only on the input size: computed once
            probe = detector(torch.zeros(1, 3, *self.input_size))
        self.register_buffer("anchors", torch.cat(probe["anchors"]).float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.detector.neck(self.detector.backbone_features(self.normalize(images)))
        logits, deltas = self.detector.head(features)
        scores = self.detector.class_probabilities(torch.cat(logits, 1))
        deltas = torch.cat(deltas, 1).float()
        boxes = clip_boxes(self.detector.coder.decode(deltas, self.anchors), *self.input_size)
        return boxes, scores
