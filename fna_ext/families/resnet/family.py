"""The ResNet family as a :class:`~fna_ext.families.base.Family`."""

from __future__ import annotations

from torch import nn

from ..base import Family, FeatureInfo
from .op import OP_HELP, Op

SEARCH_KERNELS = (3, 5, 7)
SEARCH_GROUPS = (1, 2, 4)


def _op(op) -> Op:
    return op if isinstance(op, Op) else Op.parse(op)


class ResNetFamily(Family):
    name = "resnet"
    op_type, archs_module = Op, ".archs"
    op_help = OP_HELP

    stem_label, stem_stride = "7x7+pool", 4
    # NHWC is slower here: a ResNet-18 RetinaNet's super-network step takes 0.99 s against 0.81 s
    # contiguous, and an alpha step (grouped convs) 4.5 s against 2.8 s (2-core CPU, oneDNN)
    channels_last = False

    def build_layer(self, in_channels, out_channels, stride, op, *, dilation=1, norm_layer=None, act_layer=None,
                    bn_eps: float = 1e-5) -> nn.Module:
        from .blocks import batch_norm, make_block

        return make_block(in_channels, out_channels, stride, _op(op), dilation=dilation,
                          norm_layer=norm_layer or batch_norm(bn_eps), act_layer=act_layer)

    def build_network(self, arch, num_classes=None, **options) -> nn.Module:
        from .network import Network

        return Network(arch, num_classes, **options)

    def build_stem(self, arch, **parts) -> nn.Module:
        from .network import build_stem

        return build_stem(arch, **parts)

    def build_head(self, arch, head_channels, **parts):
        return None  # the classifier reads the last stage's pooled output; there is no head conv

    def is_block(self, module: nn.Module) -> bool:
        from .blocks import BasicBlock, Bottleneck

        return isinstance(module, (BasicBlock, Bottleneck))

    def plan_block(self, plan, seed, target, seed_prefix, target_prefix, width="first", kernel="center",
                   groups="diagonal"):
        from .remap import plan_block

        return plan_block(plan, seed, target, seed_prefix, target_prefix, width, kernel, groups)

    def plan_extra_block(self, plan, target, target_prefix):
        from .remap import start_as_identity

        start_as_identity(plan, target, target_prefix)

    def load_seed_weights(self, model, path, **options):
        from .seed_weights import load_seed_weights

        return load_seed_weights(model, path, **options)

    def candidates(self, first_layer: bool, keep_inner_width: bool = False, stage=None, *, layer=None,
                   kernels=SEARCH_KERNELS, groups=SEARCH_GROUPS, expansions=None, seed_arch=None) -> tuple[str, ...]:
        """Every kernel x group count of the stage's block type, and ``skip`` on the layers past
        the seed stage's depth (the margin a search may grow by). A ResNet block has no inner
        feature a tap reads, so ``keep_inner_width`` removes nothing. The block type is never
        searched, nor is the inner width (``_w``): the seed's stage keeps its own, and remaps only
        within its block type."""
        if expansions:
            raise ValueError("search.space.expansions is an MBConv axis; a ResNet block has none (leave it null)")
        if stage is None:  # guessing a block type would remap bottlenecks into basic blocks
            raise ValueError("the ResNet family offers the seed stage's own block type: pass stage=")
        first = self.parse_op(stage.ops[0])
        ops = tuple(Op(first.block, k, g, first.width).name for k in kernels for g in groups)
        if not ops:
            raise ValueError("search.space leaves no ResNet candidate: give it kernels and groups")
        extra = layer is not None and layer >= len(stage.ops) and not first_layer
        return ops + ("skip",) if extra else ops

    def max_depths(self, seed_arch, space) -> tuple[int, ...]:
        """The seed's depth plus ``space.depth_margin`` in every searched stage: FNA's depths are
        MobileNetV2's, and a ResNet stage has its own."""
        return tuple(len(stage.ops) + space.depth_margin for stage in seed_arch.stages[1:])

    def widest_op(self, candidates) -> str:
        """The dense block of the largest kernel: every grouped or smaller candidate slices it."""
        ops = [self.parse_op(name) for name in candidates if name != "skip"]
        return Op(ops[0].block, max(op.kernel for op in ops), 1, ops[0].width).name

    def search_layer(self, spec, *, weight_sharing, affine_bn, bn_eps, groups="diagonal"):
        from .search_layer import SearchLayer

        return SearchLayer(spec, weight_sharing, affine_bn, bn_eps, groups)

    def op_madds(self, in_channels, out_channels, op, stride, input_size, dilation=1) -> int:
        from .cost import block_madds

        return block_madds(in_channels, out_channels, _op(op), stride, input_size)

    def feature_info(self, arch, head_channels=None, output_stride=None) -> list[FeatureInfo]:
        """Each stage's output at its stride (counting the stem's 4); no ``expand`` and no ``head``
        features. Under ``output_stride`` a dilated stage keeps the stride it starts at."""
        from ...arch import stage_geometry
        from .network import STEM_STRIDE

        features, stride = [], STEM_STRIDE
        for i, (stage, geometry) in enumerate(zip(arch.stages, stage_geometry(arch, output_stride, STEM_STRIDE))):
            stride *= geometry.stride
            features.append(FeatureInfo("stage", i, stride, stage.out_channels))
        return features


RESNET = ResNetFamily()
