"""The MBConv family's op grammar.

An op is ``skip`` (identity) or ``k{K}_e{E}`` followed by optional attributes, always in this order:

- ``k{K}``: the depthwise kernel, 3, 5 or 7;
- ``e{E}``: the expansion ratio, an integer (``e6``: ``C_in * 6`` hidden channels) or a decimal
  (``e2.5``: ``C_in * 2.5`` rounded to a multiple of 8, as timm and torchvision round
  MobileNetV3's); ``e1`` has no expand conv (a depthwise-separable block);
- ``_pw``: keep the 1x1 expand conv at ``e1`` (FBNet's inverted residuals of expansion 1);
- ``_se{R}``: squeeze-and-excitation as MnasNet and EfficientNet have it: a sigmoid gate, the
  block's activation inside, ``round(C_in * R)`` squeezed channels;
  ``_hse{R}``: MobileNetV3's: a hard-sigmoid gate, ReLU inside, ``hidden * R`` squeezed channels
  rounded to a multiple of 8;
- ``_re`` (ReLU), ``_hs`` (hard-swish) or ``_sw`` (swish, SiLU): the activation; none is ReLU6,
  MobileNetV2's.

For example ``k3_e6`` (MobileNetV2's block), ``k5_e6_se0.25_sw`` (EfficientNet's),
``k5_e4_hse0.25_hs`` (MobileNetV3's). Every op has one spelling, so text round-trips: FNA's
``net_config`` texts parse byte for byte, and a ``_r6`` token, ``e6.0`` or ``se0.250`` is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SKIP = "skip"
# decimals without trailing zeros, integers without leading ones: one spelling per number
_NUMBER = r"(?:[1-9][0-9]*|0)(?:\.[0-9]*[1-9])?"
_OP_RE = re.compile(rf"k([1-9][0-9]*)_e({_NUMBER})(_pw)?(?:_(h?se)({_NUMBER}))?(?:_(re|hs|sw))?")
# FNA's search space and every published MBConv seed (MobileNetV2, MnasNet, FBNet, ProxylessNAS,
# MobileNetV3, EfficientNet) use these; the fused CPU and CUDA kernels are built for exactly them
KERNEL_SIZES = (3, 5, 7)
# activation token -> name (fna_ext.families.mbconv.blocks.ACTIVATIONS builds them); "" is ReLU6
ACT_TOKENS = {"": "relu6", "re": "relu", "hs": "hardswish", "sw": "swish"}
GATES = {"se": "sigmoid", "hse": "hardsigmoid"}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of ``divisor`` without going more than 10% below (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def hidden_channels(in_channels: int, expansion: int | float) -> int:
    """An MBConv's inner width: ``C_in * E`` for an integer ``E`` (MobileNetV2's and FNA's rule,
    at any width), rounded to a multiple of 8 for a decimal one (timm's and torchvision's)."""
    if float(expansion).is_integer():
        return in_channels * int(expansion)
    return make_divisible(in_channels * expansion)


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def format_number(value: int | float) -> str:
    """The one spelling of an expansion or SE ratio (``6``, ``2.5``, ``0.25``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Op:
    """One layer's operation: an MBConv block or a skip (``kernel`` 0)."""

    kernel: int = 0
    expansion: int | float = 0
    se: str = ""              # "", "se" or "hse"
    se_ratio: float = 0.0
    act: str = ""             # an ACT_TOKENS key
    keep_expand: bool = False  # ``_pw``: an expand conv even at expansion 1

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0

    @property
    def has_expand(self) -> bool:
        return self.expansion != 1 or self.keep_expand

    @property
    def activation(self) -> str:
        return ACT_TOKENS[self.act]

    @property
    def uses_relu6_only(self) -> bool:
        """MobileNetV2's block, what the fused kernels compute: ReLU6, no SE, no ``_pw``."""
        return not self.se and not self.act and not self.keep_expand

    @property
    def suffix(self) -> str:
        """The attribute tokens after ``k{K}_e{E}`` (``_se0.25_sw``...): what a layer's candidates
        share with the seed's layer."""
        parts = ["pw"] if self.keep_expand else []
        if self.se:
            parts.append(f"{self.se}{format_number(self.se_ratio)}")
        if self.act:
            parts.append(self.act)
        return "".join(f"_{p}" for p in parts)

    @property
    def name(self) -> str:
        if self.is_skip:
            return SKIP
        return f"k{self.kernel}_e{format_number(self.expansion)}{self.suffix}"

    def hidden_channels(self, in_channels: int) -> int:
        return hidden_channels(in_channels, self.expansion)

    def se_channels(self, in_channels: int) -> int:
        """The squeezed width of the op's SE (0 without one): ``se`` squeezes ``round(hidden * R / E)``
        (timm's rule: ``C_in * R`` for an integer E), ``hse`` ``hidden * R`` to a multiple of 8."""
        hidden = self.hidden_channels(in_channels)
        if self.se == "hse":
            return make_divisible(hidden * self.se_ratio)
        if self.se == "se":
            return max(1, round(hidden * self.se_ratio / self.expansion))
        return 0

    def with_shape(self, kernel: int, expansion: int | float) -> "Op":
        """This op's attributes on another kernel and expansion."""
        keep = self.keep_expand and expansion == 1
        return Op(kernel, expansion, self.se, self.se_ratio, self.act, keep)

    @classmethod
    def parse(cls, name: str) -> "Op":
        if name == SKIP:
            return cls()
        match = _OP_RE.fullmatch(name) if isinstance(name, str) else None
        if not match:
            raise ValueError(f"unknown op {name!r}; ops are k{{3,5,7}}_e{{expansion}}[_pw][_se{{R}}|_hse{{R}}]"
                             "[_re|_hs|_sw] (for example k3_e6, k5_e3, k5_e6_se0.25_sw, k3_e2.5_hs) or skip")
        kernel, expansion = int(match[1]), _number(match[2])
        ratio = _number(match[5]) if match[5] else 0.0
        if kernel not in KERNEL_SIZES:
            raise ValueError(f"unknown op {name!r}: the kernel must be one of {KERNEL_SIZES}")
        if expansion < 1:
            raise ValueError(f"unknown op {name!r}: the expansion must be at least 1")
        if match[3] and expansion != 1:
            raise ValueError(f"unknown op {name!r}: _pw (an expand conv at expansion 1) is only written with e1")
        if match[4] and not 0 < ratio <= 1:
            raise ValueError(f"unknown op {name!r}: the SE ratio must be in (0, 1]")
        return cls(kernel, expansion, match[4] or "", float(ratio), match[6] or "", bool(match[3]))
