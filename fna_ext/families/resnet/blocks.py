"""BasicBlock and Bottleneck in torchvision's layout (``conv1``/``bn1``..., ``downsample.{0,1}``),
so torchvision's ResNet weights load by renaming prefixes only, with the stride on the K x K conv
as torchvision's v1.5 Bottleneck has it. Unlike torchvision, the K x K kernel size and the K x K
convs' group count are parameters (the search's candidates), and a BasicBlock may be dilated
(DeepLab's output stride).

A dense K x K weight serves a G-group candidate by one of two slice rules (:func:`grouped_weight`):
``diagonal`` keeps, for each output channel, the input channels of its own group (the
block-diagonal of the dense channel matrix), ``first`` keeps the first C_in / G input channels for
every output channel (the choice in FNA's issue #20). The search's shared layers and the
remapping use the same rule."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import batch_norm
from .op import Op

EXPANSION = {"basic": 1, "bottleneck": 4}  # block output channels / standard inner width


def inner_width(block: str, out_channels: int, percent: int = 100) -> int:
    """A block's inner channels (conv1's outputs): ``percent`` of C_out / EXPANSION, a whole number."""
    if out_channels % EXPANSION[block]:
        raise ValueError(f"a {block} block's output channels ({out_channels}) must be a multiple of "
                         f"{EXPANSION[block]} (its inner width times the expansion)")
    width, rest = divmod(out_channels // EXPANSION[block] * percent, 100)
    if rest or width < 1:
        raise ValueError(f"a {block} block of {out_channels} output channels has no whole inner width at "
                         f"{percent}% (_w{percent}); choose a percentage that gives whole channels")
    return width


def relu() -> nn.Module:
    return nn.ReLU(inplace=True)


GROUP_RULES = ("diagonal", "first")


def grouped_weight(weight: torch.Tensor, groups: int, rule: str = "diagonal") -> torch.Tensor:
    """A dense conv weight (C_out, C_in, ...) as a ``groups``-group conv's (C_out, C_in / G, ...)."""
    if groups == 1:
        return weight
    if rule not in GROUP_RULES:
        raise ValueError(f"group slice rule {rule!r} is not one of {GROUP_RULES}")
    c_out, c_in = weight.shape[:2]
    if rule == "first":
        return weight[:, :c_in // groups]
    blocks = weight.reshape(groups, c_out // groups, groups, c_in // groups, *weight.shape[2:])
    diagonal = torch.arange(groups, device=weight.device)
    return blocks[diagonal, :, diagonal].reshape(c_out, c_in // groups, *weight.shape[2:])


def dense_weight(weight: torch.Tensor, groups: int, rule: str = "diagonal") -> torch.Tensor:
    """The inverse placement: a ``groups``-group conv weight (C_out, C_in / G, ...) as the dense
    weight it slices from, zero elsewhere. Under ``diagonal`` the dense conv computes exactly what
    the grouped one does."""
    if groups == 1:
        return weight
    if rule not in GROUP_RULES:
        raise ValueError(f"group slice rule {rule!r} is not one of {GROUP_RULES}")
    c_out, c_group = weight.shape[:2]
    dense = weight.new_zeros(c_out, c_group * groups, *weight.shape[2:])
    if rule == "first":
        dense[:, :c_group] = weight
        return dense
    for g in range(groups):
        rows = slice(g * c_out // groups, (g + 1) * c_out // groups)
        dense[rows, g * c_group:(g + 1) * c_group] = weight[rows]
    return dense


def spatial_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> nn.Conv2d:
    """A bias-free K x K conv whose padding keeps the size (up to the stride) at any dilation."""
    for what, channels in (("input", in_channels), ("output", out_channels)):
        if channels % groups:
            raise ValueError(f"a {groups}-group conv needs {what} channels divisible by {groups}, got {channels}")
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2 * dilation,
                     dilation=dilation, groups=groups, bias=False)


def run_spatial(conv: nn.Conv2d, x: torch.Tensor, kernel: int | None = None, groups: int | None = None,
                rule: str = "diagonal") -> torch.Tensor:
    """``conv(x)``, or with only the centre ``kernel`` x ``kernel`` taps of its weight, in
    ``groups`` groups sliced from its dense weight by ``rule``: a shared search layer runs its
    smaller and grouped candidates on the slices of one max-size dense block."""
    size = conv.kernel_size[0]
    kernel, groups = kernel or size, groups or conv.groups
    if kernel == size and groups == conv.groups:
        return conv(x)
    weight = conv.weight
    if kernel != size:
        start = (size - kernel) // 2
        weight = weight[:, :, start:start + kernel, start:start + kernel]
    if groups != conv.groups:
        if conv.groups != 1:
            raise ValueError(f"only a dense conv's weight slices into groups; this one has {conv.groups}")
        weight = grouped_weight(weight, groups, rule)
    return F.conv2d(x, weight, None, conv.stride, kernel // 2 * conv.dilation[0], conv.dilation, groups)


def downsample(in_channels: int, out_channels: int, stride: int, norm_layer) -> nn.Sequential | None:
    """The shortcut's 1x1 conv + norm, where the residual's shape changes (None: identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels))


class _Residual(nn.Module):
    """What both blocks share: the op they stand for and the shortcut around them."""

    block = ""

    @property
    def op(self) -> Op:
        return Op(self.block, self.kernel_size, self.groups, self.width_percent)

    @property
    def width(self) -> int:
        """The inner channels (conv1's output), which width remapping may change."""
        return self.conv1.out_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) if self.downsample is not None else x

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """What runs before the K x K conv(s), the same for every kernel and group count."""
        return x

    def branch(self, reduced: torch.Tensor, kernel: int | None = None, groups: int | None = None,
               rule: str = "diagonal") -> torch.Tensor:
        """The residual branch from :meth:`reduce`'s output, up to its last BN."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, kernel: int | None = None, groups: int | None = None,
                rule: str = "diagonal") -> torch.Tensor:
        """The block; ``kernel`` and ``groups`` run a smaller or grouped candidate on slices of
        its K x K weights (:func:`run_spatial`)."""
        return self.act(self.branch(self.reduce(x), kernel, groups, rule) + self.shortcut(x))

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, None): a ResNet block declares no inner feature (``FeatureInfo`` kind ``expand``)."""
        return self(x), None


class BasicBlock(_Residual):
    """conv1 (K x K, stride, to the inner width) -> bn1 -> act -> conv2 (K x K, to C_out) -> bn2,
    plus the shortcut, -> act. The inner width is C_out unless ``width_percent`` says otherwise."""

    block = "basic"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None, groups: int = 1, width_percent: int = 100):
        super().__init__()
        norm_layer, act_layer = norm_layer or batch_norm(), act_layer or relu
        width = inner_width("basic", out_channels, width_percent)
        self.in_channels, self.out_channels, self.width_percent = in_channels, out_channels, width_percent
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.conv1 = spatial_conv(in_channels, width, kernel_size, stride, dilation, groups)
        self.bn1 = norm_layer(width)
        self.conv2 = spatial_conv(width, out_channels, kernel_size, 1, dilation, groups)
        self.bn2 = norm_layer(out_channels)
        self.act = act_layer()
        self.downsample = downsample(in_channels, out_channels, stride, norm_layer)

    def branch(self, reduced: torch.Tensor, kernel: int | None = None, groups: int | None = None,
               rule: str = "diagonal") -> torch.Tensor:
        out = self.act(self.bn1(run_spatial(self.conv1, reduced, kernel, groups, rule)))
        return self.bn2(run_spatial(self.conv2, out, kernel, groups, rule))


class Bottleneck(_Residual):
    """conv1 (1x1 to the inner width, C_out / 4 unless ``width_percent`` says otherwise) -> bn1 ->
    act -> conv2 (K x K, stride) -> bn2 -> act -> conv3 (1x1 to C_out) -> bn3, plus the shortcut,
    -> act (torchvision's v1.5)."""

    block = "bottleneck"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, norm_layer: Callable[[int], nn.Module] | None = None,
                 act_layer: Callable[[], nn.Module] | None = None, groups: int = 1, width_percent: int = 100):
        super().__init__()
        norm_layer, act_layer = norm_layer or batch_norm(), act_layer or relu
        width = inner_width("bottleneck", out_channels, width_percent)
        self.in_channels, self.out_channels, self.width_percent = in_channels, out_channels, width_percent
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = spatial_conv(width, width, kernel_size, stride, dilation, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.act = act_layer()
        self.downsample = downsample(in_channels, out_channels, stride, norm_layer)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv1(x)))

    def branch(self, reduced: torch.Tensor, kernel: int | None = None, groups: int | None = None,
               rule: str = "diagonal") -> torch.Tensor:
        out = self.act(self.bn2(run_spatial(self.conv2, reduced, kernel, groups, rule)))
        return self.bn3(self.conv3(out))


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_block(in_channels: int, out_channels: int, stride: int, op: Op | str, *, dilation: int = 1,
               norm_layer: Callable[[int], nn.Module] | None = None,
               act_layer: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The block of ``op``; ``skip`` is the identity (the arch keeps it off a stage's first layer)."""
    op = op if isinstance(op, Op) else Op.parse(op)
    if op.is_skip:
        return nn.Identity()
    return BLOCK_TYPES[op.block](in_channels, out_channels, op.kernel, stride, dilation, norm_layer, act_layer,
                                 op.groups, op.width)
