"""DeepLabv3 and DeepLabv3+ on Arch-built backbones: FNA's Table 1 counts, output strides, and the
ASPP against an independent construction of its parts."""

import pytest
import torch
from torch import nn

from fna_ext.arch import mobilenet_v2_arch
from fna_ext.cost import count, count_params
from fna_ext.tasks.segmentation.heads import ASPP, AtrousConv2d, aspp_rates
from fna_ext.tasks.segmentation.model import DeepLabConfig, build_deeplab, deeplab_taps


@pytest.mark.parametrize("version, output_stride, params, madds", [
    # Table 1: MobileNetV2 with DeepLabv3 at 1024x2048, 19 classes: 2.57M and 24.52B
    ("deeplabv3", 16, 2_567_507, 24_521_711_616),
    # the usual DeepLabv3+ decoder (heads.py); Table 1 gives FNA's own backbone 5.71M, 210.11B and 313.87B
    ("deeplabv3plus", 16, 5_815_539, 210_422_415_360),
    ("deeplabv3plus", 8, 5_815_539, 317_167_976_448),
])
def test_mobilenet_v2_counts_at_1024x2048(version, output_stride, params, madds):
    with torch.device("meta"):  # shapes only: 317 GMAdds would take a minute on a CPU
        model = build_deeplab(mobilenet_v2_arch(1.0), 19, DeepLabConfig(version, output_stride)).eval()
    assert count_params(model) == params
    assert count(model, (1024, 2048)).madds == madds
    if version == "deeplabv3":  # within 1% of the published figures
        assert abs(params / 2.57e6 - 1) < 0.01 and abs(madds / 24.52e9 - 1) < 0.01


@pytest.mark.parametrize("version", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_at_input_size_and_features_at_the_output_stride(version, output_stride):
    torch.manual_seed(0)
    arch = mobilenet_v2_arch(0.35)
    model = build_deeplab(arch, 5, DeepLabConfig(version, output_stride)).eval()
    images = torch.randn(2, 3, 65, 97)  # odd sizes: the upsampling restores them exactly
    with torch.no_grad():
        assert model(images).shape == (2, 5, 65, 97)
        taps, channels = deeplab_taps(arch, version, output_stride)
        from fna_ext.families.features import extract_features
        features = extract_features(model.backbone, taps, torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert features[-1].shape[-1] == 64 // output_stride
    if version == "deeplabv3plus":
        assert features[0].shape[-1] == 64 // 4


def test_aspp_equals_its_branches_built_by_hand():
    """The ASPP as the equations say: each branch on x, the pooled branch broadcast, concatenated,
    then projected; built here from plain torch layers with the module's weights."""
    torch.manual_seed(1)
    aspp = ASPP(8, 6, rates=(2, 3), separable=True).eval()
    for m in aspp.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 9, 10)

    def cbr(seq, t):  # conv -> BN (eval) -> ReLU
        conv, bn = seq[0], seq[1]
        y = nn.functional.conv2d(t, conv.weight, None, 1, conv.padding, conv.dilation, conv.groups)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        return torch.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])

    one = cbr(aspp.branches[0], x)
    atrous = [cbr(b[1], cbr(b[0], x)) for b in aspp.branches[1:3]]
    pooled = cbr(aspp.branches[3].project, x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, 9, 10)
    expected = cbr(aspp.project, torch.cat([one, *atrous, pooled], 1))
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), expected)
    assert aspp.branches[1][0][0].dilation == (2, 2) and aspp.branches[1][0][0].groups == 8


def test_rates_scale_with_the_output_stride_and_bad_settings_are_named():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="output stride"):
        DeepLabConfig("deeplabv3", 32)
    with pytest.raises(ValueError, match="unknown DeepLab version"):
        DeepLabConfig("deeplabv4")
    with pytest.raises(ValueError, match="num_classes"):
        build_deeplab(mobilenet_v2_arch(0.35), 0)


@pytest.mark.parametrize("size, groups, dilation", [((8, 8), 16, 12), ((8, 30), 16, 12), ((30, 8), 1, 12),
                                                    ((8, 8), 1, 8), ((13, 13), 16, 6)])
def test_atrous_conv_skipping_padding_taps_equals_the_full_conv(size, groups, dilation):
    """Forward and every gradient against nn.Conv2d with the same weights, where the dilation
    reaches past the map on both sides, on one side, exactly at the side, and not at all."""
    torch.manual_seed(0)
    full = nn.Conv2d(16, 16, 3, padding=dilation, dilation=dilation, groups=groups, bias=True)
    atrous = AtrousConv2d(16, 16, 3, padding=dilation, dilation=dilation, groups=groups, bias=True)
    atrous.load_state_dict(full.state_dict())
    x = torch.randn(2, 16, *size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 16, *size)
    full(x).backward(grad)
    out = atrous(x2)
    out.backward(grad)
    torch.testing.assert_close(out, full(x))
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(atrous.weight.grad, full.weight.grad)
    torch.testing.assert_close(atrous.bias.grad, full.bias.grad)
