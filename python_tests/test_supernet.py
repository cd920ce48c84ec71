"""The super network: at step 0 every candidate is the paper's remapping of the seed, in both
weight modes; the optimiser step leaves unsampled candidates alone; derivation gives an Arch."""

import pytest
import torch
from torch import nn

from fna_ext.arch import Arch, mobilenet_v2_arch
from fna_ext.nas.search import step_inside
from fna_ext.families.mbconv import build_network
from fna_ext.ops import sampled_mbconv
from fna_ext.remap import remap_network
from fna_ext.tasks.detection.task import RETINANET_SPACE as DETECTION, SSDLITE_SPACE as SSDLITE
from fna_ext.nas.supernet import SuperNetwork

SEED_ARCH = mobilenet_v2_arch(0.35)


@pytest.fixture(scope="module")
def seed():
    torch.manual_seed(0)
    net = build_network(SEED_ARCH, None)
    for m in net.modules():  # non-trivial statistics, so that remapping mistakes show
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net


def _path_for(arch: Arch, supernet: SuperNetwork) -> list[str]:
    """The ops of ``arch`` laid over the super network's layers, skip where ``arch`` is shorter."""
    ops = []
    for spec in supernet.specs:
        stage_ops = arch.stages[spec.stage].ops
        ops.append(stage_ops[spec.layer] if spec.layer < len(stage_ops) else "skip")
    return ops


@pytest.mark.parametrize("output_stride", [None, 8])
@pytest.mark.parametrize("mode", ["shared", "independent"])
@pytest.mark.parametrize("target", [
    # skips only at the ends of stages: a skip in the middle shifts which seed layer the target's
    # later layers take (Eq. 1 drops skips first), while a super-network layer always takes its own
    "[[16, 8], ['k3_e1'], 1]|[[8, 8], ['k5_e3', 'k7_e6'], 2]|[[8, 16], ['k3_e6', 'k7_e3', 'skip'], 2]|"
    "[[16, 24], ['k5_e6', 'k5_e6', 'k3_e3', 'skip'], 2]|[[24, 32], ['k7_e6'], 1]|[[32, 56], ['k3_e6', 'k7_e6'], 2]|"
    "[[56, 112], ['k5_e3'], 1]",
])
def test_a_sampled_path_equals_the_remapped_target_network(seed, mode, target, output_stride):
    """Path mode with non-affine batch-stat BNs equals the target network built from the same
    ops, remapped from the seed with its BNs made non-affine too (train mode, batch statistics);
    under a dense task's output stride, both run their later stages dilated."""
    supernet = SuperNetwork(SEED_ARCH, DETECTION, seed=seed, weight_sharing=mode, affine_bn=True,
                            output_stride=output_stride).double()
    target_arch = Arch.parse(target)
    reference = remap_network(seed, build_network(target_arch, None, output_stride=output_stride)).double().train()
    supernet.set_path(_path_for(target_arch, supernet))
    supernet.train()
    # float64: batch statistics over 2x2 maps amplify float32 rounding past any fixed tolerance
    # (1.1e-4 on a Zen 4 CPU, whose BLAS sums in another order)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(supernet(x), reference.head(reference.forward_stages(x)[-1]), rtol=1e-9, atol=1e-9)
    assert supernet.derive(_path_for(target_arch, supernet)).stages[2].ops == ("k3_e6", "k7_e3", "skip", "skip")


def test_non_affine_bns_have_nothing_to_train(seed):
    supernet = SuperNetwork(SEED_ARCH, DETECTION, seed=seed)
    bn = supernet.search_layers()[0].blocks["k7_e6"].expand.bn
    assert not bn.weight.requires_grad and bn.running_mean is None and not bn.track_running_stats


def test_mixture_is_the_weighted_sum_of_the_paths(seed):
    supernet = SuperNetwork(SEED_ARCH, SSDLITE, seed=seed).train()
    layer = supernet.search_layers()[5]
    x = torch.randn(2, layer.spec.in_channels, 8, 8)
    weights = torch.softmax(torch.randn(len(layer.spec.candidates)), 0)
    layer.choice = weights
    expected = sum(w * layer.run_op(x, op) for w, op in zip(weights, layer.spec.candidates))
    assert torch.allclose(layer(x), expected, atol=1e-6)
    first_of_stage_5 = [l for l in supernet.search_layers() if l.spec.stage == 5][0]
    assert first_of_stage_5.spec.candidates == ("k3_e6", "k5_e6", "k7_e6")  # SSDLite taps its expansion


def test_the_optimiser_step_leaves_unsampled_shared_slices_alone(seed):
    supernet = SuperNetwork(SEED_ARCH, DETECTION, seed=seed).train()
    layer = supernet.search_layers()[1]
    block = layer.blocks["k7_e6"]
    before = block.depthwise.conv.weight.detach().clone()
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        layer.run_op(torch.randn(2, layer.spec.in_channels, 8, 8), "k3_e3").square().sum().backward()
        step_inside(optimizer, layer.sampled_regions("k3_e3"))
    after = block.depthwise.conv.weight.detach()
    e = 3 * layer.spec.in_channels
    assert not torch.equal(after[:e, :, 2:5, 2:5], before[:e, :, 2:5, 2:5])
    outside = torch.ones_like(after, dtype=torch.bool)
    outside[:e, :, 2:5, 2:5] = False
    assert torch.equal(after[outside], before[outside])
    buffer = optimizer.state[block.depthwise.conv.weight]["momentum_buffer"]
    assert buffer[outside].abs().sum() == 0


def _reference_step_inside(optimizer, masks):
    """The plain way: step everything, then put back every entry (and state) outside the mask."""
    saved = {p: (p.detach().clone(), {k: v.clone() for k, v in optimizer.state.get(p, {}).items()
                                      if torch.is_tensor(v) and v.shape == p.shape}) for p in masks}
    optimizer.step()
    with torch.no_grad():
        for p, (value, state) in saved.items():
            p.copy_(torch.where(masks[p], p, value))
            for k, current in optimizer.state[p].items():
                if torch.is_tensor(current) and current.shape == p.shape:
                    current.copy_(torch.where(masks[p], current, state[k]) if k in state
                                  else current.masked_fill(~masks[p], 0))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stepping_inside_a_region_is_stepping_everything_and_putting_back_the_rest(optimizer):
    """step_inside runs the optimiser on views of each region's box; it must give what a full
    step followed by putting back everything outside the region gives: boxes (a centre window
    of taps) and boxes with an inside mask (a block-diagonal of channels), over steps whose
    regions differ, so momentum born in one box is later read outside it."""
    from fna_ext.families.sampled import SampledRegion

    torch.manual_seed(0)
    diagonal = torch.zeros(8, 6, 1, 1, dtype=torch.bool)
    diagonal[:4, :3] = diagonal[4:, 3:] = True
    regions = [SampledRegion((slice(None), slice(None), slice(2, 5), slice(2, 5))),
               SampledRegion((slice(None), slice(None), slice(1, 6), slice(1, 6)), diagonal),
               SampledRegion((slice(None), slice(0, 3), slice(None), slice(None)))]
    start = torch.randn(8, 6, 7, 7)
    runs = []
    for fast in (True, False):
        weight = nn.Parameter(start.clone())
        opt = (torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=0.1) if optimizer == "sgd"
               else torch.optim.Adam([weight], lr=0.1, weight_decay=0.1))
        for i, region in enumerate(regions * 2):
            weight.grad = torch.randn(8, 6, 7, 7, generator=torch.Generator().manual_seed(i)) * region.mask(weight)
            if fast:
                step_inside(opt, {weight: region})
            else:
                _reference_step_inside(opt, {weight: region.mask(weight)})
        runs.append((weight.detach(), {k: v for k, v in opt.state[weight].items() if v.shape == weight.shape}))
    (fast_weight, fast_state), (slow_weight, slow_state) = runs
    torch.testing.assert_close(fast_weight, slow_weight)
    assert fast_state.keys() == slow_state.keys() and fast_state
    for k in fast_state:
        torch.testing.assert_close(fast_state[k], slow_state[k])
    assert not torch.equal(fast_weight, start)
