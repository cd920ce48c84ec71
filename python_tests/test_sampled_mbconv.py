"""``fna_ext.ops.sampled_mbconv`` against an eager MBConv block built from copies of the slices."""

import pytest
import torch

from fna_ext.families.mbconv.blocks import MBConv
from fna_ext.ops import sampled_mbconv


def _reference_block(c_in, c_out, k, e_channels, stride, weights, affine):
    expand_w, dw_w, project_w, bns = weights
    block = MBConv(c_in, c_out, k, e_channels // c_in, stride).double().train()
    start = (dw_w.shape[-1] - k) // 2
    with torch.no_grad():
        block.expand.conv.weight.copy_(expand_w[:e_channels])
        block.depthwise.conv.weight.copy_(dw_w[:e_channels, :, start:start + k, start:start + k])
        block.project.conv.weight.copy_(project_w[:, :e_channels])
        for bn, (w, b) in zip((block.expand.bn, block.depthwise.bn, block.project.bn), bns):
            n = bn.num_features
            bn.weight.copy_(w[:n] if affine else torch.ones(n))
            bn.bias.copy_(b[:n] if affine else torch.zeros(n))
    return block


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("e", [3, 6])
@pytest.mark.parametrize("stride, c_in, c_out", [(1, 8, 8), (2, 8, 12), (1, 8, 12)])
@pytest.mark.parametrize("affine", [False, True])
def test_matches_an_mbconv_built_from_the_slices(k, e, stride, c_in, c_out, affine):
    torch.manual_seed(k * 100 + e)
    e_max = 6 * c_in
    weights = (torch.randn(e_max, c_in, 1, 1, dtype=torch.float64),
               torch.randn(e_max, 1, 7, 7, dtype=torch.float64),
               torch.randn(c_out, e_max, 1, 1, dtype=torch.float64),
               [(torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64))
                for n in (e_max, e_max, c_out)])
    x = torch.randn(2, c_in, 9, 11, dtype=torch.float64)  # odd spatial sizes
    bn_args = {}
    if affine:
        for i, (w, b) in enumerate(weights[3], start=1):
            bn_args[f"bn{i}_weight"], bn_args[f"bn{i}_bias"] = w, b
    out = sampled_mbconv(x, weights[0], weights[1], weights[2], kernel_size=k, expand_channels=e * c_in,
                         stride=stride, **bn_args)
    expected = _reference_block(c_in, c_out, k, e * c_in, stride, weights, affine)(x)
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-10)


def test_gradients_land_only_inside_the_slice():
    torch.manual_seed(0)
    expand_w = torch.randn(24, 4, 1, 1, requires_grad=True)
    dw_w = torch.randn(24, 1, 7, 7, requires_grad=True)
    project_w = torch.randn(4, 24, 1, 1, requires_grad=True)
    sampled_mbconv(torch.randn(2, 4, 6, 6), expand_w, dw_w, project_w, kernel_size=3,
                   expand_channels=12).square().sum().backward()
    assert expand_w.grad[12:].abs().sum() == 0 and expand_w.grad[:12].abs().sum() > 0
    assert dw_w.grad[12:].abs().sum() == 0
    ring = dw_w.grad[:12].clone()
    ring[:, :, 2:5, 2:5] = 0
    assert ring.abs().sum() == 0
    assert project_w.grad[:, 12:].abs().sum() == 0


def test_bad_slices_are_refused():
    x = torch.randn(1, 4, 5, 5)
    w = (torch.randn(24, 4, 1, 1), torch.randn(24, 1, 7, 7), torch.randn(4, 24, 1, 1))
    with pytest.raises(ValueError, match="kernel_size 4"):
        sampled_mbconv(x, *w, kernel_size=4, expand_channels=12)
    with pytest.raises(ValueError, match="expand_channels 30"):
        sampled_mbconv(x, *w, kernel_size=3, expand_channels=30)
