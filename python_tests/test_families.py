"""The seed-family interface: the registry, the op grammar an Arch is read with, the features a
family's networks declare (at any output stride), and the parts the core builds through it."""

import pytest
import torch

from fna_ext import families
from fna_ext.arch import Arch, stage_geometry
from fna_ext.families import FeatureInfo, get_family
from fna_ext.families.mbconv import MBConv, Network
from fna_ext.nas.search_space import layer_specs
from fna_ext.tasks.detection.task import SSDLITE_SPACE as SSDLITE
from fna_ext.nas.supernet import SuperNetwork

MBV2 = Arch.parse("mobilenet_v2")


def test_registry_and_grammar():
    mbconv = get_family()
    assert mbconv is get_family("mbconv") and "mbconv" in families.family_names()
    assert mbconv.parse_op("k5_e3").kernel == 5 and mbconv.parse_op("skip").is_skip
    with pytest.raises(ValueError, match="unknown seed family 'resnext'"):
        get_family("resnext")
    with pytest.raises(ValueError, match=r"layer 1: unknown op 'k4_e6'"):
        Arch.parse("[[32, 16], ['k3_e1', 'k4_e6'], 1]")


def test_family_round_trips_through_json_and_net_config_stays_byte_for_byte():
    text = "[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e6', 'skip'], 2]"
    arch = Arch.parse(text)
    assert str(arch) == text and arch.family == "mbconv"
    assert "family" not in arch.to_dict()  # MBConv JSON files read as before
    assert Arch.parse(arch.to_json()) == arch
    with pytest.raises(ValueError, match="unknown seed family"):
        Arch.from_dict({**arch.to_dict(), "family": "nope"})


def test_feature_info_matches_the_network_at_every_output_stride():
    x = torch.zeros(1, 3, 64, 64)
    for output_stride in (None, 16, 8):
        net = Network(MBV2, None, output_stride=output_stride).eval()
        infos = {i.name: i for i in get_family().feature_info(MBV2, 1280, output_stride=output_stride)}
        with torch.no_grad():
            stages = net.forward_stages(x)
            _, hidden = net.stages[5][0].forward_tapping_expand(stages[4])
        for i, out in enumerate(stages):
            assert infos[f"stage:{i}"] == FeatureInfo("stage", i, 64 // out.shape[-1], out.shape[1])
        assert (infos["expand:5"].channels, infos["expand:5"].stride) == (576, 64 // hidden.shape[-1])
        assert infos["head"].stride == min(32, output_stride or 32)


def test_output_stride_turns_strides_into_dilations_as_deeplab_does():
    geometry = stage_geometry(MBV2, output_stride=8)
    # stages at stride 16 and 32 run at stride 1: the first layer keeps the dilation so far
    assert [(g.stride, g.first_dilation, g.dilation) for g in geometry][3:] == [(1, 1, 2), (1, 2, 2), (1, 2, 4), (1, 4, 4)]
    net = Network(MBV2, None, output_stride=8)
    assert net.stages[3][0].depthwise.conv.stride == (1, 1) and net.stages[3][1].depthwise.conv.dilation == (2, 2)
    assert net.stages[5][1].dilation == 4 and net.stages[5][0].dilation == 2
    for bad in (3, 1, 12):
        with pytest.raises(ValueError, match="output_stride must be a power of two"):
            stage_geometry(MBV2, output_stride=bad)


def test_norm_and_activation_are_passed_in_not_patched():
    built = []

    def norm(channels):
        built.append(channels)
        return torch.nn.GroupNorm(1, channels)

    block = MBConv(16, 16, 3, 6, norm_layer=norm, act_layer=torch.nn.Hardswish)
    assert built == [96, 96, 16] and isinstance(block.expand.act, torch.nn.Hardswish)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 16, 8, 8)


def test_super_network_candidates_keep_no_statistics_and_take_their_parts_from_the_family():
    supernet = SuperNetwork(MBV2, SSDLITE)
    layer = supernet.search_layers()[0]
    bns = [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.track_running_stats and bn.running_mean is None for bn in bns)
    assert all(not bn.weight.requires_grad for bn in bns)
    assert supernet.stem.bn.track_running_stats  # the fixed parts keep theirs
    assert {op for s in supernet.arch.stages[1:] for op in s.ops} == {"k7_e6"}
    keep = [spec for spec in layer_specs(MBV2, SSDLITE) if spec.stage == 5 and spec.layer == 0][0]
    assert keep.candidates == ("k3_e6", "k5_e6", "k7_e6")
