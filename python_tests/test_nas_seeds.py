"""NAS-found MBConv seeds (FNA++): MnasNet, Single-Path NAS, FBNet, MobileNetV3 and EfficientNet as
Archs. The op grammar grows (decimal expansions, SE, activations, ``_pw``) and keeps FNA's texts;
the named archs have timm's parameter counts, replicated here from timm's own layer strings
without importing timm; weights load from timm's and torchvision's key layouts (their key sets are
in ``data/nas_seed_layouts.json``); remapping carries the SE along the hidden channels; the
search space and its shared weights come from the seed."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fna_ext.arch import Arch, Stage
from fna_ext.cost import count
from fna_ext.families import get_family
from fna_ext.families.mbconv import build_network, load_seed_weights
from fna_ext.families.mbconv.blocks import MBConv
from fna_ext.families.mbconv.op import Op, make_divisible
from fna_ext.nas.search import step_inside
from fna_ext.nas.search_space import SearchSpace, layer_specs
from fna_ext.nas.supernet import SuperNetwork
from fna_ext.remap import plan_network, remap_network
from fna_ext.tasks import get_task
from fna_ext.tasks.detection.task import RETINANET_SPACE, SSDLITE_SPACE

LAYOUTS = json.loads((Path(__file__).parent / "data" / "nas_seed_layouts.json").read_text())["layouts"]

# ---- the grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["k3_e6", "k5_e2.5", "k3_e3.67_re", "k5_e6_se0.25_sw", "k3_e1_hse0.25_re",
                                  "k3_e1_pw_re", "k7_e4_hse0.25_hs", "k3_e1_pw_se0.5", "skip"])
def test_every_new_op_has_one_spelling_that_round_trips(name):
    assert Op.parse(name).name == name


@pytest.mark.parametrize("name", ["k3_e6_r6", "k3_e6.0", "k3_e06", "k3_e6_se0.250", "k3_e6_hs_se0.25", "k3_e3_pw",
                                  "k3_e0.5", "k3_e6_se1.5", "k4_e6", "k3_e6_se0", "k3_e6_gelu"])
def test_other_spellings_are_refused_with_the_grammar(name):
    with pytest.raises(ValueError, match=f"unknown op '{name}'"):
        Op.parse(name)


def test_decimal_expansions_round_to_eight_as_timm_does():
    assert Op.parse("k3_e2.5").hidden_channels(80) == 200
    assert Op.parse("k3_e2.3").hidden_channels(80) == 184
    assert Op.parse("k3_e3.67").hidden_channels(24) == 88
    assert Op.parse("k3_e6").hidden_channels(5) == 30  # integers multiply, at any width (FNA's rule)


def test_se_widths_follow_each_network_family():
    # MnasNet / EfficientNet: C_in * R, whatever the expansion; MobileNetV3: hidden * R, to 8
    assert Op.parse("k5_e3_se0.25_re").se_channels(24) == 6
    assert Op.parse("k3_e1_se0.25_sw").se_channels(32) == 8
    assert Op.parse("k5_e3_hse0.25_re").se_channels(24) == 24   # 72 / 4 = 18 -> 24
    assert Op.parse("k3_e1_hse0.25_re").se_channels(16) == 8


def test_fna_net_config_reads_byte_for_byte_and_fixed_parts_round_trip():
    fna = ("[[32, 16], ['k3_e1'], 1]|[[16, 24], ['k5_e3', 'k3_e3', 'skip', 'skip'], 2]|"
           "[[24, 32], ['k5_e3', 'k7_e3', 'k3_e3', 'skip'], 2]")
    assert str(Arch.parse(fna)) == fna and Arch.parse(fna).fixed == {}
    text = "[[16, 16], ['k3_e1_re'], 1]|[[16, 24], ['k3_e4_re', 'k3_e3_re'], 2]|{'act': 'hs', 'head': 960, 'pre_logits': 1280}"
    arch = Arch.parse(text)
    assert str(arch) == text and arch.fixed == {"act": "hs", "head": 960, "pre_logits": 1280}
    assert Arch.from_dict(json.loads(arch.to_json())) == arch
    assert Arch.parse("[[16, 16], ['k3_e1'], 1]|{'head': 1280}").fixed == {}  # the default is left out


@pytest.mark.parametrize("text, message", [
    ("[[16, 16], ['k3_e1'], 1]|{'act': 'gelu'}", "fixed part 'act' must be one of"),
    ("[[16, 16], ['k3_e1'], 1]|{'head': -3}", "'head' must be a positive integer"),
    ("[[16, 16], ['k3_e1'], 1]|{'stem': 16}", r"unknown fixed-part setting\(s\) \['stem'\]"),
    ("[[16, 16], ['k3_e1'], 1]|{'act': 'hs'", "not the fixed parts' settings"),
])
def test_bad_fixed_parts_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        Arch.parse(text)


# ---- the named archs against timm's own definitions ---------------------------------------------

# timm 1.0's arch_def strings and stems/heads, copied as data: the independent replication of each
# layout that the parameter counts are checked against ("ds": depthwise separable, "ir": inverted
# residual, "cn": conv-BN-act; MobileNetV3's SE squeezes hidden/4 rounded to 8 and its head conv has
# a bias and no BN; the others squeeze round(C_in/4))
TIMM = {
    "mnasnet_a1": (32, 1280, False, [["ds_r1_k3_s1_e1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r3_k5_s2_e3_c40_se0.25"],
                                     ["ir_r4_k3_s2_e6_c80"], ["ir_r2_k3_s1_e6_c112_se0.25"],
                                     ["ir_r3_k5_s2_e6_c160_se0.25"], ["ir_r1_k3_s1_e6_c320"]]),
    "mnasnet_b1": (32, 1280, False, [["ds_r1_k3_s1_c16"], ["ir_r3_k3_s2_e3_c24"], ["ir_r3_k5_s2_e3_c40"],
                                     ["ir_r3_k5_s2_e6_c80"], ["ir_r2_k3_s1_e6_c96"], ["ir_r4_k5_s2_e6_c192"],
                                     ["ir_r1_k3_s1_e6_c320"]]),
    "spnasnet_100": (32, 1280, False, [["ds_r1_k3_s1_c16"], ["ir_r3_k3_s2_e3_c24"],
                                       ["ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"],
                                       ["ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"],
                                       ["ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"], ["ir_r4_k5_s2_e6_c192"],
                                       ["ir_r1_k3_s1_e6_c320"]]),
    "fbnet_c": (16, 1984, False, [["ir_r1_k3_s1_e1_c16"], ["ir_r1_k3_s2_e6_c24", "ir_r2_k3_s1_e1_c24"],
                                  ["ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k5_s1_e6_c32", "ir_r1_k3_s1_e6_c32"],
                                  ["ir_r1_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r2_k5_s1_e6_c64"],
                                  ["ir_r3_k5_s1_e6_c112", "ir_r1_k5_s1_e3_c112"], ["ir_r4_k5_s2_e6_c184"],
                                  ["ir_r1_k3_s1_e6_c352"]]),
    "mobilenet_v3_large": (16, 1280, True, [["ds_r1_k3_s1_e1_c16"], ["ir_r1_k3_s2_e4_c24", "ir_r1_k3_s1_e3_c24"],
                                            ["ir_r3_k5_s2_e3_c40_se0.25"],
                                            ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
                                            ["ir_r2_k3_s1_e6_c112_se0.25"], ["ir_r3_k5_s2_e6_c160_se0.25"],
                                            ["cn_r1_k1_s1_c960"]]),
    "mobilenet_v3_small": (16, 1024, True, [["ds_r1_k3_s2_e1_c16_se0.25"], ["ir_r1_k3_s2_e4.5_c24", "ir_r1_k3_s1_e3.67_c24"],
                                            ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"],
                                            ["ir_r2_k5_s1_e3_c48_se0.25"], ["ir_r3_k5_s2_e6_c96_se0.25"],
                                            ["cn_r1_k1_s1_c576"]]),
    "efficientnet_b0": (32, 1280, False, [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s2_e6_c24_se0.25"],
                                          ["ir_r2_k5_s2_e6_c40_se0.25"], ["ir_r3_k3_s2_e6_c80_se0.25"],
                                          ["ir_r3_k5_s1_e6_c112_se0.25"], ["ir_r4_k5_s2_e6_c192_se0.25"],
                                          ["ir_r1_k3_s1_e6_c320_se0.25"]]),
}
# timm.create_model(name).parameters(), summed (timm 1.0.31: semnasnet_100, mnasnet_100, spnasnet_100,
# fbnetc_100, mobilenetv3_large_100, mobilenetv3_small_100, efficientnet_b0)
TIMM_PARAMS = {"mnasnet_a1": 3_887_038, "mnasnet_b1": 4_383_312, "spnasnet_100": 4_421_616, "fbnet_c": 5_572_200,
               "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856, "efficientnet_b0": 5_288_548}


def _timm_count(name: str) -> int:
    stem, features, v3, stages = TIMM[name]
    conv_bn = lambda c_in, c_out, k=1, groups=1: c_in // groups * c_out * k * k + 2 * c_out
    params, c_in = conv_bn(3, stem, 3), stem
    for stage in stages:
        for block in stage:
            args = dict((part[0], part[1:]) if not part.startswith("se") else ("se", part[2:])
                        for part in block.split("_")[1:])
            kind, k, c_out, repeat = block.split("_")[0], int(args["k"]), int(args["c"]), int(args["r"])
            e = float(args.get("e", 1))
            for _ in range(repeat):
                if kind == "cn":
                    params += conv_bn(c_in, c_out)
                else:
                    hidden = c_in * int(e) if e.is_integer() else make_divisible(c_in * e)
                    params += (conv_bn(c_in, hidden) if kind == "ir" else 0) + conv_bn(hidden, hidden, k, hidden)
                    if "se" in args:
                        ratio = float(args["se"])
                        squeezed = make_divisible(hidden * ratio) if v3 else round(c_in * ratio)
                        params += hidden * squeezed + squeezed + squeezed * hidden + hidden
                    params += conv_bn(hidden, c_out)
                c_in = c_out
    head = c_in * features + features if v3 else conv_bn(c_in, features)
    return params + head + features * 1000 + 1000


@pytest.mark.parametrize("name", sorted(TIMM))
def test_named_archs_have_timms_parameter_counts(name):
    assert _timm_count(name) == TIMM_PARAMS[name]  # the replication is timm's layout
    network = build_network(name, 1000)
    assert sum(p.numel() for p in network.parameters()) == TIMM_PARAMS[name]
    arch = Arch.parse(name)
    assert Arch.parse(str(arch)) == arch and str(Arch.parse(str(arch))) == str(arch)


def test_mobilenet_v3_declares_its_own_head_to_the_tasks():
    arch = Arch.parse("mobilenet_v3_large")
    family = get_family("mbconv")
    assert family.default_head_channels(arch) == 960
    info = {f.name: f.channels for f in family.feature_info(arch, "arch")}
    assert info["head"] == 960 and info["expand:5"] == 672  # SSDLite's taps, as torchvision's SSDLite reads them


# ---- weights from timm's and torchvision's key layouts ------------------------------------------

def _random_state(layout: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=g) for key, shape in layout["tensors"].items()}
    for bn in layout["bn"]:
        channels = layout["tensors"][f"{bn}.weight"][0]
        state[f"{bn}.running_mean"] = torch.randn(channels, generator=g) * 0.1
        state[f"{bn}.running_var"] = torch.rand(channels, generator=g) + 0.5
        state[f"{bn}.num_batches_tracked"] = torch.tensor(7)
    return state


@pytest.mark.parametrize("source", sorted(LAYOUTS))
def test_weights_load_from_every_layout_with_every_tensor_placed(source, tmp_path):
    layout = LAYOUTS[source]
    state = _random_state(layout)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    network = build_network(layout["arch"], 1000)
    report = load_seed_weights(network, path)
    assert report.layout.startswith(source.split("/")[0])
    # every file tensor landed in exactly one network tensor, bit for bit (the random values are distinct)
    as_bytes = lambda tensors: sorted(t.contiguous().numpy().tobytes() for t in tensors if t.is_floating_point())
    assert as_bytes(state.values()) == as_bytes(network.state_dict().values())
    assert torch.equal(network.stem.conv.weight, state["conv_stem.weight" if "timm" in source else
                                                      "layers.0.weight" if "mnasnet" in source else "features.0.0.weight"])


def test_a_missing_se_tensor_is_named_and_nothing_is_copied(tmp_path):
    state = _random_state(LAYOUTS["timm/efficientnet_b0"])
    del state["blocks.2.1.se.conv_reduce.bias"]
    torch.save(state, tmp_path / "w.pth")
    network = build_network("efficientnet_b0", 1000)
    before = network.stem.conv.weight.clone()
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.2\.1\.se\.conv_reduce\.bias"):
        load_seed_weights(network, tmp_path / "w.pth")
    assert torch.equal(network.stem.conv.weight, before)


def test_torchvision_mobilenet_v3_weights_bring_their_batch_norm_eps(tmp_path):
    torch.save(_random_state(LAYOUTS["torchvision/mobilenet_v3_small"]), tmp_path / "w.pth")
    assert get_family("mbconv").seed_bn_eps(tmp_path / "w.pth") == 1e-3


@pytest.mark.parametrize("library, name, arch", [
    ("timm", "mobilenetv3_large_100", "mobilenet_v3_large"), ("timm", "efficientnet_b0", "efficientnet_b0"),
    ("timm", "fbnetc_100", "fbnet_c"), ("torchvision", "mobilenet_v3_small", "mobilenet_v3_small"),
    ("torchvision", "mnasnet1_0", "mnasnet_b1")])
def test_loaded_networks_compute_what_the_library_does(library, name, arch, tmp_path):
    lib = pytest.importorskip(library)
    torch.manual_seed(0)
    reference = lib.create_model(name) if library == "timm" else getattr(lib.models, name)()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    network = build_network(arch, 1000, bn_eps=get_family("mbconv").seed_bn_eps(tmp_path / "w.pth"))
    load_seed_weights(network, tmp_path / "w.pth")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-4)


# ---- remapping ----------------------------------------------------------------------------------

NARROW_V3 = Arch((Stage(8, 8, ("k3_e1_re",), 1), Stage(8, 16, ("k3_e4_re", "k3_e3_re"), 2),
                  Stage(16, 24, ("k5_e3_hse0.25_re", "k5_e3_hse0.25_re"), 2),
                  Stage(24, 32, ("k3_e6_hs", "k3_e2.5_hs"), 2), Stage(32, 40, ("k5_e6_hse0.25_hs",), 1)),
                 fixed={"act": "hs", "head": 96, "pre_logits": 128})
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _randomised(network):
    torch.manual_seed(0)
    for m in network.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.normal_(0, 0.5)
    return network.eval()


SEED = _randomised(build_network(NARROW_V3, None))


def _with_ops(*stage_ops):
    return NARROW_V3.with_stages(Stage(s.in_channels, s.out_channels, tuple(ops) if ops else s.ops, s.stride)
                                 for s, ops in zip(NARROW_V3.stages, stage_ops + (None,) * 5))


@pytest.mark.parametrize("stage_ops", [
    (None, None, ["k7_e6_hse0.25_re", "k5_e4_hse0.25_re", "skip"]),  # zero rings, wider hidden and SE, a skip
    (None, ["k5_e4_re", "k3_e3_re", "skip"], None, ["k3_e6_hs", "k5_e4_hs"]),  # wider and larger, a skip
    (None, ["k3_e4_hse0.25_re", "k3_e3_re"]),                           # an SE the seed layer lacks
])
def test_function_preserving_remaps_of_a_mobilenet_v3_seed(stage_ops):
    target = remap_network(SEED, build_network(_with_ops(*stage_ops), None))
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(X), SEED(X), rtol=1e-5, atol=1e-5)


def test_a_new_se_starts_at_half_gates_and_doubles_the_projection():
    target = remap_network(SEED, build_network(_with_ops(None, ["k3_e4_hse0.25_re", "k3_e3_re"]), None))
    block = target.stages[1][0]
    assert not block.se.expand.weight.any() and not block.se.expand.bias.any()
    assert torch.equal(block.project.conv.weight, 2 * SEED.stages[1][0].project.conv.weight)


def test_se_follows_the_hidden_channels_algorithm_1_selects():
    target = remap_network(SEED, build_network(_with_ops(None, None, ["k5_e2_hse0.25_re"] * 2), None), width="bn")
    seed_block, block = SEED.stages[2][0], target.stages[2][0]
    chosen = seed_block.expand.bn.weight.abs().topk(block.hidden_channels).indices.sort().values
    assert torch.equal(block.se.reduce.weight, seed_block.se.reduce.weight[:8][:, chosen])  # 8 of 16 squeezed
    assert torch.equal(block.se.expand.bias, seed_block.se.expand.bias[chosen])


def test_dropping_a_seed_se_is_allowed_and_reported_in_the_layer_table():
    plan = plan_network(SEED, build_network(_with_ops(None, None, ["k5_e3_re", "k5_e3_re"]), None))
    assert any(r.change == "k5_e3_hse0.25_re -> k5_e3_re" for r in plan.layers)


@pytest.mark.parametrize("stage_ops, message", [
    ((None, ["k3_e4_hs", "k3_e3_re"]), "stages.1.0: the target's activation hardswish differs from the seed layer's relu"),
    ((None, None, ["k5_e3_se0.25_re", "k5_e3_hse0.25_re"]), r"stages.2.0: the target's SE gate \(se\) differs"),
])
def test_another_activation_or_gate_is_refused_unless_asked_for(stage_ops, message):
    target = build_network(_with_ops(*stage_ops), None)
    with pytest.raises(ValueError, match=f"{message}.*allow_activation_change"):
        remap_network(SEED, target)
    remap_network(SEED, target, allow_activation_change=True)


def test_another_stem_activation_is_refused():
    target = build_network(Arch(NARROW_V3.stages, fixed={"act": "sw", "head": 96}), None)
    with pytest.raises(ValueError, match="stem and head: the target's activation 'sw' differs from the seed's 'hs'"):
        remap_network(SEED, target)


# ---- the search space and the super network ------------------------------------------------------

# the narrow seed reaches stride 16 at stage 3: that stage's first layer keeps its width, as
# SSDLite's space keeps the first stride-32 layer's
SPACE = SearchSpace("test", (3, 2, 2, 2), keep_width_stride=16)


def test_candidates_come_from_the_seed():
    specs = layer_specs(NARROW_V3, SPACE)
    first = [s for s in specs if s.stage == 2][0]
    expansions = sorted({Op.parse(c).expansion for c in first.candidates})
    assert expansions == [2.5, 3, 4, 6]  # FNA's 3 and 6 and the seed's 4 and 2.5 (e1 has no expand conv)
    assert all(c.endswith("_hse0.25_re") for c in first.candidates)
    assert "skip" not in first.candidates and specs[1].candidates[-1] == "skip"
    last = [s for s in specs if s.stage == 4][0]  # stage 4 stays at stride 16: not kept
    assert {Op.parse(c).suffix for c in last.candidates if c != "skip"} == {"_hse0.25_hs"}
    assert len({Op.parse(c).expansion for c in last.candidates if c != "skip"}) == 4
    kept = [s for s in specs if s.stage == 3 and s.layer == 0][0]
    assert {Op.parse(c).expansion for c in kept.candidates} == {6}  # SSDLite's tapped width stays
    configured = layer_specs(NARROW_V3, SearchSpace("t", (3, 2, 2, 2), expansions=(3, 6)))
    assert {Op.parse(c).expansion for s in configured for c in s.candidates if c != "skip"} == {3, 6}


def test_mobilenet_v2_keeps_fnas_space():
    specs = layer_specs(Arch.parse("mobilenet_v2"), SSDLITE_SPACE)
    assert specs[0].candidates == ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")
    assert [s.candidates for s in specs if s.stage == 5 and s.layer == 0] == [("k3_e6", "k5_e6", "k7_e6")]


@pytest.mark.parametrize("task_name", ["coco", "cityscapes", "coco-keypoints"])
def test_the_embedded_default_eases_the_cost_term_for_nas_seeds_only(task_name):
    from fna_ext.pipeline import AdaptOptions, pipeline_configs
    from fna_ext.tasks import get_task

    task = get_task(task_name)
    plain = task.search_preset("ssdlite" if task_name == "coco" else None, True, Arch.parse("mobilenet_v2"))["search"]
    assert plain == task.search_preset("ssdlite" if task_name == "coco" else None, True)["search"]
    for name in ("mobilenet_v3_large", "mnasnet_b1", "fbnet_c", "efficientnet_b0", "spnasnet_100"):
        nas = task.search_preset(None, True, Arch.parse(name))["search"]
        assert nas["lambda"] == pytest.approx(plain["lambda"] / 3, rel=1e-5), name
        assert nas["weight_steps_per_alpha_step"] == 2 * plain["weight_steps_per_alpha_step"]
        assert {k: v for k, v in nas.items() if k not in ("lambda", "weight_steps_per_alpha_step")} == \
            {k: v for k, v in plain.items() if k not in ("lambda", "weight_steps_per_alpha_step")}
    published = task.search_preset(None, False, Arch.parse("mobilenet_v3_large"))["search"]
    assert published == task.search_preset(None, False)["search"]  # the published settings stay
    # what the commands resolve: the adjustment, then the user's settings over it
    search_config, _ = pipeline_configs(AdaptOptions(task=task_name, seed_arch="mobilenet_v3_large",
                                                     search_overrides=["search.lambda=0.7"]))
    assert search_config["search"]["lambda"] == 0.7
    assert search_config["search"]["weight_steps_per_alpha_step"] == 2 * plain["weight_steps_per_alpha_step"]
    # and the search command, the main job, through its own arguments
    import argparse

    from fna_ext.cli.search import build_config

    args = argparse.Namespace(task=task_name, model=None, seed_arch="mobilenet_v3_large", data=None, config=None,
                              set=[], epochs=None, weight_sharing=None, strategy=None, cost=None, no_fused=False)
    assert build_config(args)["search"]["lambda"] == pytest.approx(plain["lambda"] / 3, rel=1e-5)



def test_a_seed_file_that_embeds_a_nas_arch_gets_the_nas_seed_presets_without_seed_arch(tmp_path):
    import argparse

    from fna_ext.cli.search import build_config
    from fna_ext.pipeline import AdaptOptions, pipeline_configs

    weights = tmp_path / "v3_seed.pt"  # what `fna_ext.pretrain --arch mobilenet_v3_large` writes, less weights
    torch.save({"format": "fna_ext.weights", "arch": Arch.parse("mobilenet_v3_large").to_dict(), "state_dict": {}},
               weights)
    plain = get_task("coco").search_preset("ssdlite", True)["search"]
    search_config, _ = pipeline_configs(AdaptOptions(task="coco", seed_weights=str(weights)))
    assert search_config["search"]["lambda"] == pytest.approx(plain["lambda"] / 3, rel=1e-5)
    args = argparse.Namespace(task="coco", model=None, seed_arch=None, seed_weights=str(weights), data=None,
                              config=None, set=[], epochs=None, weight_sharing=None, strategy=None, cost=None,
                              no_fused=False)
    assert build_config(args)["search"]["lambda"] == pytest.approx(plain["lambda"] / 3, rel=1e-5)
    # --seed-arch, when given, is what the seed is
    assert pipeline_configs(AdaptOptions(task="coco", seed_weights=str(weights), seed_arch="mobilenet_v2"))[0][
        "search"]["lambda"] == pytest.approx(plain["lambda"])


@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_a_sampled_path_of_a_nas_seed_equals_the_remapped_target(mode):
    supernet = SuperNetwork(NARROW_V3, SPACE, seed=SEED, weight_sharing=mode, affine_bn=True).double()
    target_arch = _with_ops(None, ["k5_e6_re", "k3_e2.5_re", "skip"], ["k7_e4_hse0.25_re", "skip"],
                            ["k3_e6_hs", "k5_e3_hs"], ["k3_e2.5_hse0.25_hs", "skip"])
    ops = [target_arch.stages[s.stage].ops[s.layer] if s.layer < len(target_arch.stages[s.stage].ops) else "skip"
           for s in supernet.specs]
    supernet.set_path(ops)
    reference = remap_network(SEED, build_network(target_arch, None)).double().train()
    supernet.train()
    x = X.double()
    torch.testing.assert_close(supernet(x), reference.head(reference.forward_stages(x)[-1]), rtol=1e-9, atol=1e-9)
    assert supernet.derive(ops).fixed == NARROW_V3.fixed


def test_the_mixture_of_a_nas_seed_layer_is_the_weighted_sum_of_its_paths():
    supernet = SuperNetwork(NARROW_V3, SPACE, seed=SEED).double().train()
    layer = supernet.search_layers()[3]
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    weights = torch.softmax(torch.randn(len(layer.spec.candidates), dtype=torch.float64), 0)
    layer.choice = weights
    mixture = layer(x)
    paths = 0
    for w, op in zip(weights, layer.spec.candidates):
        layer.choice = op
        paths = paths + w * layer(x)
    torch.testing.assert_close(mixture, paths)


def test_the_step_leaves_other_candidates_se_slices_alone():
    supernet = SuperNetwork(NARROW_V3, SPACE, seed=SEED)
    layer = supernet.search_layers()[3]
    op = [c for c in layer.spec.candidates if c.startswith("k3_e3")][0]
    layer.choice = op
    regions = layer.sampled_regions(op)
    se = layer._owner(op).se
    assert se.reduce.weight in regions and se.expand.bias in regions
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    before = {p: p.detach().clone() for p in regions}
    layer(torch.randn(2, 16, 8, 8)).square().mean().backward()
    step_inside(optimizer, regions)
    for p, region in regions.items():
        mask = region.mask(p)
        assert torch.equal(p[~mask], before[p][~mask])
    assert not torch.equal(se.reduce.weight, before[se.reduce.weight])


def test_se_cost_counts_the_two_biased_convs():
    op = Op.parse("k5_e6_hse0.25_hs")
    block = MBConv(24, 40, 5, 6, 2, attributes=op)
    counted = count(block, (28, 28), forward=lambda m, x: m(torch.zeros(1, 24, 28, 28))).madds
    assert get_family("mbconv").op_madds(24, 40, op, 2, (28, 28)) == counted
    assert counted > get_family("mbconv").op_madds(24, 40, Op.parse("k5_e6_hs"), 2, (28, 28))


def test_search_spaces_of_every_named_nas_seed_build():
    for name in ("mnasnet_a1", "fbnet_c", "mobilenet_v3_small", "efficientnet_b0"):
        arch = Arch.parse(name)
        for space in (RETINANET_SPACE, SSDLITE_SPACE):
            specs = layer_specs(arch, space)
            assert len(specs) >= sum(len(s.ops) for s in arch.stages[1:])
            assert all(len(s.candidates) >= 3 for s in specs)


# ---- the pipeline ---------------------------------------------------------------------------------

# a narrow MobileNetV3 down to stride 32, as SSDLite needs it
PIPELINE_SEED = ("[[8, 8], ['k3_e1_re'], 1]|[[8, 16], ['k3_e4_re', 'k3_e3_re'], 2]|[[16, 16], ['k5_e3_hse0.25_re'], 2]|"
                 "[[16, 24], ['k3_e6_hs', 'k3_e2.5_hs'], 2]|[[24, 32], ['k5_e6_hse0.25_hs'], 2]|"
                 "{'act': 'hs', 'head': 64, 'pre_logits': 96}")


def _pipeline_seed(path):
    from fna_ext.remap import save_weights

    torch.manual_seed(0)
    save_weights(path, build_network(PIPELINE_SEED, None))


@pytest.mark.parametrize("model", ["ssdlite", "retinanet"])
def test_a_mobilenet_v3_seed_searches_then_adapts_for_detection(tmp_path, model):
    """SSDLite taps the stride-32 layer's expansion and the seed's own 64-wide head; the search's
    candidates keep the seed's SE and activations; the found arch keeps the fixed parts and is
    remapped from the seed and fine-tuned."""
    from fna_ext.data.synthetic import generate_detection
    from fna_ext.engine.finetune import finetune
    from fna_ext.nas.search import search
    from fna_ext.remap import load_seed_network
    from fna_ext.tasks import get_task

    _pipeline_seed(tmp_path / "seed.pt")
    seed = load_seed_network(tmp_path / "seed.pt")
    data = generate_detection(tmp_path / "coco", images=16, size=64, seed=3)
    task = get_task("coco")
    size = ["data.input_size=[64, 64]"] if model == "ssdlite" else ["data.short_side=64", "data.max_size=64"]
    tiny = [f"data.root={data}", *size, "train.batch_size=4",
            "train.num_workers=0", "train.schedule.warmup_iters=2", "search.space.expansions=[3, 6]"]
    config = task.resolve_config(task.search_preset(model, synthetic=True), None,
                                 [*tiny, "train.epochs=2", "search.alpha_start_epoch=1"])
    found = search(config, seed, tmp_path / "search")
    assert found.arch.fixed == {"act": "hs", "head": 64, "pre_logits": 96}
    ops = [Op.parse(op) for stage in found.arch.stages[1:] for op in stage.ops if op != "skip"]
    assert {op.act for op in ops} == {"re", "hs"} and any(op.se == "hse" for op in ops)
    if model == "ssdlite":
        assert Op.parse(found.arch.stages[4].ops[0]).expansion == 6  # the tapped width stayed the seed's
    config = task.resolve_config(task.finetune_preset(model, synthetic=True), None, [*tiny[:-1], "train.epochs=1"])
    result = finetune(task, config, found.arch, tmp_path / "train", seed_weights=tmp_path / "seed.pt")
    assert 0.0 <= result.metrics["AP50"] <= 1.0


def test_a_mobilenet_v3_seed_searches_then_adapts_for_deeplabv3(tmp_path):
    from fna_ext.config import resolve
    from fna_ext.data.synthetic import generate_segmentation
    from fna_ext.engine.finetune import finetune
    from fna_ext.nas.search import search
    from fna_ext.remap import load_seed_network
    from fna_ext.tasks import get_task

    _pipeline_seed(tmp_path / "seed.pt")
    data = generate_segmentation(tmp_path / "city", images=30, size=64, seed=7)
    task = get_task("segmentation")
    tiny = [f"data.root={data}", "data.crop_size=[64, 64]", "data.eval_crop=[64, 64]", "train.batch_size=4",
            "train.num_workers=0", "train.epochs=2", "train.schedule.warmup_iters=2"]
    config = resolve(task.search_preset("deeplabv3", synthetic=True), None,
                     [*tiny, "search.alpha_start_epoch=1", "search.space.kernels=[3, 5]"])
    found = search(config, load_seed_network(tmp_path / "seed.pt"), tmp_path / "search")
    assert found.arch.fixed["act"] == "hs"
    config = resolve(task.finetune_preset("deeplabv3", synthetic=True), None, tiny)
    result = finetune(task, config, found.arch, tmp_path / "train", seed_weights=tmp_path / "seed.pt")
    assert 0.0 <= result.metrics["mIoU"] <= 1.0


def _remap_cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m fna_ext.remap ARGS`` in this process (the exit code, stdout, stderr)."""
    from fna_ext.cli import remap as remap_cli
    from fna_ext.cli import run

    with pytest.raises(SystemExit) as exit_:
        run(remap_cli.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_the_remap_command_takes_a_timm_mobilenet_v3_and_asks_before_changing_activations(tmp_path, capsys):
    torch.save(_random_state(LAYOUTS["timm/mobilenetv3_small_100"]), tmp_path / "timm.pth")
    seed = Arch.parse("mobilenet_v3_small")
    stages = list(seed.stages)
    stages[2] = Stage(24, 40, ("k7_e6_hse0.25_hs", "k5_e6_hse0.25_hs", "skip"), 2)
    target = seed.with_stages(stages)
    common = ["--seed", tmp_path / "timm.pth", "--seed-arch", "mobilenet_v3_small", "--out", tmp_path / "o.pth"]
    code, out, err = _remap_cli(capsys, *common, "--arch", str(target))
    assert code == 0, err
    assert "k5_e4_hse0.25_hs -> k7_e6_hse0.25_hs" in out
    assert Arch.from_dict(torch.load(tmp_path / "o.pth", weights_only=True)["arch"]) == target
    stages[2] = Stage(24, 40, ("k5_e4_hse0.25_sw",), 2)
    swish = seed.with_stages(stages)
    code, _, err = _remap_cli(capsys, *common[:-1], tmp_path / "swish.pth", "--arch", str(swish))
    assert code == 2 and err.startswith("error: stages.2.0: the target's activation swish") and err.count("\n") == 1
    assert not (tmp_path / "swish.pth").exists()
    assert _remap_cli(capsys, *common[:-1], tmp_path / "swish.pth", "--arch", str(swish),
                      "--allow-activation-change")[0] == 0


def test_a_seed_arch_that_does_not_fit_the_file_is_one_error(tmp_path, capsys):
    torch.save(_random_state(LAYOUTS["timm/efficientnet_b0"]), tmp_path / "effnet.pth")
    code, _, err = _remap_cli(capsys, "--seed", tmp_path / "effnet.pth", "--seed-arch", "mnasnet_a1", "--arch",
                              "mnasnet_a1", "--out", tmp_path / "o.pth")
    assert code == 2 and err.startswith("error:") and "timm layout" in err and err.count("\n") == 1


@pytest.mark.cuda
def test_a_nas_seed_layer_runs_on_cuda_as_on_the_cpu():
    """A NAS seed's searched layer (SE, hard-swish) through the fused CUDA ops: path and
    mixture, output and gradients, against the same layer through the fused CPU ops."""
    supernet = SuperNetwork(NARROW_V3, SPACE, seed=SEED).double().train()
    layer = supernet.search_layers()[3]
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    weights = torch.softmax(torch.randn(len(layer.spec.candidates), dtype=torch.float64), 0)
    results = {}
    for device in ("cpu", "cuda"):
        layer.to(device).zero_grad()
        outs = []
        for choice in (layer.spec.candidates[4], weights.to(device)):
            layer.choice = choice
            outs.append(layer(x.to(device)))
        sum(o.square().mean() for o in outs).backward()
        # copies: moving the layer to the next device moves its .grad tensors in place
        results[device] = [t.to("cpu", copy=True) for t in
                           [*outs, *(p.grad for p in layer.parameters() if p.grad is not None)]]
    for cpu, cuda in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(cuda, cpu)



def test_a_nas_seed_layer_runs_the_fused_ops_and_matches_the_reference():
    """Path and mixture of a searched layer with SE and hard-swish candidates: the fused ops run
    (the profiler sees them), and outputs and every gradient equal the eager reference's."""
    from fna_ext.ops import fused

    supernet = SuperNetwork(NARROW_V3, SPACE, seed=SEED).double().train()
    layer = next(l for l in supernet.search_layers() if any("_hse" in op for op in l.spec.candidates))
    x = torch.randn(2, layer.spec.in_channels, 8, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.softmax(torch.randn(len(layer.spec.candidates), dtype=torch.float64), 0).requires_grad_()
    op = next(op for op in layer.spec.candidates if "_hse" in op)
    results = {}
    for use_fused in (True, False):
        layer.zero_grad()
        with fused(use_fused), torch.profiler.profile() as prof:
            outs = []
            for choice in (op, weights):
                layer.choice = choice
                outs.append(layer(x))
            leaves = [x, weights, *(p for p in layer.parameters() if p.requires_grad)]
            grads = torch.autograd.grad(sum(o.square().mean() for o in outs), leaves, allow_unused=True)
        names = {e.name for e in prof.events()}
        assert ("fna_ext::sampled_mbconv_forward" in names) == use_fused
        assert ("fna_ext::depthwise_project_forward" in names) == use_fused
        results[use_fused] = outs + [g for g in grads if g is not None]
    for a, b in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
