"""The ResNet family's op grammar: ``{block}_k{K}``.

- ``basic_k{K}``: torchvision's BasicBlock with both of its convs K x K (``basic_k3`` is ResNet-18/34's);
- ``bottleneck_k{K}``: torchvision's Bottleneck (1x1 reduce, K x K, 1x1 expand by 4) with a K x K
  middle conv (``bottleneck_k3`` is ResNet-50's).

K is odd, so a K x K conv keeps the centre tap and remapping can centre one kernel in another. A
stage's C_out is the block's output channels (4x the bottleneck width). FNA++'s ResNet search space
lists no skip op, so the grammar has none."""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCKS = ("basic", "bottleneck")
OP_HELP = ("ResNet ops are {basic|bottleneck}_k{odd kernel} (for example basic_k3, bottleneck_k5); "
           "there is no skip")
# ASCII digits without leading zeros: an op has one spelling, so text round-trips
_OP_RE = re.compile(r"(basic|bottleneck)_k([1-9][0-9]*)")


@dataclass(frozen=True)
class Op:
    block: str
    kernel: int

    is_skip = False  # every ResNet op is a block with weights

    @property
    def name(self) -> str:
        return f"{self.block}_k{self.kernel}"

    @classmethod
    def parse(cls, name: str) -> "Op":
        match = _OP_RE.fullmatch(name) if isinstance(name, str) else None
        if not match or int(match[2]) % 2 == 0:
            raise ValueError(f"unknown op {name!r}; {OP_HELP}")
        return cls(match[1], int(match[2]))
