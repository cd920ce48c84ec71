"""The MBConv family as a :class:`~fna_ext.families.base.Family`."""

from __future__ import annotations

from torch import nn

from ..base import Family, FeatureInfo
from .op import Op


# the embedded default's search settings for NAS seeds, relative to the task's (see
# MBConvFamily.adjust_embedded_search)
NAS_SEED_LAMBDA_FACTOR = 1 / 3
NAS_SEED_ALPHA_INTERVAL = 2


class MBConvFamily(Family):
    name = "mbconv"
    op_type, archs_module = Op, ".archs"
    op_help = ("ops are k{3,5,7}_e{expansion}[_pw][_se{R}|_hse{R}][_re|_hs|_sw] (for example k3_e6, k5_e3, "
               "k5_e6_se0.25_sw) or skip")

    def check_fixed(self, fixed: dict) -> dict:
        from .fixed import check_fixed

        return check_fixed(fixed)

    def default_head_channels(self, arch) -> int | None:
        from .fixed import DEFAULTS

        return arch.fixed.get("head", DEFAULTS["head"])

    def build_layer(self, in_channels, out_channels, stride, op, *, dilation=1, norm_layer=None, act_layer=None,
                    bn_eps: float = 1e-5) -> nn.Module:
        from .blocks import make_layer

        op = op if isinstance(op, Op) else Op.parse(op)
        return make_layer(in_channels, out_channels, stride, op, bn_eps, dilation, norm_layer, act_layer)

    def build_network(self, arch, num_classes=None, **options) -> nn.Module:
        from .network import Network

        return Network(arch, num_classes, **options)

    def build_stem(self, arch, **parts) -> nn.Module:
        from .network import build_stem

        return build_stem(arch, **parts)

    def build_head(self, arch, head_channels, **parts):
        from .network import build_head

        return build_head(arch, head_channels, **parts)

    def is_block(self, module: nn.Module) -> bool:
        from .blocks import MBConv

        return isinstance(module, MBConv)

    def plan_block(self, plan, seed, target, seed_prefix, target_prefix, width="first", kernel="center",
                   groups="diagonal"):  # an MBConv's depthwise conv is grouped by definition: no group rule
        from .remap import plan_block

        return plan_block(plan, seed, target, seed_prefix, target_prefix, width, kernel)

    def activation_change(self, seed_block, target_block):
        from .remap import activation_change

        return activation_change(seed_block, target_block)

    def fixed_activation(self, arch):
        return arch.fixed.get("act", "")

    def seed_bn_eps(self, path) -> float:
        from .seed_weights import seed_bn_eps

        return seed_bn_eps(path)

    def load_seed_weights(self, model, path, **options):
        from .seed_weights import load_seed_weights

        return load_seed_weights(model, path, **options)

    def candidates(self, first_layer: bool, keep_inner_width: bool = False, stage=None, *, layer=None,
                   kernels=(3, 5, 7), groups=(1,), expansions=None, seed_arch=None) -> tuple[str, ...]:
        # a depthwise conv has no group count to choose
        from .candidates import layer_candidates

        return layer_candidates(first_layer, keep_inner_width, stage, layer, kernels, expansions, seed_arch)

    def max_depths(self, seed_arch, space) -> tuple[int, ...]:
        """The task space's depths where the seed has the stages they were written for (FNA's are
        MobileNetV2's; the NAS seeds with 7 stages fit them too, none deeper than 4 where FNA
        allows 4); for a seed of another stage count (MobileNetV3), its depths plus
        ``space.depth_margin``."""
        searched = seed_arch.stages[1:]
        if len(searched) != len(space.max_depths):
            return tuple(len(stage.ops) + space.depth_margin for stage in searched)
        return tuple(space.max_depths)

    def adjust_embedded_search(self, search: dict, seed_arch) -> dict:
        """A NAS seed's embedded-default search: a third of the task's lambda, and an alpha step
        every other weight step. Those presets were sized on MobileNetV2, a hand-made network the
        cost term may halve; a network found by NAS under a cost already sits near its task's
        trade-off, and the same push cut MobileNetV3-Large's backbone to a third of its MAdds and
        cost 0.15 AP50 on the synthetic detection task. Its mixtures are also twice as many
        candidates, each with an SE, so alpha steps cost twice as much (benchmarks/RESULTS.md)."""
        from .candidates import is_nas_seed

        if not is_nas_seed(seed_arch):
            return search
        return {**search, "lambda": float(f"{search['lambda'] * NAS_SEED_LAMBDA_FACTOR:.6g}"),
                "weight_steps_per_alpha_step": search["weight_steps_per_alpha_step"] * NAS_SEED_ALPHA_INTERVAL}

    def widest_op(self, candidates) -> str:
        from .candidates import widest_op

        return widest_op(candidates)

    def search_layer(self, spec, *, weight_sharing, affine_bn, bn_eps, groups="diagonal"):
        from .search_layer import SearchLayer

        return SearchLayer(spec, weight_sharing, affine_bn, bn_eps)

    def op_madds(self, in_channels, out_channels, op, stride, input_size, dilation=1) -> int:
        from .cost import mbconv_madds

        op = op if isinstance(op, Op) else Op.parse(op)
        if op.is_skip:
            return 0
        return mbconv_madds(in_channels, out_channels, op, stride, input_size, dilation)

    def feature_info(self, arch, head_channels=None, output_stride=None) -> list[FeatureInfo]:
        """Each stage's output, each stage's first-layer expansion (at the stage's input stride:
        the depthwise conv has not strided yet) and the head conv's output. Strides count the
        stem's 2; under ``output_stride`` a dilated stage keeps the stride it starts at."""
        from ...arch import stage_geometry

        features, stride = [], 2
        for i, (stage, geometry) in enumerate(zip(arch.stages, stage_geometry(arch, output_stride))):
            first = Op.parse(stage.ops[0])
            if first.has_expand:
                features.append(FeatureInfo("expand", i, stride, first.hidden_channels(stage.in_channels)))
            stride *= geometry.stride
            features.append(FeatureInfo("stage", i, stride, stage.out_channels))
        head_channels = self.head_width(arch, head_channels)
        if head_channels:
            features.append(FeatureInfo("head", None, stride, head_channels))
        return features


MBCONV = MBConvFamily()
