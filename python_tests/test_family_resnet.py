"""The ResNet family: its grammar and named archs, torchvision parity (parameters, weight loading,
outputs), features at every output stride, per-op cost, remapping, and a super network built,
run and costed on a ResNet-18 seed. Inputs are 64x64 to stay fast on a CPU."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fna_ext.arch import Arch, Stage
from fna_ext.cost import count, count_params
from fna_ext.families import FeatureInfo, get_family
from fna_ext.families.resnet import BasicBlock, Bottleneck, Network
from fna_ext.families.resnet.archs import resnet_arch
from fna_ext.families.resnet.blocks import dense_weight, grouped_weight
from fna_ext.nas.cost_table import madds_table
from fna_ext.nas.search_space import SearchSpace, layer_specs
from fna_ext.nas.supernet import SuperNetwork
from fna_ext.remap import load_seed_network, plan_network, remap_network, save_weights

RESNET = get_family("resnet")
R18, R50 = RESNET.named_archs()["resnet18"](), RESNET.named_archs()["resnet50"]()
SHORT50 = resnet_arch("bottleneck", (1, 2, 2, 2))  # ResNet-50's stages, fewer layers: faster, the same cases
SPACE = SearchSpace("resnet", (2, 2, 2))  # the three stages after ResNet's first, two layers each
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def with_random_statistics(net: nn.Module) -> nn.Module:
    """BN running statistics and affine parameters away from (0, 1), so identities are not trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.running_mean, m.bias):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
                for t in (m.running_var, m.weight):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    return net.eval()


def test_grammar_and_named_archs_round_trip():
    assert RESNET.parse_op("bottleneck_k5") == RESNET.parse_op("bottleneck_k5")
    assert (RESNET.parse_op("basic_k7").block, RESNET.parse_op("basic_k7").kernel) == ("basic", 7)
    grouped = RESNET.parse_op("bottleneck_k5_g4")
    assert (grouped.block, grouped.kernel, grouped.groups, grouped.name) == ("bottleneck", 5, 4, "bottleneck_k5_g4")
    assert RESNET.parse_op("skip").is_skip and RESNET.parse_op("basic_k3").groups == 1
    wide = RESNET.parse_op("bottleneck_k3_g32_w200")
    assert (wide.groups, wide.width, wide.name) == (32, 200, "bottleneck_k3_g32_w200")
    assert RESNET.parse_op("basic_k3").width == 100
    for bad in ("basic_k4", "k3_e6", "bottleneck_3", "basic_k3_g1", "basic_k3_g0", "basic_k3_g02", "skip_k3",
                "basic_k3_w100", "basic_k3_w0", "basic_k3_w050", "basic_k3_w2_g2"):
        with pytest.raises(ValueError, match=r"ResNet ops are \{basic\|bottleneck\}_k"):
            RESNET.parse_op(bad)
    with pytest.raises(ValueError, match="'skip' cannot be the first layer"):
        Arch._from_net_config("[[64, 64], ['skip', 'basic_k3'], 1]", family="resnet")
    arch = Arch._from_net_config("[[64, 64], ['basic_k3_g2', 'skip'], 1]", family="resnet")
    assert Arch._from_net_config(str(arch), family="resnet") == arch
    for name, build in RESNET.named_archs().items():
        arch = build()
        assert arch.family == "resnet" and arch.stem_channels == 64
        assert Arch.parse(arch.to_json()) == arch and Arch.parse(arch.to_json()).family == "resnet"
        assert Arch._from_net_config(str(arch), family="resnet") == arch
    assert [s.out_channels for s in R50.stages] == [256, 512, 1024, 2048]


def test_blocks_take_norm_and_activation_and_shortcut_only_where_shape_changes():
    built = []

    def norm(channels):
        built.append(channels)
        return nn.GroupNorm(1, channels)

    block = Bottleneck(64, 256, 5, stride=2, norm_layer=norm, act_layer=nn.SiLU)
    assert built == [64, 64, 256, 256] and isinstance(block.act, nn.SiLU)
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # v1.5: stride on the K x K conv
    assert block(torch.randn(1, 64, 8, 8)).shape == (1, 256, 4, 4)
    assert BasicBlock(64, 64).downsample is None and BasicBlock(64, 64, stride=2).downsample is not None
    with pytest.raises(ValueError, match="multiple of 4"):
        Bottleneck(64, 130)


try:
    import torchvision
except ImportError:  # parity with torchvision is checked where it is installed
    torchvision = None
needs_torchvision = pytest.mark.skipif(torchvision is None, reason="torchvision parity needs torchvision")


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_timm_resnets_load_and_give_the_same_logits(tmp_path, name):
    """timm's resnet18/34/50 keep torchvision's key names; their files load as torchvision's do."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = with_random_statistics(timm.create_model(name, pretrained=False))
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    ours = RESNET.build_network(RESNET.named_archs()[name](), 1000).eval()
    assert RESNET.load_seed_weights(ours, tmp_path / f"{name}.pth").layout == "torchvision"
    with torch.no_grad():
        torch.testing.assert_close(ours(X), reference(X), atol=1e-4, rtol=0)
    # as a seed: the backbone (no classifier) of the same file, with --seed-arch naming it
    backbone = load_seed_network(tmp_path / f"{name}.pth", name).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(X), reference.forward_head(reference.forward_features(X),
                                                                        pre_logits=True), atol=1e-4, rtol=0)


@needs_torchvision
@pytest.mark.parametrize("name, params", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                          ("wide_resnet50_2", 68_883_240), ("resnext50_32x4d", 25_028_904)])
def test_torchvision_parity_of_params_weights_and_outputs(tmp_path, name, params):
    torch.manual_seed(0)
    reference = with_random_statistics(getattr(torchvision.models, name)())
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = RESNET.build_network(RESNET.named_archs()[name](), 1000).eval()
    assert count_params(ours) == count_params(reference) == params
    report = RESNET.load_seed_weights(ours, path)
    assert report.layout == "torchvision" and not report.ignored
    with torch.no_grad():
        torch.testing.assert_close(ours(X), reference(X), atol=1e-5, rtol=0)
    # fna_ext's own file (keys of the network, arch embedded) loads back, and as a seed without classifier
    save_weights(tmp_path / "own.pth", ours)
    seed = load_seed_network(tmp_path / "own.pth").eval()
    assert seed.arch == ours.arch and seed.classifier is None
    with torch.no_grad():
        torch.testing.assert_close(seed(X), torch.flatten(nn.functional.adaptive_avg_pool2d(
            ours.forward_stages(X)[-1], 1), 1))


@needs_torchvision
def test_loading_names_every_key_that_does_not_fit(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    del state["layer2.0.downsample.0.weight"]
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 5, 5)
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        RESNET.load_seed_weights(Network(R18), tmp_path / "bad.pth")
    message = str(err.value)
    assert "\n" not in message
    for part in ("missing keys (1): layer2.0.downsample.0.weight", "layer4.1.conv2.weight: file (512, 512, 5, 5)",
                 "unexpected keys (1): layer5.0.conv1.weight"):
        assert part in message


@pytest.mark.parametrize("arch", [R18, SHORT50], ids=["resnet18", "bottleneck"])
def test_feature_info_matches_the_network_at_every_output_stride(arch):
    for output_stride in (None, 16, 8):
        net = Network(arch, None, output_stride=output_stride).eval()
        infos = RESNET.feature_info(arch, None, output_stride=output_stride)
        with torch.no_grad():
            stages = net.forward_stages(X[:1])
        assert infos == [FeatureInfo("stage", i, 64 // out.shape[-1], out.shape[1]) for i, out in enumerate(stages)]
        assert infos[-1].stride == min(32, output_stride or 32)
    # as torchvision's replace_stride_with_dilation: a dilated stage's first layer keeps the dilation before it
    net = Network(arch, None, output_stride=8)
    assert net.stages[2][0].conv2.stride == (1, 1) and net.stages[2][0].conv2.dilation == (1, 1)
    assert net.stages[3][0].conv2.dilation == (2, 2) and net.stages[3][1].conv2.dilation == (4, 4)


@pytest.mark.parametrize("op", ["basic_k3", "basic_k7", "bottleneck_k3", "bottleneck_k5", "basic_k5_g2", "bottleneck_k3_g4",
                                "basic_k3_w50", "bottleneck_k5_g2_w150"])
@pytest.mark.parametrize("c_in, c_out, stride, dilation", [(64, 64, 1, 1), (64, 128, 2, 1), (128, 128, 1, 2)])
def test_op_madds_equal_counting_the_block(op, c_in, c_out, stride, dilation):
    block = RESNET.build_layer(c_in, c_out, stride, op, dilation=dilation)
    size = (15, 12)
    measured = count(block, size, forward=lambda m, _: m(torch.zeros(1, c_in, *size))).madds
    assert RESNET.op_madds(c_in, c_out, op, stride, size, dilation) == measured


def stage_with_kernel(arch: Arch, stage: int, op: str) -> Arch:
    stages = list(arch.stages)
    s = stages[stage]
    stages[stage] = Stage(s.in_channels, s.out_channels, (op,) * len(s.ops), s.stride)
    return Arch(stages, family="resnet")


@pytest.mark.parametrize("arch, op", [(R18, "basic_k5"), (SHORT50, "bottleneck_k5")], ids=["resnet18", "bottleneck"])
def test_remap_keeps_the_function_same_arch_and_zero_ring_kernels(arch, op):
    torch.manual_seed(0)
    seed = with_random_statistics(Network(arch, 10))
    with torch.no_grad():
        expected = seed(X)
        same = remap_network(seed, Network(arch, 10).eval())
        torch.testing.assert_close(same(X), expected, atol=1e-5, rtol=0)
        target = Network(stage_with_kernel(arch, 2, op), 10).eval()
        plan = plan_network(seed, target, kernel="center")
        plan.apply(seed, target)
        assert target.stages[2][0].conv2.weight.shape[-1] == 5
        torch.testing.assert_close(target(X), expected, atol=1e-5, rtol=0)
        # the reference path and the compiled copy agree
        reference = plan.apply_reference(seed, Network(target.arch, 10).eval())
        torch.testing.assert_close(reference(X), target(X), atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot remap a basic block"):
        other = Arch([Stage(64, 256, ("bottleneck_k3",), 1)], family="resnet")
        plan_network(Network(Arch([Stage(64, 256, ("basic_k3",), 1)], family="resnet")), Network(other))


def derived_arch(supernet: SuperNetwork, ops: list[str]) -> Arch:
    """What SuperNetwork.derive builds, in the seed's family (derive itself builds an MBConv Arch)."""
    stages = [supernet.seed_arch.stages[0]]
    layers = supernet.search_layers()
    for i, stage in enumerate(supernet.seed_arch.stages[1:], start=1):
        stage_ops = tuple(op for layer, op in zip(layers, ops) if layer.spec.stage == i)
        stages.append(Stage(stage.in_channels, stage.out_channels, stage_ops, stage.stride))
    return Arch(stages, family="resnet")


def test_super_network_builds_from_a_seed_runs_paths_and_mixtures_and_costs_its_paths():
    torch.manual_seed(0)
    seed = with_random_statistics(Network(R18, None))
    space = SearchSpace("resnet", (), groups=(1, 2), depth_margin=1)  # ResNet depths follow the seed
    shared = SuperNetwork(R18, space, seed=seed)
    independent = SuperNetwork(R18, space, seed=seed, weight_sharing="independent")
    layers = shared.search_layers()
    assert [len(layer.blocks) for layer in layers] == [1] * 9 and shared.arch.stages[1].ops == ("basic_k7",) * 3
    grid = tuple(f"basic_k{k}{g}" for k in (3, 5, 7) for g in ("", "_g2"))
    assert layers[0].spec.candidates == grid and layers[2].spec.candidates == grid + ("skip",)
    path = ["basic_k3", "basic_k5_g2", "skip", "basic_k7_g2", "basic_k3", "basic_k5",
            "basic_k3_g2", "basic_k7", "skip"]
    for net in (shared, independent):
        net.set_path(path)
    with torch.no_grad():  # the shared 7x7's centre and block-diagonal slices are the independent candidates
        torch.testing.assert_close(shared(X), independent(X), atol=1e-4, rtol=1e-4)
    regions = layers[1].sampled_regions("basic_k5_g2")
    assert len(regions) == 2 and all(r.mask(p).sum() == p.shape[0] * p.shape[1] // 2 * 25 for p, r in regions.items())
    assert layers[2].sampled_regions("skip") == {}
    assert independent.search_layers()[0].sampled_regions("basic_k3") == {}

    out = shared(X)
    assert torch.isfinite(out).all() and out.shape == (2, 512, 2, 2)
    alphas = [torch.zeros(len(layer.spec.candidates), requires_grad=True) for layer in layers]
    shared.set_mixture([a.softmax(0) for a in alphas])
    mixed = shared(X)
    assert torch.isfinite(mixed).all()
    mixed.square().mean().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in alphas)
    assert layers[0].forward_tapping_expand(shared.stages[0](shared.stem(X)))[1] is None

    table = madds_table(R18, layer_specs(R18, space), (64, 64))
    derived = Network(derived_arch(shared, path), None)
    assert table.of_ops(path) == count(derived, (64, 64)).madds


@pytest.mark.parametrize("rule", ["diagonal", "first"])
def test_group_slices_and_their_dense_placement(rule):
    """A grouped conv's weight sliced from a dense one by each rule, and placed back: under the
    block-diagonal rule the dense conv computes exactly what the grouped one does."""
    dense = torch.randn(8, 12, 3, 3)
    grouped = grouped_weight(dense, 4, rule)
    assert grouped.shape == (8, 3, 3, 3)
    if rule == "diagonal":  # output channel o keeps the inputs of its own group, o // 2
        for o in range(8):
            torch.testing.assert_close(grouped[o], dense[o, 3 * (o // 2):3 * (o // 2) + 3])
        x = torch.randn(2, 12, 6, 6)
        torch.testing.assert_close(F.conv2d(x, dense_weight(grouped, 4, rule), padding=1),
                                   F.conv2d(x, grouped, padding=1, groups=4), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(grouped, dense[:, :3])
    torch.testing.assert_close(grouped_weight(dense_weight(grouped, 4, rule), 4, rule), grouped)


@pytest.mark.parametrize("arch", [R18, SHORT50], ids=["basic", "bottleneck"])
def test_remap_between_grouped_and_dense_convs(arch):
    """Grouped into dense keeps the function exactly; dense into grouped takes the slice the rule
    names; grouped into grouped of the same count copies."""
    torch.manual_seed(0)
    block = arch.stages[2].ops[0].split("_")[0]
    grouped_seed = with_random_statistics(Network(stage_with_kernel(arch, 2, f"{block}_k3_g4"), 10))
    with torch.no_grad():
        expected = grouped_seed(X)
        dense = remap_network(grouped_seed, Network(stage_with_kernel(arch, 2, f"{block}_k5"), 10).eval())
        torch.testing.assert_close(dense(X), expected, atol=1e-5, rtol=0)
        again = remap_network(grouped_seed, Network(stage_with_kernel(arch, 2, f"{block}_k3_g4"), 10).eval())
        torch.testing.assert_close(again(X), expected, atol=0, rtol=0)
    dense_seed = with_random_statistics(Network(arch, 10))
    conv = "conv1" if block == "basic" else "conv2"
    for rule in ("diagonal", "first"):
        target = remap_network(dense_seed, Network(stage_with_kernel(arch, 2, f"{block}_k3_g2"), 10), groups=rule)
        torch.testing.assert_close(getattr(target.stages[2][0], conv).weight,
                                   grouped_weight(getattr(dense_seed.stages[2][0], conv).weight, 2, rule))


def test_search_candidates_keep_the_seed_stages_block_type():
    from fna_ext.arch import Arch
    from fna_ext.families import get_family

    family, arch = get_family("resnet"), Arch.parse("resnet50")
    assert family.candidates(True, stage=arch.stages[1], groups=(1,)) == ("bottleneck_k3", "bottleneck_k5",
                                                                           "bottleneck_k7")
    assert family.candidates(False, stage=arch.stages[1], layer=4, kernels=(3,), groups=(1, 4)) == (
        "bottleneck_k3", "bottleneck_k3_g4", "skip")  # resnet50's second stage has 4 layers
    with pytest.raises(ValueError, match="pass stage="):
        family.candidates(True)


def narrow_seed(path, text: str) -> nn.Module:
    """A narrow ResNet seed of net_config ``text``, randomly initialised and written to ``path``:
    enough for the pipeline to run end to end in seconds."""
    torch.manual_seed(0)
    seed = RESNET.build_network(Arch.parse(text), None)
    save_weights(path, seed)
    return seed


def test_a_resnet_seed_searches_then_adapts_for_retinanet(tmp_path):
    """The pipeline with a (narrow) ResNet seed: RetinaNet's FPN on its stages, a search over
    kernels, groups and skip, then the found network remapped from the seed and fine-tuned."""
    from fna_ext.data.synthetic import generate_detection
    from fna_ext.engine.finetune import finetune
    from fna_ext.nas.search import search
    from fna_ext.tasks import get_task

    seed = narrow_seed(tmp_path / "seed.pt", "[[16, 16], ['basic_k3'], 1]|[[16, 32], ['basic_k3', 'basic_k3'], 2]|"
                                              "[[32, 64], ['basic_k3'], 2]|[[64, 64], ['basic_k3'], 2]")
    data = generate_detection(tmp_path / "coco", images=16, size=64, seed=3)
    task = get_task("coco")
    tiny = [f"data.root={data}", "data.short_side=64", "data.max_size=64", "train.batch_size=4",
            "train.num_workers=0", "train.schedule.warmup_iters=2"]
    config = task.resolve_config(task.search_preset("retinanet", synthetic=True), None,
                                 [*tiny, "train.epochs=2", "search.alpha_start_epoch=1"])
    found = search(config, seed, tmp_path / "search")
    ops = [op for stage in found.arch.stages[1:] for op in stage.ops]
    # every searched stage offers one layer past the seed's depth (skip or a block)
    assert [len(s.ops) for s in found.arch.stages] == [1, 3, 2, 2] and found.arch.family == "resnet"
    assert all(op == "skip" or RESNET.parse_op(op).block == "basic" for op in ops)
    config = task.resolve_config(task.finetune_preset("retinanet", synthetic=True), None, [*tiny, "train.epochs=1"])
    result = finetune(task, config, found.arch, tmp_path / "train", seed_weights=tmp_path / "seed.pt")
    assert 0.0 <= result.metrics["AP50"] <= 1.0


def test_count_gives_the_resnet_detectors_backbones_their_published_params():
    """torchvision's ResNet-50 without its fc has 23,508,032 parameters and ResNet-18 11,176,512."""
    from fna_ext.cli.count import count_task

    with torch.device("meta"):  # shapes only
        assert count_params(RESNET.build_network(R18, None)) == 11_176_512
    report = count_task("retinanet", R50, (256, 256))
    assert report.grouped()["backbone"][0] == 23_508_032
    assert count_task("retinanet", R18, (256, 256)).grouped()["backbone"][0] == 11_176_512


@pytest.mark.parametrize("arch", [R18, SHORT50], ids=["basic", "bottleneck"])
def test_extra_blocks_start_as_identity_residuals(arch):
    """A target deeper than the seed (one more block in stage 2, and a skip in stage 3) computes
    exactly what the seed does: the extra block is Eq. 1's copy with its last BN zeroed."""
    torch.manual_seed(0)
    seed = with_random_statistics(Network(arch, 10))
    stages = list(arch.stages)
    for index, extra in ((2, stages[2].ops[-1]), (3, "skip")):
        s = stages[index]
        stages[index] = Stage(s.in_channels, s.out_channels, (*s.ops, extra), s.stride)
    deeper = Network(Arch(stages, family="resnet"), 10).eval()
    with torch.no_grad():
        remap_network(seed, deeper)
        torch.testing.assert_close(deeper(X), seed(X), atol=1e-5, rtol=0)
    extra = deeper.stages[2][len(arch.stages[2].ops)]
    last_bn = extra.bn2 if extra.block == "basic" else extra.bn3
    assert last_bn.weight.abs().sum() == 0 and last_bn.bias.abs().sum() == 0
    assert torch.equal(extra.conv1.weight, deeper.stages[2][len(arch.stages[2].ops) - 1].conv1.weight)


def test_detection_defaults_to_retinanet_on_a_resnet_seed():
    """SSDLite reads an expansion and a head conv a ResNet lacks: without --model a ResNet seed
    gets RetinaNet, MobileNetV2 keeps SSDLite, and an explicit --model is kept (and checked)."""
    from fna_ext.cli.common import task_and_model
    from fna_ext.tasks import get_task

    task = get_task("coco")
    assert task.model_name(None, R18) == "retinanet"
    assert task.model_name(None, Arch.parse("mobilenet_v2")) == "ssdlite"
    assert task.model_name("ssdlite", R18) == "ssdlite"  # the builder then says to use retinanet
    args = type("Args", (), {"task": "coco", "model": None, "seed_arch": "resnet50"})
    assert task_and_model(args)[1] == "retinanet"
    # train's backbone is its --arch: a ResNet target gets RetinaNet whatever the seed's arch
    args.seed_arch = None
    assert task_and_model(args, R18)[1] == "retinanet" and task_and_model(args)[1] == "ssdlite"
    args.seed_arch = "resnet99"
    with pytest.raises(ValueError, match=r"^--seed-arch 'resnet99' is neither a file"):
        task_and_model(args)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_a_shared_mixture_is_the_weighted_sum_of_its_candidates(block):
    """The mixture computes the shortcut and a bottleneck's reduction once; what it returns, and
    alpha's gradient, are still sum_i w_i * candidate_i(x) + w_skip * x, in training mode (batch
    statistics) as the architecture steps run it."""
    from fna_ext.families.resnet.search_layer import SearchLayer
    from fna_ext.nas.search_space import LayerSpec

    torch.manual_seed(0)
    ops = tuple(f"{block}_k{k}{g}" for k in (3, 7) for g in ("", "_g4")) + ("skip",)
    layer = SearchLayer(LayerSpec(1, 1, 32, 32, 1, ops), "shared", affine_bn=True, bn_eps=1e-5)
    x = torch.randn(2, 32, 9, 9)
    alpha = torch.randn(len(ops), requires_grad=True)
    layer.choice = alpha.softmax(0)
    mixed = layer(x)
    (grad_mixed,) = torch.autograd.grad(mixed.square().sum(), alpha)
    expected = sum(w * layer.run_op(x, op) for w, op in zip(alpha.softmax(0), ops))
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), alpha)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(grad_mixed, grad_expected)


@needs_torchvision
def test_retinanet_r50_neck_and_head_have_torchvisions_params():
    """RetinaNet-R50 as mmdet (``add_extra_convs='on_input'``) and Detectron2 build it: laterals
    and outputs on C3-C5, P6 from C5, P7 from P6, the four-conv heads. torchvision's own FPN
    with ``LastLevelP6P7(2048, 256)`` and ``RetinaNetHead`` count the same: 37,968,692 in all."""
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

    from fna_ext.cli.count import count_task

    fpn = FeaturePyramidNetwork([512, 1024, 2048], 256, extra_blocks=LastLevelP6P7(2048, 256))
    grouped = count_task("retinanet", R50, (256, 256)).grouped()
    assert grouped["neck"][0] == count_params(fpn)
    assert grouped["head"][0] == count_params(RetinaNetHead(256, 9, 80))
    assert sum(params for params, _ in grouped.values()) == 37_968_692


def test_conv_weights_take_the_familys_preferred_layout_unless_the_config_says():
    """train.channels_last null (the default) stores a ResNet's weights contiguous and a
    MobileNetV2's NHWC; true or false is obeyed."""
    from fna_ext.engine.trainer import place_model

    def layout(net):
        conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1)
        return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()

    mobilenet = get_family("mbconv").build_network(Arch.parse("mobilenet_v2"), None)
    assert not layout(place_model(Network(R18, None), "cpu")) and layout(place_model(mobilenet, "cpu"))
    assert layout(place_model(Network(R18, None), "cpu", True))
    assert not layout(place_model(get_family("mbconv").build_network(Arch.parse("mobilenet_v2"), None), "cpu", False))


@needs_torchvision
def test_deeplabv3_on_resnet50_reads_torchvisions_dilated_layer4(tmp_path):
    """DeepLabv3 at output stride 16 on a ResNet-50 seed: the feature it reads is torchvision's
    resnet50(replace_stride_with_dilation=[False, False, True]) layer4 on the same weights (the
    independent reference for the dilated stage), and its logits come at the input size."""
    from torchvision.models._utils import IntermediateLayerGetter

    from fna_ext.families.features import extract_features
    from fna_ext.tasks import get_task

    torch.manual_seed(0)
    reference = with_random_statistics(torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]))
    torch.save(reference.state_dict(), tmp_path / "r50.pt")
    model = get_task("segmentation").build_model("deeplabv3", R50, 19, output_stride=16)
    RESNET.load_seed_weights(model.backbone, tmp_path / "r50.pt", skip_classifier=True)
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        (feature,) = extract_features(model.backbone, model.taps, x)
        expected = IntermediateLayerGetter(reference, {"layer4": "out"})(x)["out"]
        torch.testing.assert_close(feature, expected, atol=1e-4, rtol=1e-4)
        assert feature.shape == (1, 2048, 4, 6) and model(x).shape == (1, 19, 64, 96)


def test_a_resnet_seed_searches_then_adapts_for_deeplabv3plus(tmp_path):
    """Segmentation with a (narrow) ResNet seed: DeepLabv3+ reads layer1 (stride 4) and the last
    stage dilated to output stride 16, through a search over kernels, groups and skip and the
    found network's fine-tuning and evaluation."""
    from fna_ext.config import resolve
    from fna_ext.data.synthetic import generate_segmentation
    from fna_ext.engine.finetune import finetune
    from fna_ext.nas.search import search
    from fna_ext.tasks import get_task

    seed = narrow_seed(tmp_path / "seed.pt", "[[16, 16], ['basic_k3'], 1]|[[16, 32], ['basic_k3'], 2]|"
                                              "[[32, 32], ['basic_k3'], 2]|[[32, 64], ['basic_k3'], 2]")
    data = generate_segmentation(tmp_path / "city", images=30, size=64, seed=7)
    task = get_task("segmentation")
    tiny = [f"data.root={data}", "data.crop_size=[64, 64]", "data.eval_crop=[64, 64]", "train.batch_size=4",
            "train.num_workers=0", "train.epochs=2", "train.schedule.warmup_iters=2", "search.space.groups=[1, 2]"]
    config = resolve(task.search_preset("deeplabv3plus", synthetic=True), None, [*tiny, "search.alpha_start_epoch=1"])
    found = search(config, seed, tmp_path / "search")
    assert [len(s.ops) for s in found.arch.stages] == [1, 2, 2, 2] and found.arch.family == "resnet"
    config = resolve(task.finetune_preset("deeplabv3plus", synthetic=True), None,
                     [t for t in tiny if not t.startswith("search.")])
    result = finetune(task, config, found.arch, tmp_path / "train", seed_weights=tmp_path / "seed.pt")
    assert 0.0 <= result.metrics["mIoU"] <= 1.0
    model = task.build_model("deeplabv3plus", found.arch, 19)
    assert model.taps[0].stage == 0 and model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_net_config_text_names_its_family_by_its_ops():
    """A ResNet's text form reads back as a ResNet (what --arch and --seed-arch take inline);
    MobileNetV2's stays MBConv; a wrong op is reported in the grammar of the first op's family."""
    for arch in (R18, R50, Arch.parse("mobilenet_v2")):
        assert Arch.from_arg(str(arch)) == arch
    with pytest.raises(ValueError, match=r"layer 1: .*ResNet ops are"):
        Arch.parse("[[64, 64], ['basic_k3', 'k3_e6'], 1]")


def with_inner_width(arch: Arch, stage: int, percent: int) -> Arch:
    """``arch`` with every block of ``stage`` at ``percent`` of its standard inner width."""
    stages = list(arch.stages)
    ops = tuple(RESNET.parse_op(op) for op in stages[stage].ops)
    stages[stage] = Stage(stages[stage].in_channels, stages[stage].out_channels,
                          tuple(type(op)(op.block, op.kernel, op.groups, percent).name for op in ops),
                          stages[stage].stride)
    return Arch(tuple(stages), family="resnet")


@pytest.mark.parametrize("arch, percent", [(R18, 150), (SHORT50, 200)], ids=["basic", "bottleneck"])
def test_wider_inner_channels_with_zero_filled_weights_keep_the_function(arch, percent):
    """Eq. 2 for a wider target: a block's extra inner channels (conv1's outputs) get zero
    weights and BN's initial values, so they are zero after bn1 and the ReLU, and the conv that
    reads them has zero weights for them: the network computes what the seed does."""
    torch.manual_seed(0)
    seed = with_random_statistics(Network(arch, 10))
    target = Network(with_inner_width(arch, 1, percent), 10).eval()
    with torch.no_grad():
        remap_network(seed, target)
        s, t = seed.stages[1][0], target.stages[1][0]
        assert t.width == s.width * percent // 100
        assert not t.conv1.weight[s.width:].any() and torch.equal(t.conv1.weight[:s.width], s.conv1.weight)
        torch.testing.assert_close(target(X), seed(X), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["first", "bn", "l1"])
def test_narrower_inner_channels_keep_algorithm_1s_channels(mode):
    """Eq. 2 and Algorithm 1 for a narrower target: the inner channels kept are the first, or
    those of the largest |bn1 scale| or conv1 filter L1 norm, computed here from the seed, and
    every tensor they flow through (conv1 rows, bn1, conv2's rows and columns, conv3's columns)
    takes those channels in order."""
    torch.manual_seed(0)
    seed = with_random_statistics(Network(SHORT50, 10))
    target = Network(with_inner_width(SHORT50, 2, 50), 10).eval()
    remap_network(seed, target, width=mode)
    s, t = seed.stages[2][1], target.stages[2][1]
    if mode == "first":
        kept = torch.arange(t.width)
    else:
        score = s.bn1.weight.abs() if mode == "bn" else s.conv1.weight.abs().sum((1, 2, 3))
        kept = torch.topk(score, t.width).indices.sort().values
    torch.testing.assert_close(t.conv1.weight, s.conv1.weight[kept], rtol=0, atol=0)
    torch.testing.assert_close(t.bn1.running_var, s.bn1.running_var[kept], rtol=0, atol=0)
    torch.testing.assert_close(t.conv2.weight, s.conv2.weight[kept][:, kept], rtol=0, atol=0)
    torch.testing.assert_close(t.conv3.weight, s.conv3.weight[:, kept], rtol=0, atol=0)
