"""The MBConv family's candidate ops (FNA's search space: kernels 3, 5, 7 and expansions 3, 6)."""

from __future__ import annotations

from torch import nn

from ...arch import Arch
from .blocks import MBConv
from .op import Op

MBCONV_CANDIDATES = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6")


def candidate_blocks(seed_arch: Arch, space, bn_eps: float = 1e-5) -> nn.ModuleDict:
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
