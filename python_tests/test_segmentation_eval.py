"""Segmentation metrics against an independent count, and sliding-window inference against running
the whole image."""

import math

import numpy as np
import torch
from torch import nn

import torch.nn.functional as F

from fna_ext.tasks.segmentation.evaluation import (EvalSettings, confusion_matrix, evaluate_segmentation,
                                                   predict_scores, segmentation_metrics, sliding_window_logits,
                                                   window_starts)


def test_miou_against_a_direct_count():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (50, 60))
    label[rng.random(label.shape) < 0.1] = 255  # ignored
    prediction = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 4, label.shape)) % 4
    confusion = confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(label), 5)  # class 4 never occurs
    metrics = segmentation_metrics(confusion, ["a", "b", "c", "d", "e"])
    valid = label != 255
    ious = []
    for c in range(4):
        tp = np.sum((prediction == c) & (label == c) & valid)
        fp = np.sum((prediction == c) & (label != c) & valid)
        fn = np.sum((prediction != c) & (label == c))
        ious.append(tp / (tp + fp + fn))
        assert math.isclose(metrics[f"IoU/{'abcd'[c]}"], ious[-1])
    assert "IoU/e" not in metrics  # absent from labels and predictions: no IoU, left out of the mean
    assert math.isclose(metrics["mIoU"], np.mean(ious))
    assert math.isclose(metrics["pixel_accuracy"], np.mean(prediction[valid] == label[valid]))


def test_windows_cover_the_image_and_end_flush():
    assert window_starts(100, 40, 27) == [0, 27, 54, 60]
    assert window_starts(30, 40, 27) == [0]


def test_sliding_window_equals_the_whole_image_for_a_pointwise_model():
    """A 1x1 conv sees no context, so every window gives the whole image's logits at its pixels;
    the average over overlaps and the padding of short windows change nothing."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(1, 3, 37, 53)
    expected = model(image)
    for crop in ((16, 20), (40, 60), (37, 53)):
        torch.testing.assert_close(sliding_window_logits(model, image, 5, crop), expected)


def test_evaluate_a_perfect_and_a_constant_model():
    class Data(torch.utils.data.Dataset):
        class_names = ["x", "y"]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            label = torch.zeros(20, 30, dtype=torch.int64)
            label[:, 15:] = 1
            label[0] = 255
            image = torch.zeros(3, 20, 30)
            image[0] = (label == 1).float()  # channel 0 says the class
            return image, label

    class Perfect(nn.Module):
        def forward(self, x):
            return torch.cat([1 - x[:, :1], x[:, :1]], 1)

    assert evaluate_segmentation(Perfect(), Data(), settings=EvalSettings((16, 16)))["mIoU"] == 1.0
    constant = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0]))
    metrics = evaluate_segmentation(constant, Data(), settings=EvalSettings((16, 16)))
    assert metrics["IoU/y"] == 0.0 and math.isclose(metrics["IoU/x"], 0.5) and math.isclose(metrics["mIoU"], 0.25)


def _asymmetric_model() -> nn.Module:
    """A 3x3 conv with random weights: not mirror-symmetric, so a flip changes its output."""
    torch.manual_seed(1)
    return nn.Conv2d(3, 4, 3, padding=1).eval()


def test_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    model, image = _asymmetric_model(), torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        expected = (model(image).softmax(1) + model(image.flip(-1)).flip(-1).softmax(1)) / 2
    got = predict_scores(model, image, 4, EvalSettings((24, 32), flip=True))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, model(image).softmax(1))  # the mirror did change something


def test_scales_average_the_probabilities_resized_back_to_the_image():
    model, image = _asymmetric_model(), torch.randn(1, 3, 24, 32)
    expected = torch.zeros(1, 4, 24, 32)
    with torch.no_grad():
        for scale in (0.5, 1.0, 1.5):
            scaled = F.interpolate(image, size=(round(24 * scale), round(32 * scale)), mode="bilinear",
                                   align_corners=False)
            expected += F.interpolate(model(scaled), size=(24, 32), mode="bilinear", align_corners=False).softmax(1)
    got = predict_scores(model, image, 4, EvalSettings((64, 64), scales=(0.5, 1.0, 1.5)))
    torch.testing.assert_close(got, expected / 3)


def test_one_scale_without_flip_is_the_sliding_window_logits():
    model, image = _asymmetric_model(), torch.randn(1, 3, 24, 32)
    torch.testing.assert_close(predict_scores(model, image, 4, EvalSettings((16, 16))),
                               sliding_window_logits(model, image, 4, (16, 16)))
