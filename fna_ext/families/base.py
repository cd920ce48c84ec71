"""What a seed family gives the rest of fna_ext.

A family is the kind of block a seed network is made of (MBConv for MobileNetV2 and the NAS-found
networks; basic and bottleneck blocks for ResNets). Remapping, the super network, the cost table
and the tasks' feature taps know blocks only through :class:`Family`: its op grammar, how to build
a layer and a network, how to remap one block into another, its candidates and searched layer, the
cost of one op, and which features its networks offer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One feature a network of the family offers, as timm's ``feature_info`` declares them:
    ``kind`` is ``stage`` (a stage's output), ``expand`` (the inner features of a stage's first
    layer, before its stride takes effect where the block allows) or ``head`` (the head conv's
    output); ``stride`` counts from the input image."""

    kind: str
    stage: int | None
    stride: int
    channels: int

    @property
    def name(self) -> str:
        return self.kind if self.stage is None else f"{self.kind}:{self.stage}"


# head_channels="arch": the head conv the arch itself declares (Family.default_head_channels)
ARCH_HEAD = "arch"


class Family:
    """The interface of a seed family. Subclasses set ``name`` and implement every method."""

    name: str = ""
    op_help: str = ""  # the op grammar, for error messages
    stem_label, stem_stride = "3x3", 2  # how the stem is drawn, and the stride it takes
    op_type: type | None = None   # the family's op class, with ``parse(name)``
    archs_module: str = ""        # the module (relative to the family's package) with NAMED_ARCHS
    # whether its networks train faster with NHWC conv weights (``train.channels_last: null``)
    channels_last: bool = True

    # -- the op grammar -------------------------------------------------------------------
    def parse_op(self, name: str):
        """The op ``name`` stands for (an object with ``name`` and ``is_skip``); ValueError
        (with :attr:`op_help`) when the grammar does not admit it."""
        return self.op_type.parse(name)

    def check_fixed(self, fixed: dict) -> dict:
        """An arch's fixed-part settings in their canonical form (keys in the family's order,
        defaults left out); ValueError naming the key when one is not the family's. A family
        without such settings takes none."""
        if fixed:
            raise ValueError(f"the {self.name} family's fixed parts take no settings, got {sorted(fixed)}")
        return {}

    def default_head_channels(self, arch) -> int | None:
        """The width of ``arch``'s own head conv; None: the family's networks have none."""
        return None

    def head_width(self, arch, head_channels: int | str | None) -> int | None:
        """``head_channels``, or for :data:`ARCH_HEAD` the arch's own head width."""
        return self.default_head_channels(arch) if head_channels == ARCH_HEAD else head_channels

    def named_archs(self) -> dict[str, Callable]:
        """{name: function returning the Arch} of the family's named architectures."""
        if not self.archs_module:
            return {}
        package = type(self).__module__.rpartition(".")[0]
        return importlib.import_module(self.archs_module, package).NAMED_ARCHS

    # -- building ---------------------------------------------------------------------------
    def build_layer(self, in_channels: int, out_channels: int, stride: int, op, *, dilation: int = 1,
                    norm_layer: Callable[[int], nn.Module] | None = None,
                    act_layer: Callable[[], nn.Module] | None = None) -> nn.Module:
        """One layer taking ``op``; ``norm_layer(channels)`` and ``act_layer()`` build its norm
        and activation (default: the family's own)."""
        raise NotImplementedError

    def build_network(self, arch, num_classes: int | None = None, **options) -> nn.Module:
        raise NotImplementedError

    def build_stem(self, arch, **parts) -> nn.Module:
        """The network's fixed input part (``parts``: ``bn_eps``, ``norm_layer``, ``act_layer``)."""
        raise NotImplementedError

    def build_head(self, arch, head_channels: int | None, **parts) -> nn.Module | None:
        """The network's fixed part after the last stage (None when it has none)."""
        raise NotImplementedError

    def is_block(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of the family's blocks (a layer with parameters to remap)."""
        raise NotImplementedError

    # -- remapping ----------------------------------------------------------------------------
    def plan_extra_block(self, plan, target: nn.Module, target_prefix: str) -> None:
        """Adjusts the maps of a target block past the seed stage's depth, which Eq. 1 filled
        from the seed's last block (by default, nothing changes)."""

    def plan_block(self, plan, seed: nn.Module, target: nn.Module, seed_prefix: str, target_prefix: str,
                   width: str = "first", kernel: str = "center", groups: str = "diagonal"):
        """Adds to ``plan`` the maps that remap block ``seed`` into block ``target`` (``groups``:
        the rule between grouped and dense convs, for families that have them)."""
        raise NotImplementedError

    def activation_change(self, seed_block: nn.Module, target_block: nn.Module) -> str | None:
        """What remapping ``seed_block`` into ``target_block`` cannot carry over unchanged (MBConv:
        another activation or SE gate), in words; None where nothing (the default)."""
        return None

    def fixed_activation(self, arch):
        """The same for the stem and head (MBConv: ``arch.fixed['act']``)."""
        return None

    def seed_bn_eps(self, path) -> float:
        """The BatchNorm eps the weights in ``path`` were trained with, chosen when the seed
        network is built (default: PyTorch's 1e-5)."""
        return 1e-5

    def load_seed_weights(self, model: nn.Module, path, **options):
        """Copies a pretrained weight file (the layouts the family knows) into ``model``."""
        raise NotImplementedError

    # -- the search ---------------------------------------------------------------------------
    def candidates(self, first_layer: bool, keep_inner_width: bool = False, stage=None, *, layer: int | None = None,
                   kernels=(3, 5, 7), groups=(1,), expansions=None, seed_arch=None) -> tuple[str, ...]:
        """The candidate ops of a searched layer: a stage's first layer changes channels or
        resolution (no skip); ``keep_inner_width`` keeps only ops whose inner width a model's
        feature tap can read unchanged. ``stage`` (the seed's :class:`~fna_ext.arch.Stage`, where
        the caller has it) lets a family with more than one block type offer the stage's own,
        and ``layer`` (the layer's index in it) skip past its depth. ``kernels`` and ``groups``
        are the space's axes, for the family to draw from; ``expansions`` (MBConv's axis, None for
        the family's rule) and ``seed_arch`` (the whole seed) let a family take them from the seed."""
        raise NotImplementedError

    def max_depths(self, seed_arch, space) -> tuple[int, ...]:
        """How deep each searched stage (every stage of the seed but the first) may grow: the
        space's own depths by default (FNA's, written for MobileNetV2)."""
        return tuple(space.max_depths)

    def adjust_embedded_search(self, search: dict, seed_arch) -> dict:
        """The ``search`` section of a task's embedded-default preset, adjusted for a seed of
        ``seed_arch`` (the presets are sized on the task's default seed): a new dict, or
        ``search`` itself when the seed needs nothing else. Published presets are not adjusted,
        and the user's settings come after."""
        return search

    def widest_op(self, candidates) -> str:
        """The candidate whose weights hold every other's (the shared max-size weight)."""
        raise NotImplementedError

    def search_layer(self, spec, *, weight_sharing: str, affine_bn: bool, bn_eps: float,
                     groups: str = "diagonal") -> nn.Module:
        """The searched layer of ``spec``: its candidates over shared or independent weights
        (``groups``: how a shared dense weight serves grouped candidates, for families that have them)."""
        raise NotImplementedError

    # -- cost and features ------------------------------------------------------------------
    def op_madds(self, in_channels: int, out_channels: int, op, stride: int, input_size: tuple[int, int],
                 dilation: int = 1) -> int:
        """The multiply-adds of one layer taking ``op`` at ``input_size``."""
        raise NotImplementedError

    def feature_info(self, arch, head_channels: int | None = None) -> list[FeatureInfo]:
        """Every feature a network of ``arch`` offers (see :class:`FeatureInfo`)."""
        raise NotImplementedError
