import torch

from fna_ext import build_network, count, mobilenet_v2
from fna_ext.arch import Arch
from fna_ext.families.mbconv import MBConv, Skip


def test_mobilenet_v2_forward_and_layout():
    model = mobilenet_v2(num_classes=10).eval()
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10)
    assert sum(len(s) for s in model.stages) == 17
    first = model.stages[0][0]
    assert isinstance(first, MBConv) and first.expand is None and first.hidden_channels == 32
    block = model.stages[1][0]
    assert block.expand.conv.weight.shape == (96, 16, 1, 1)
    assert block.depthwise.conv.weight.shape == (96, 1, 3, 3)
    assert block.project.conv.weight.shape == (24, 96, 1, 1)


def test_stage_outputs_have_the_expected_strides():
    outputs = mobilenet_v2(None).forward_stages(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outputs] == [
        (16, 32, 32), (24, 16, 16), (32, 8, 8), (64, 4, 4), (96, 4, 4), (160, 2, 2), (320, 2, 2)]


def test_width_multiplier_rounds_channels_like_torchvision():
    half = mobilenet_v2(width_mult=0.5)
    assert half.stem.conv.out_channels == 16
    assert [s.out_channels for s in half.arch.stages] == [8, 16, 16, 32, 48, 80, 160]
    assert half.head.conv.out_channels == 1280
    assert mobilenet_v2(width_mult=1.4).head.conv.out_channels == 1792


def test_skip_layers_are_identities_and_kernels_and_expansions_follow_the_arch():
    model = build_network("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k7_e3', 'skip', 'k5_e6'], 2]", 5)
    stage = model.stages[1]
    assert isinstance(stage[1], Skip)
    assert stage[0].depthwise.conv.weight.shape == (48, 1, 7, 7)
    assert stage[2].depthwise.conv.weight.shape == (144, 1, 5, 5)
    assert stage[2].use_residual and not stage[0].use_residual
    x = torch.randn(1, 24, 8, 8)
    assert torch.equal(stage[1](x), x)


def test_residual_connection_is_real():
    block = MBConv(24, 24, 3, 6).eval()
    for m in block.project.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
    block.project.bn.bias.data.zero_()
    x = torch.randn(1, 24, 8, 8)
    assert torch.equal(block(x), x)


def test_headless_network_counts_without_classifier():
    model = build_network(Arch.parse("mobilenet_v2"), num_classes=None, head_channels=None).eval()
    assert model.classifier is None and model.head is None
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 320)
    # the whole network less the classifier (1280 * 1000 + 1000) and head (320 * 1280 + 2 * 1280)
    assert count(model, (224, 224)).params == 3_504_872 - 1_281_000 - 412_160
