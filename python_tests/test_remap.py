"""Parameter remapping against the paper's equations, function preservation where the
construction preserves it, and the compiled one-call copy against the Python reference."""

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fna_ext import _extension, build_network, mobilenet_v2
from fna_ext.arch import Arch, Stage
from fna_ext.families.mbconv import MBConv
from fna_ext.remap import (depth_map, kernel, plan_candidates, plan_network, remap_network,
                           select_channels, width_index)
from fna_ext.families.mbconv.candidates import candidate_blocks
from fna_ext.tasks.detection.task import RETINANET_SPACE as DETECTION


def randomised(net):
    """Random weights and BN statistics, so equal outputs mean something."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    return net.eval()


SEED = randomised(mobilenet_v2(num_classes=None, width_mult=0.35))
X = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def with_stage_ops(arch, ops_per_stage):
    return Arch(tuple(Stage(s.in_channels, s.out_channels, tuple(ops) if ops else s.ops, s.stride)
                      for s, ops in zip(arch.stages, ops_per_stage)))


# ---- tensor level ------------------------------------------------------------------------------

def test_kernel_center_pads_with_a_zero_ring_and_crops_back():
    w = torch.randn(4, 1, 3, 3)
    big = kernel(w, 7)
    assert torch.equal(big[..., 2:5, 2:5], w)
    ring = big.clone()
    ring[..., 2:5, 2:5] = 0
    assert not ring.any()
    assert torch.equal(kernel(big, 3), w)
    w7 = torch.randn(2, 1, 7, 7)
    assert torch.equal(kernel(w7, 5), w7[..., 1:6, 1:6])


def test_kernel_dilate_places_taps_on_rows_and_columns_0_mid_and_last():
    w = torch.arange(9.).view(1, 1, 3, 3)
    for size in (5, 7):
        big = kernel(w, size, "dilate")
        taps = [0, (size - 1) // 2, size - 1]
        assert torch.equal(big[..., taps, :][..., taps], w)
        assert big.sum() == w.sum()
        assert torch.equal(kernel(big, 3, "dilate"), w)
    with pytest.raises(ValueError, match="dilate mode"):
        kernel(torch.randn(1, 1, 5, 5), 7, "dilate")


def test_select_channels_is_algorithm_1():
    ref = torch.tensor([0.1, 5.0, 0.3, 2.0, 2.0, -7.0])
    assert select_channels(ref, 3).tolist() == [1, 3, 4]
    assert select_channels(ref, 0).tolist() == []
    with pytest.raises(ValueError):
        select_channels(ref, 7)


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=40), st.data())
def test_select_channels_picks_the_largest(values, data):
    ref = torch.tensor(values)
    k = data.draw(st.integers(0, len(values)))
    chosen = select_channels(ref, k)
    assert chosen.tolist() == sorted(chosen.tolist())
    rest = [i for i in range(len(values)) if i not in chosen.tolist()]
    if k and rest:
        assert min(ref[chosen]) >= max(ref[rest])


def test_depth_map_is_equation_1():
    assert depth_map(3, 5) == [0, 1, 2, 2, 2]
    assert depth_map(4, 2) == [0, 1]
    assert depth_map(1, 3) == [0, 0, 0]


def test_width_index_in_both_directions():
    first, _ = width_index(6, 4)
    assert first.tolist() == [0, 1, 2, 3]
    wider, _ = width_index(3, 5)
    assert wider.tolist() == [0, 1, 2, -1, -1]
    replicated, counts = width_index(3, 5, mode="net2net")
    assert replicated.tolist() == [0, 1, 2, 0, 1] and counts.tolist() == [2, 2, 1]
    chosen, _ = width_index(4, 2, torch.tensor([1., 9., 3., 4.]), "l1")
    assert chosen.tolist() == [1, 3]


# ---- network level -----------------------------------------------------------------------------

def outputs_equal(target):
    with torch.no_grad():
        return torch.allclose(target.eval()(X), SEED(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_extension", [False, True])
def test_same_arch_is_an_exact_copy(use_extension):
    target = remap_network(SEED, build_network(SEED.arch, None), use_extension=use_extension)
    with torch.no_grad():
        assert torch.equal(target.eval()(X), SEED(X))


@pytest.mark.parametrize("ops", [
    [None, ["k7_e6", "k5_e6"], ["k5_e6", "k7_e6", "k3_e6"]],                       # zero rings
    [None, ["k3_e6", "skip", "k3_e6"], ["k3_e6", "skip", "k3_e6", "skip", "k3_e6"]],  # extra skips
    [None, ["k5_e8", "k3_e7"], None, ["k3_e6", "skip", "k7_e9", "k3_e6", "k3_e6"]],   # wider, zero filled
])
def test_function_preserving_constructions(ops):
    target = remap_network(SEED, build_network(with_stage_ops(SEED.arch, ops + [None] * 7), None))
    assert outputs_equal(target)


def test_net2net_widening_preserves_the_function():
    arch = with_stage_ops(SEED.arch, [None, ["k3_e9", "k3_e12"], ["k3_e7"] * 3] + [None] * 4)
    target = remap_network(SEED, build_network(arch, None), width="net2net")
    assert outputs_equal(target)
    first = remap_network(SEED, build_network(arch, None), width="first")
    assert outputs_equal(first)  # zero filling preserves it too; the weights differ
    assert not torch.equal(target.stages[1][0].project.conv.weight, first.stages[1][0].project.conv.weight)


@pytest.mark.parametrize("mode", ["bn", "std", "l1"])
def test_narrower_layers_take_algorithm_1_channels_everywhere(mode):
    arch = with_stage_ops(SEED.arch, [None, ["k5_e3", "k3_e3"]] + [None] * 5)
    target = remap_network(SEED, build_network(arch, None), width=mode)
    s, t = SEED.stages[1][0], target.stages[1][0]
    w = s.expand.conv.weight.flatten(1)
    reference = {"bn": s.expand.bn.weight.abs(), "std": w.std(1, unbiased=False), "l1": w.abs().sum(1)}[mode]
    idx = torch.topk(reference, t.hidden_channels).indices.sort().values
    assert torch.equal(t.expand.conv.weight, s.expand.conv.weight[idx])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(t.expand.bn, name), getattr(s.expand.bn, name)[idx])
        assert torch.equal(getattr(t.depthwise.bn, name), getattr(s.depthwise.bn, name)[idx])
    assert torch.equal(t.depthwise.conv.weight, kernel(s.depthwise.conv.weight[idx], 5))
    assert torch.equal(t.project.conv.weight, s.project.conv.weight[:, idx])


def test_wider_bn_entries_take_their_initial_values():
    arch = with_stage_ops(SEED.arch, [None, ["k3_e8"]] + [None] * 5)
    t = remap_network(SEED, build_network(arch, None)).stages[1][0]
    extra = slice(SEED.stages[1][0].hidden_channels, None)
    assert (t.expand.bn.weight[extra] == 1).all() and (t.expand.bn.running_var[extra] == 1).all()
    assert not t.expand.bn.bias[extra].any() and not t.expand.conv.weight[extra].any()


def test_expansion_1_seed_layer_into_an_expanded_target():
    arch = with_stage_ops(SEED.arch, [["k3_e6"]] + [None] * 6)
    target = remap_network(SEED, build_network(arch, None))
    t, s = target.stages[0][0], SEED.stages[0][0]
    c = s.in_channels
    assert torch.equal(t.expand.conv.weight[:c, :, 0, 0], torch.eye(c))
    assert torch.equal(t.depthwise.conv.weight[:c], s.depthwise.conv.weight)


def wider_stage_2():
    stages = list(SEED.arch.stages)
    s2, s3 = stages[2], stages[3]
    stages[2] = Stage(s2.in_channels, 24, s2.ops, s2.stride)
    stages[3] = Stage(24, s3.out_channels, s3.ops, s3.stride)
    return Arch(tuple(stages))


@pytest.mark.parametrize("make, message", [
    (lambda: build_network("[[32, 16], ['k3_e1'], 1]", None), "1 stages but the seed has 7"),
    (lambda: build_network(str(SEED.arch).replace("[[16, 8]", "[[24, 8]", 1), None), "stem: the target has 24"),
    (lambda: build_network(wider_stage_2(), None), r"stage 2: the target is 8->24 channels, the seed 8->16"),
    (lambda: torch.nn.Linear(3, 3), "target is not an fna_ext network"),
])
def test_incompatible_targets_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        remap_network(SEED, make())


# ---- the compiled one-call copy ----------------------------------------------------------------

needs_kernel = pytest.mark.skipif(not _extension.has_kernel("remap_copy", "cpu"),
                                  reason="the compiled extension is not loaded")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("width, kernel_mode", [("first", "center"), ("bn", "dilate"), ("net2net", "center")])
def test_fused_copy_matches_the_reference(width, kernel_mode, dtype):
    arch = with_stage_ops(SEED.arch, [None, ["k7_e3", "skip", "k5_e9"], ["k3_e3"], None, ["k7_e6"] * 4] + [None] * 2)
    plan = plan_network(SEED, build_network(arch, None), width, kernel_mode)
    fused = plan.apply(SEED, build_network(arch, None).to(dtype))
    reference = plan.apply_reference(SEED, build_network(arch, None).to(dtype))
    for (key, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), key


@needs_kernel
def test_remap_copy_opcheck():
    src = [torch.randn(4, 3, 3, 3), torch.randn(5)]
    dst = [torch.zeros(6, 3, 5, 5), torch.zeros(5)]
    maps = [torch.tensor([0, 1, 2, 3, -1, -1, 0, 1, 2, -1, 0, 1, 2, -1, -1, 0, 1, 2, -1]), torch.arange(5)]
    torch.library.opcheck(torch.ops.fna_ext.remap_copy.default,
                          (src, dst, maps, [0.0, 1.0], [torch.empty(0), torch.full((5,), 2.0)], [-1, 0]))
    torch.ops.fna_ext.remap_copy(src, dst, maps, [0.0, 1.0], [torch.empty(0), torch.full((5,), 2.0)], [-1, 0])
    # maps: out channels 0-3 then two fills; the 3x3 kernel centred in 5x5
    assert torch.equal(dst[0][:4, :, 1:4, 1:4], src[0])
    ring = dst[0].clone()
    ring[:4, :, 1:4, 1:4] = 0
    assert not ring.any()
    assert torch.equal(dst[1], src[1] * 2)


def test_super_network_candidates_use_the_same_mapping():
    blocks = candidate_blocks(SEED.arch, DETECTION)
    assert len(blocks) == 6 * sum(DETECTION.max_depths)
    plan_candidates(SEED, blocks).apply(SEED, blocks)
    seed_last = SEED.stages[2][-1]  # the 3-layer stage's layer 3 takes its last seed layer (Eq. 1)
    block = blocks["s2_l3_k7_e6"]
    assert torch.equal(block.depthwise.conv.weight, kernel(seed_last.depthwise.conv.weight, 7))
    assert torch.equal(block.expand.conv.weight, seed_last.expand.conv.weight)
    assert torch.equal(blocks["s1_l0_k5_e3"].project.conv.weight,
                       SEED.stages[1][0].project.conv.weight[:, :blocks["s1_l0_k5_e3"].hidden_channels])


# ---- properties over random architectures ------------------------------------------------------

OPS = ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6"]


@st.composite
def targets(draw):
    ops = []
    for stage in SEED.arch.stages:
        first = draw(st.sampled_from(OPS + ["k3_e1"]))
        ops.append([first] + draw(st.lists(st.sampled_from(OPS + ["skip"]), max_size=4)))
    return with_stage_ops(SEED.arch, ops)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets(), st.sampled_from(["first", "bn", "std", "l1", "net2net"]), st.sampled_from(["center", "dilate"]))
def test_properties_over_random_archs(arch, width, kernel_mode):
    target = build_network(arch, None)
    shapes = {k: v.shape for k, v in target.state_dict().items()}
    remap_network(SEED, target, width, kernel_mode)
    assert {k: v.shape for k, v in target.state_dict().items()} == shapes
    preserving = all(
        sum(op != "skip" for op in t.ops) == len(s.ops) and all(op == "skip" or op.endswith("_e6") or
                                                               (op == "k3_e1" and i == 0) for op in t.ops)
        for i, (s, t) in enumerate(zip(SEED.arch.stages, arch.stages)))
    if preserving and kernel_mode == "center" and all(t.ops[0] == s.ops[0] or s.ops[0] != "k3_e1"
                                                       for s, t in zip(SEED.arch.stages, arch.stages)):
        assert outputs_equal(target)
    if width == "bn":
        for s_stage, t_stage in zip(SEED.stages, target.stages):
            layers = [m for m in t_stage if isinstance(m, MBConv)]
            for t, s in zip(layers, [m for m in s_stage if isinstance(m, MBConv)]):
                if t.expand is not None and s.expand is not None and t.hidden_channels <= s.hidden_channels:
                    idx = torch.topk(s.expand.bn.weight.abs(), t.hidden_channels).indices.sort().values
                    assert torch.equal(t.expand.bn.weight, s.expand.bn.weight[idx])


# ---- command line ------------------------------------------------------------------------------

def test_cli_writes_weights_with_the_arch(tmp_path):
    seed_path = tmp_path / "seed.pth"
    torch.save(SEED.state_dict(), seed_path)
    arch = with_stage_ops(SEED.arch, [None, ["k7_e3", "skip", "k5_e6"]] + [None] * 5)
    out = tmp_path / "out" / "target.pth"
    result = subprocess.run([sys.executable, "-m", "fna_ext.remap", "--seed", str(seed_path), "--seed-arch",
                             str(SEED.arch), "--arch", str(arch), "--out", str(out), "--width", "bn"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "stages.1.1  -" in result.stdout and "k3_e6 -> k7_e3" in result.stdout
    payload = torch.load(out, weights_only=True)
    assert Arch.from_dict(payload["arch"]) == arch and payload["remap"]["width"] == "bn"
    expected = remap_network(SEED, build_network(arch, None), "bn")
    for key, value in expected.state_dict().items():
        assert torch.equal(payload["state_dict"][key], value), key


@pytest.mark.parametrize("args, message", [
    (["--arch", "[[32, 16], ['k3_e1'], 1]"], "1 stages but the seed has 7"),
    (["--arch", "mobilenet_v2", "--seed", "/nonexistent.pth"], "no such weights file"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    seed_path = tmp_path / "seed.pth"
    torch.save(mobilenet_v2().state_dict(), seed_path)
    base = {"--seed": str(seed_path), "--out": str(tmp_path / "o.pth")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = subprocess.run([sys.executable, "-m", "fna_ext.remap",
                             *[x for kv in base.items() for x in kv]], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.pth").exists()
