"""FNA's search spaces as data (REFERENCE.md): which stages are searched, how deep each may grow,
and the candidate ops of each layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..arch import Arch, Op
from ..families.mbconv import MBConv

MBCONV_CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    max_depths: tuple[int, ...]  # per searched stage: every stage of the seed but the first
    # searched stages whose first layer offers only expansion-6 ops: SSDLite taps that layer's
    # expansion output (576 channels in MobileNetV2), so its width must not change
    e6_first_layer_stages: tuple[int, ...] = ()

    def candidates(self, stage: int, layer: int) -> tuple[str, ...]:
        """Ops layer ``layer`` of searched stage ``stage`` (0-based) may take."""
        if layer == 0:
            # a stage's first layer changes channels or stride: no skip
            if stage in self.e6_first_layer_stages:
                return tuple(op for op in MBCONV_CANDIDATES if op.endswith("_e6"))
            return MBCONV_CANDIDATES
        return MBCONV_CANDIDATES + ("skip",)


DETECTION = SearchSpace("detection", (4, 4, 4, 4, 4, 1))
SSDLITE = SearchSpace("ssdlite", (4, 4, 4, 4, 4, 1), e6_first_layer_stages=(4,))
SEGMENTATION = SearchSpace("segmentation", (4, 4, 6, 6, 4, 1))
SPACES = {"retinanet": DETECTION, "ssdlite": SSDLITE, "detection": DETECTION, "segmentation": SEGMENTATION}


def candidate_blocks(seed_arch: Arch, space: SearchSpace, bn_eps: float = 1e-5) -> nn.ModuleDict:
    """One MBConv per candidate op of every searched layer, keyed ``s{stage}_l{layer}_{op}``
    (stage counted in the seed arch): the weights of a super network whose candidates each have
    their own parameters."""
    if len(seed_arch.stages) - 1 != len(space.max_depths):
        raise ValueError(f"the {space.name} space searches {len(space.max_depths)} stages; the seed "
                         f"has {len(seed_arch.stages) - 1} after its first")
    blocks = nn.ModuleDict()
    for i, (stage, depth) in enumerate(zip(seed_arch.stages[1:], space.max_depths), start=1):
        for layer in range(depth):
            c_in = stage.in_channels if layer == 0 else stage.out_channels
            stride = stage.stride if layer == 0 else 1
            for name in space.candidates(i - 1, layer):
                op = Op.parse(name)
                if not op.is_skip:
                    blocks[f"s{i}_l{layer}_{name}"] = MBConv(c_in, stage.out_channels, op.kernel,
                                                             op.expansion, stride, bn_eps=bn_eps)
    return blocks
