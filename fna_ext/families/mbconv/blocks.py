"""The building blocks every network of fna_ext is made of: the seed, the derived target
networks and the super network's sampled paths all use the same MBConv definition, so remapping
and weight loading can match them by structure."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import batch_norm
from .op import GATES, Op


def relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


# an op's activation token names one of these (fna_ext.families.mbconv.op.ACT_TOKENS)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu6": relu6, "relu": lambda: nn.ReLU(inplace=True), "hardswish": lambda: nn.Hardswish(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True)}
GATE_FUNCTIONS = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> norm -> activation (or none). ``norm_layer(channels)`` and
    ``act_layer()`` build the norm and the activation; by default BatchNorm2d with ``bn_eps`` and
    ReLU6, as MobileNetV2 has them."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: bool = True, bn_eps: float = 1e-5,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None):
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = (norm_layer or batch_norm(bn_eps))(out_channels)
        self.act = (act_layer or relu6)() if act else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation over the hidden channels: global average pool -> 1x1 ``reduce``
    (bias) -> activation -> 1x1 ``expand`` (bias) -> gate, which scales each channel."""

    def __init__(self, channels: int, squeezed: int, gate: str, act_layer: Callable[[], nn.Module]):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = act_layer()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate_name = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * GATE_FUNCTIONS[self.gate_name](scale)


def block_activation(op: Op, act_layer: Callable[[], nn.Module] | None) -> Callable[[], nn.Module]:
    """An op's activation: its token's, else the one passed in, else ReLU6."""
    return ACTIVATIONS[op.activation] if op.act else (act_layer or relu6)


def squeeze_excite(op: Op, in_channels: int, act_layer: Callable[[], nn.Module]) -> SqueezeExcite | None:
    """The op's SE (None without one): MobileNetV3's has ReLU inside, MnasNet's and EfficientNet's
    the block's activation."""
    if not op.se:
        return None
    inner = ACTIVATIONS["relu"] if op.se == "hse" else act_layer
    return SqueezeExcite(op.hidden_channels(in_channels), op.se_channels(in_channels), GATES[op.se], inner)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand (absent at expansion 1 unless the op keeps it) -> KxK
    depthwise -> squeeze-and-excitation (where the op has it) -> 1x1 project, with a residual
    connection when stride is 1 and channels do not change. ``attributes`` (an :class:`Op`) gives
    the SE, the activation and ``_pw``; its kernel and expansion are ignored."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, expansion: int | float,
                 stride: int = 1, dilation: int = 1, bn_eps: float = 1e-5,
                 norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None, *, attributes: Op | None = None):
        super().__init__()
        op = (attributes or Op(kernel_size, expansion)).with_shape(kernel_size, expansion)
        hidden = op.hidden_channels(in_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.expansion, self.stride, self.dilation = kernel_size, expansion, stride, dilation
        self._op = op
        act = block_activation(op, act_layer)
        parts = dict(bn_eps=bn_eps, norm_layer=norm_layer, act_layer=act)
        self.expand = ConvBNAct(in_channels, hidden, 1, **parts) if op.has_expand else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, dilation=dilation, **parts)
        self.se = squeeze_excite(op, in_channels, act)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False, **parts)
        self.use_residual = stride == 1 and in_channels == out_channels

    @property
    def op(self) -> Op:
        return self._op

    @property
    def hidden_channels(self) -> int:
        return self.depthwise.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tapping_expand(x, tap=False)[0]

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, expansion output after BN and activation): the inner feature the block
        declares (``FeatureInfo`` kind ``expand``), which SSDLite reads; None when not asked."""
        hidden = self.expand(x) if self.expand is not None else x
        inner = self.depthwise(hidden)
        if self.se is not None:
            inner = self.se(inner)
        out = self.project(inner)
        return (out + x if self.use_residual else out), (hidden if tap else None)


class Skip(nn.Identity):
    """A ``skip`` layer of an architecture: the identity, kept as a module so that layer indices
    match the architecture's."""

    op = Op()


def make_layer(in_channels: int, out_channels: int, stride: int, op: Op, bn_eps: float = 1e-5,
               dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
               act_layer: Callable[[], nn.Module] | None = None) -> nn.Module:
    if op.is_skip:
        return Skip()
    return MBConv(in_channels, out_channels, op.kernel, op.expansion, stride, dilation, bn_eps,
                  norm_layer=norm_layer, act_layer=act_layer, attributes=op)
