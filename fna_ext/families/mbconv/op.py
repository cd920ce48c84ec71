"""The MBConv family's op grammar: ``k{K}_e{E}`` (an MBConv block with a KxK depthwise conv and
expansion E) and ``skip`` (identity)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SKIP = "skip"
_OP_RE = re.compile(r"^k(\d+)_e(\d+)$")


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
        match = _OP_RE.match(name) if isinstance(name, str) else None
        if not match or int(match[1]) % 2 == 0 or int(match[2]) < 1:
            raise ValueError(f"unknown op {name!r}; ops are k{{odd kernel}}_e{{expansion}} "
                             "(for example k3_e6, k5_e3, k7_e6) or skip")
        return cls(int(match[1]), int(match[2]))
