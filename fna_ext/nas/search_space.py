"""FNA's search spaces as data (REFERENCE.md): which stages are searched and how deep each may
grow (a task's choice for MobileNetV2-like seeds; the seed's depth plus a margin for families
that say so), with the candidate ops of each layer coming from the seed's family, drawn from the
space's kernel sizes and group counts (``search.space`` in a config)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..arch import Arch, stage_geometry
from ..families import get_family


@dataclass(frozen=True)
class SearchSpace:
    name: str
    max_depths: tuple[int, ...]  # per searched stage: every stage of the seed but the first
    # searched stages whose first layer's inner width a model reads: SSDLite taps that layer's
    # expansion output (576 channels in MobileNetV2), so only candidates of that width are offered
    keep_width_first_layers: tuple[int, ...] = ()
    kernels: tuple[int, ...] = (3, 5, 7)  # the K x K sizes candidates may take
    groups: tuple[int, ...] = (1,)        # group counts of a family's grouped convs (ResNet)
    depth_margin: int = 1                 # layers past the seed's, for families that grow from it
    expansions: tuple | None = None       # MBConv expansions (None: the family's rule from the seed)
    # the first searched stage at this output stride keeps its first layer's inner width, as
    # keep_width_first_layers does by index (SSDLite taps it, whatever the seed's stage count)
    keep_width_stride: int | None = None

    def with_settings(self, space: dict | None) -> "SearchSpace":
        """This space with a config's ``search.space`` section (kernels, groups, depth_margin)."""
        if not space:
            return self
        expansions = space.get("expansions")
        return replace(self, kernels=tuple(space["kernels"]), groups=tuple(space["groups"]),
                       depth_margin=int(space["depth_margin"]),
                       expansions=tuple(expansions) if expansions else None)

    def keeps_width(self, stage: int, seed_arch: Arch | None) -> bool:
        """Whether searched stage ``stage``'s first layer keeps its inner width."""
        if self.keep_width_stride is None or seed_arch is None:
            return stage in self.keep_width_first_layers
        stride = 2  # the stem's
        for i, arch_stage in enumerate(seed_arch.stages):
            stride *= arch_stage.stride
            if stride == self.keep_width_stride:
                return i == stage + 1
        return False

    def candidates(self, stage: int, layer: int, family: str | None = None, seed_stage=None,
                   seed_arch: Arch | None = None) -> tuple[str, ...]:
        """Ops layer ``layer`` of searched stage ``stage`` (0-based) may take, in ``family``'s
        grammar (default: mbconv); ``seed_stage`` (the seed's Stage) lets a family with several
        block types offer the stage's own, and skip past the seed's depth; ``seed_arch`` lets a
        family draw the space's axes from the seed (an MBConv seed's expansions). A stage's first
        layer changes channels or stride."""
        axes = {"expansions": self.expansions, "seed_arch": seed_arch} if seed_arch is not None else {}
        return get_family(family).candidates(layer == 0, layer == 0 and self.keeps_width(stage, seed_arch),
                                             stage=seed_stage, layer=layer, kernels=self.kernels,
                                             groups=self.groups, **axes)




@dataclass(frozen=True)
class LayerSpec:
    stage: int           # index in the seed arch (searched stages start at 1)
    layer: int           # index within the stage
    in_channels: int
    out_channels: int
    stride: int
    candidates: tuple[str, ...]
    dilation: int = 1    # > 1 where a dense task's output stride turned the stage's stride into dilation

    @property
    def key(self) -> str:
        return f"s{self.stage}_l{self.layer}"


def layer_specs(seed_arch: Arch, space: SearchSpace, output_stride: int | None = None) -> list[LayerSpec]:
    """Every searched layer of ``seed_arch`` in ``space``; under ``output_stride`` the stages past
    it run at stride 1 with dilation (:func:`fna_ext.arch.stage_geometry`)."""
    max_depths = get_family(seed_arch.family).max_depths(seed_arch, space)
    if len(seed_arch.stages) - 1 != len(max_depths):
        raise ValueError(f"the {space.name} space searches {len(max_depths)} stages; the seed "
                         f"has {len(seed_arch.stages) - 1} after its first")
    specs, geometry = [], stage_geometry(seed_arch, output_stride)
    for i, (stage, depth) in enumerate(zip(seed_arch.stages[1:], max_depths), start=1):
        for layer in range(depth):
            specs.append(LayerSpec(i, layer, stage.in_channels if layer == 0 else stage.out_channels,
                                   stage.out_channels, geometry[i].stride if layer == 0 else 1,
                                   space.candidates(i - 1, layer, seed_arch.family, stage, seed_arch),
                                   geometry[i].first_dilation if layer == 0 else geometry[i].dilation))
    return specs
