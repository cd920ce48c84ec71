"""FNA's super network: the seed's fixed parts (stem, the k3_e1 stage, the head conv) and, per
searched layer, a choice among the candidate ops of a :class:`~fna_ext.nas.search_space.SearchSpace`.

Two weight modes:

- ``shared`` (default): one max-size MBConv (7x7 depthwise, expansion 6) per layer; a candidate
  (k, e) is the centre k x k and the first e * C_in hidden channels of it (Once-for-All style), run
  through :func:`fna_ext.ops.sampled_mbconv`;
- ``independent``: every candidate has its own weights, as published.

Either way the initial state is the remapped seed: each candidate equals what the paper's
remapping gives for it (the max-size weight holds the remapped k7_e6 candidate, whose centre
slices are exactly the remapped smaller candidates under the ``first`` width rule).

Candidate BNs are non-affine and use batch statistics (as published); ``affine_bn=True`` gives
them trainable affine parameters (sliced in shared mode). A layer runs either one op (``path``
mode, the weight steps) or the softmax(alpha)-weighted sum of all its ops (``mixture`` mode, the
architecture steps); the search sets the mode before each forward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import Arch, Stage, stage_geometry
from ..families import ARCH_HEAD, get_family
from ..remap import plan_candidates
from .search_space import LayerSpec, SearchSpace, layer_specs  # noqa: F401  (LayerSpec re-exported)

WEIGHT_MODES = ("shared", "independent")


class SuperNetwork(nn.Module):
    """Stem, the fixed first stage, the searched layers (``stages[i][j]`` are SearchLayers) and the
    head conv, laid out like :class:`~fna_ext.families.mbconv.Network` so detectors tap it the same way."""

    def __init__(self, seed_arch: Arch, space: SearchSpace, *, seed: nn.Module | None = None,
                 weight_sharing: str = "shared", affine_bn: bool = False, head_channels: int | str | None = ARCH_HEAD,
                 bn_eps: float = 1e-5, width: str = "first", kernel: str = "center", output_stride: int | None = None,
                 groups: str = "diagonal"):
        super().__init__()
        if weight_sharing not in WEIGHT_MODES:
            raise ValueError(f"weight_sharing must be one of {WEIGHT_MODES}, got {weight_sharing!r}")
        self.seed_arch, self.space, self.weight_sharing = seed_arch, space, weight_sharing
        self.family = family = get_family(seed_arch.family)
        self.output_stride = output_stride  # a dense task's: later strides become dilations
        self.specs = layer_specs(seed_arch, space, output_stride)
        first_geometry = stage_geometry(seed_arch, output_stride)[0]
        self.stem = family.build_stem(seed_arch, bn_eps=bn_eps)
        first = seed_arch.stages[0]
        stages = [nn.Sequential(*(family.build_layer(c_in, c_out, first_geometry.stride if j == 0 else 1, op,
                                                     dilation=first_geometry.first_dilation if j == 0
                                                     else first_geometry.dilation, bn_eps=bn_eps)
                                  for j, (c_in, c_out, _, op) in enumerate(first.layers(seed_arch.family))))]
        for i in range(1, len(seed_arch.stages)):
            stages.append(nn.Sequential(*(family.search_layer(spec, weight_sharing=weight_sharing, affine_bn=affine_bn,
                                                              bn_eps=bn_eps, groups=groups)
                                          for spec in self.specs if spec.stage == i)))
        self.stages = nn.ModuleList(stages)
        self.head = family.build_head(seed_arch, head_channels, bn_eps=bn_eps)
        # the widest choice of every layer: what a task reads its features' channels from
        self.arch = seed_arch.with_stages([first] + [Stage(s.in_channels, s.out_channels,
                                                           tuple(family.widest_op(spec.candidates) for spec in self.specs
                                                                 if spec.stage == i), s.stride)
                                                     for i, s in enumerate(seed_arch.stages[1:], start=1)])
        if seed is not None:
            self._load_seed(seed, width, kernel, groups)

    def search_layers(self) -> list[nn.Module]:
        return [m for stage in self.stages[1:] for m in stage]

    # -- choosing what runs
    def set_path(self, ops: list[str]) -> None:
        layers = self.search_layers()
        if len(ops) != len(layers):
            raise ValueError(f"a path needs {len(layers)} ops, got {len(ops)}")
        for layer, op in zip(layers, ops):
            if op not in layer.spec.candidates:
                raise ValueError(f"layer {layer.spec.key}: {op!r} is not a candidate {layer.spec.candidates}")
            layer.choice = op

    def set_mixture(self, weights: list[torch.Tensor]) -> None:
        for layer, w in zip(self.search_layers(), weights, strict=True):
            layer.choice = w

    # -- running
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x) if self.head is not None else x

    # -- the remapped seed as initial state
    def _load_seed(self, seed: nn.Module, width: str, kernel: str, groups: str = "diagonal") -> None:
        """Copies the fixed parts and remaps every candidate from ``seed`` (Eq. 1-3 through the
        family's ``plan_block``); candidate BNs keep no statistics, so the seed's are not copied."""
        if seed.arch.stages[0] != self.seed_arch.stages[0] or len(seed.stages) != len(self.stages):
            raise ValueError(f"the seed network ({seed.arch}) is not built from the super network's "
                             f"seed arch ({self.seed_arch})")
        with torch.no_grad():
            self.stem.load_state_dict(seed.stem.state_dict())
            self.stages[0].load_state_dict(seed.stages[0].state_dict())
            if self.head is not None and seed.head is not None:
                self.head.load_state_dict(seed.head.state_dict())
        blocks = nn.ModuleDict({f"{layer.spec.key}_{name}": block for layer in self.search_layers()
                                for name, block in layer.blocks.items()})
        plan_candidates(seed, blocks, width, kernel, groups).apply(seed, blocks)

    # -- derivation
    def derive(self, ops: list[str]) -> Arch:
        """The target Arch that takes ``ops`` (one per searched layer) on the seed's stages."""
        return derive_arch(self.seed_arch, [layer.spec for layer in self.search_layers()], ops)


def derive_arch(seed_arch: Arch, specs, ops: list[str]) -> Arch:
    """The Arch that takes ``ops[i]`` at searched layer ``specs[i]`` on the seed's stages (the
    first stage is not searched): what a search derives, or a random architecture of its space."""
    specs = list(specs)
    if len(ops) != len(specs):
        raise ValueError(f"derivation needs {len(specs)} ops, got {len(ops)}")
    stages = [seed_arch.stages[0]]
    for i, stage in enumerate(seed_arch.stages[1:], start=1):
        stage_ops = tuple(op for spec, op in zip(specs, ops) if spec.stage == i)
        stages.append(Stage(stage.in_channels, stage.out_channels, stage_ops, stage.stride))
    return seed_arch.with_stages(stages)
