"""The MBConv family's op grammar: ``k{K}_e{E}`` (an MBConv block with a KxK depthwise conv and
expansion E) and ``skip`` (identity)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SKIP = "skip"
# ASCII digits without leading zeros: an op has one spelling, so text round-trips
_OP_RE = re.compile(r"k([1-9][0-9]*)_e([1-9][0-9]*)")
# FNA's search space and every published MBConv seed (MobileNetV2, MnasNet, FBNet, ProxylessNAS,
# MobileNetV3, EfficientNet) use these; the fused CPU and CUDA kernels are built for exactly them
KERNEL_SIZES = (3, 5, 7)


@dataclass(frozen=True)
class Op:
    """One layer's operation: an MBConv block (kernel, expansion) or a skip."""

    kernel: int = 0
    expansion: int = 0

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0

    @property
    def name(self) -> str:
        return SKIP if self.is_skip else f"k{self.kernel}_e{self.expansion}"

    @classmethod
    def parse(cls, name: str) -> "Op":
        if name == SKIP:
            return cls()
        match = _OP_RE.fullmatch(name) if isinstance(name, str) else None
        if not match or int(match[1]) not in KERNEL_SIZES or int(match[2]) < 1:
            raise ValueError(f"unknown op {name!r}; ops are k{{3,5,7}}_e{{expansion >= 1}} "
                             "(for example k3_e6, k5_e3, k7_e6) or skip")
        return cls(int(match[1]), int(match[2]))
