import pytest
import torch
from torch import nn

from fna_ext import build_network, count, mobilenet_v2
from fna_ext.arch import Arch


def test_mobilenet_v2_matches_the_published_figures():
    report = count(mobilenet_v2(), (224, 224))
    assert report.params == 3_504_872
    assert round(report.madds / 1e6, 2) == 300.78


def test_conv_and_linear_madds_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),    # 10x10 -> 5x5
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),   # depthwise
        nn.Conv2d(8, 4, 1, bias=False),
        nn.BatchNorm2d(4),                                     # params, no MAdds
        nn.Flatten(), nn.Linear(4 * 25, 7))
    report = count(model, (10, 10))
    expected = [9 * 3 * 8 * 25 + 8 * 25, 9 * 8 * 25, 8 * 4 * 25, 0, 100 * 7 + 7]
    assert [m.madds for m in report.modules] == expected
    assert report.madds == sum(expected)
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.modules[0].output_shape == (8, 5, 5)


def test_frozen_parameters_are_not_counted_and_training_mode_is_restored():
    model = mobilenet_v2(num_classes=10)
    model.stem.requires_grad_(False)
    model.train()
    report = count(model, (64, 64))
    assert report.params == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.stem.parameters())
    assert model.training


def test_breakdown_groups_sum_to_totals():
    report = count(build_network("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e6', 'skip'], 2]", 10), (32, 32))
    groups = report.grouped()
    assert list(groups) == ["stem", "stages.0", "stages.1", "head", "classifier"]
    assert sum(p for p, _ in groups.values()) == report.params
    assert sum(a for _, a in groups.values()) == report.madds


def test_madds_scale_with_resolution_for_a_fully_convolutional_part():
    arch = Arch.parse("mobilenet_v2")
    small = count(build_network(arch, None), (128, 128)).madds
    large = count(build_network(arch, None), (256, 256)).madds
    assert large == 4 * small


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        count(mobilenet_v2(), (0, 224))
