"""The ResNet family's searched layer: a layer's candidates of one block type (kernel sizes and
group counts, and ``skip`` past the seed's depth), as blocks of their own (``independent``, as
published) or as slices of one max-kernel dense block (``shared``: a k x k, G-group candidate runs
the centre k x k taps of the 7x7 weights, sliced into G groups by the layer's group rule, through
``F.conv2d``; the 1x1 convs, the shortcut and the BNs are common to every candidate). A layer runs
one op (path mode, the weight steps) or the softmax(alpha)-weighted sum of every candidate's
output (mixture mode, the architecture steps; shared candidates compute their shortcut and a
bottleneck's 1x1 reduction once). There is no fused kernel here: each candidate is a
plain block forward (oneDNN's convolutions; benchmarks/RESULTS.md)."""

from __future__ import annotations

import torch
from torch import nn

from ..norm import candidate_batch_norm
from ..sampled import SampledRegion
from .blocks import GROUP_RULES, grouped_weight, make_block
from .family import RESNET
from .op import Op


class SearchLayer(nn.Module):
    def __init__(self, spec, weight_sharing: str, affine_bn: bool, bn_eps: float, groups: str = "diagonal"):
        super().__init__()
        if groups not in GROUP_RULES:
            raise ValueError(f"group rule {groups!r} is not one of {GROUP_RULES}")
        self.spec, self.weight_sharing, self.affine_bn, self.bn_eps = spec, weight_sharing, affine_bn, bn_eps
        self.group_rule = groups
        ops = [Op.parse(name) for name in spec.candidates if name != "skip"]
        if len({(op.block, op.width) for op in ops}) != 1:
            raise ValueError(f"layer {spec.key}: the candidates {spec.candidates} mix block types or inner "
                             "widths; a searched ResNet layer chooses a kernel size and group count within one "
                             "block type and width")
        self.widest = Op.parse(RESNET.widest_op(spec.candidates))  # dense: every candidate slices it
        owners = [self.widest] if weight_sharing == "shared" else ops
        norm = candidate_batch_norm(bn_eps, affine_bn)
        self.blocks = nn.ModuleDict({op.name: make_block(spec.in_channels, spec.out_channels, spec.stride, op,
                                                         dilation=spec.dilation, norm_layer=norm)
                                     for op in owners})
        self.choice: str | torch.Tensor | None = None  # an op name, or mixture weights
        self._regions: dict[tuple[str, torch.device], dict] = {}  # sampled_regions, once per op and device

    def _owner(self, op: str) -> nn.Module:
        return self.blocks[self.widest.name] if self.weight_sharing == "shared" else self.blocks[op]

    def run_op(self, x: torch.Tensor, op: str) -> torch.Tensor:
        if op == "skip":
            return x
        parsed = Op.parse(op)
        return self._owner(op)(x, kernel=parsed.kernel, groups=parsed.groups, rule=self.group_rule)

    def sampled_regions(self, op: str) -> dict[nn.Parameter, SampledRegion]:
        """In shared mode, the K x K weights' entries op uses (their centre taps, and its groups'
        slice of the channels): the optimiser step must leave the rest, which only other
        candidates use, where it was. Everything else in the block serves every candidate;
        independent candidates own all their weights, and skip uses none."""
        if self.weight_sharing != "shared" or op == "skip":
            return {}
        block = self._owner(op)
        key = (op, block.conv2.weight.device)
        if key not in self._regions:  # every weight step asks: the regions depend only on the op
            self._regions[key] = self._build_regions(block, Op.parse(op))
        return self._regions[key]

    def _build_regions(self, block: nn.Module, parsed: Op) -> dict[nn.Parameter, SampledRegion]:
        start = (block.kernel_size - parsed.kernel) // 2
        taps = slice(start, start + parsed.kernel)
        regions = {}
        for name in ("conv1", "conv2") if block.block == "basic" else ("conv2",):
            weight = getattr(block, name).weight
            c_out, c_in = weight.shape[:2]
            if parsed.groups == 1:
                regions[weight] = SampledRegion((slice(None), slice(None), taps, taps))
            elif self.group_rule == "first":  # every output channel reads the first C_in / G
                regions[weight] = SampledRegion((slice(None), slice(0, c_in // parsed.groups), taps, taps))
            else:  # the block-diagonal: a mask over (output, input) channels, for every tap
                index = torch.arange(c_out * c_in, device=weight.device).view(c_out, c_in)
                used = torch.zeros(c_out * c_in, dtype=torch.bool, device=weight.device)
                used[grouped_weight(index, parsed.groups, self.group_rule).flatten()] = True
                regions[weight] = SampledRegion((slice(None), slice(None), taps, taps), used.view(c_out, c_in, 1, 1))
        return regions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.choice, str):
            return self.run_op(x, self.choice)
        if self.choice is None:
            raise RuntimeError(f"layer {self.spec.key}: set a path or mixture on the super network first")
        if self.weight_sharing == "shared":
            return self._shared_mixture(x)
        out = 0
        for w, op in zip(self.choice, self.spec.candidates, strict=True):
            out = out + w * self.run_op(x, op)
        return out

    def _shared_mixture(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted sum of every candidate, computing what they share once: the shortcut,
        and a bottleneck's 1x1 reduction. Only the K x K branch differs between them."""
        block = self._owner(self.widest.name)
        reduced, shortcut = block.reduce(x), block.shortcut(x)
        out = 0
        for w, op in zip(self.choice, self.spec.candidates, strict=True):
            if op == "skip":
                out = out + w * x
                continue
            parsed = Op.parse(op)
            out = out + w * block.act(block.branch(reduced, parsed.kernel, parsed.groups, self.group_rule) + shortcut)
        return out

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, None): a ResNet block has no expansion feature to tap."""
        return self(x), None
