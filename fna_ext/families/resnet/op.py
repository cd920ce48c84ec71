"""The ResNet family's op grammar: ``{block}_k{K}[_g{G}][_w{P}]`` and ``skip``.

- ``basic_k{K}``: torchvision's BasicBlock with both of its convs K x K (``basic_k3`` is ResNet-18/34's);
- ``bottleneck_k{K}``: torchvision's Bottleneck (1x1 reduce, K x K, 1x1 expand by 4) with a K x K
  middle conv (``bottleneck_k3`` is ResNet-50's);
- ``_g{G}``: the K x K conv(s) in G groups (ResNeXt's grouped conv; G = 1 is written without it,
  so an op has one spelling and text round-trips);
- ``_w{P}``: the block's inner channels (conv1's outputs) at P percent of the standard width (the
  stage's C_out for a BasicBlock, C_out / 4 for a Bottleneck); P = 100 is written without it.
  torchvision's wide_resnet50_2 is ``bottleneck_k3_w200`` and resnext50_32x4d
  ``bottleneck_k3_g32_w200``. The search keeps the seed's width; width remapping (Eq. 2,
  Algorithm 1) fills a target of another width;
- ``skip``: the identity, for the extra layers a search may add past the seed's depth (never a
  stage's first layer, which changes channels or stride).

K is odd, so a K x K conv keeps the centre tap and remapping can centre one kernel in another. A
stage's C_out is the block's output channels (4x the bottleneck width)."""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCKS = ("basic", "bottleneck")
OP_HELP = ("ResNet ops are {basic|bottleneck}_k{odd kernel}[_g{groups of 2 or more}][_w{inner width in percent, "
           "not 100}] (for example basic_k3, bottleneck_k5_g4, bottleneck_k3_w200) or skip")
# ASCII digits without leading zeros, and no _g1 or _w100: an op has one spelling, so text round-trips
_OP_RE = re.compile(r"(basic|bottleneck)_k([1-9][0-9]*)(?:_g([2-9]|[1-9][0-9]+))?(?:_w([1-9][0-9]*))?")


@dataclass(frozen=True)
class Op:
    block: str
    kernel: int
    groups: int = 1
    width: int = 100  # the inner channels, in percent of the block type's standard width

    @property
    def is_skip(self) -> bool:
        return self.block == "skip"

    @property
    def name(self) -> str:
        if self.is_skip:
            return "skip"
        return (f"{self.block}_k{self.kernel}" + (f"_g{self.groups}" if self.groups > 1 else "")
                + (f"_w{self.width}" if self.width != 100 else ""))

    @classmethod
    def parse(cls, name: str) -> "Op":
        if name == "skip":
            return SKIP
        match = _OP_RE.fullmatch(name) if isinstance(name, str) else None
        if not match or int(match[2]) % 2 == 0 or match[4] == "100":
            raise ValueError(f"unknown op {name!r}; {OP_HELP}")
        return cls(match[1], int(match[2]), int(match[3] or 1), int(match[4] or 100))


SKIP = Op("skip", 0)
