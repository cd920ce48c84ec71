"""The ResNet family's searched layer: a layer's candidate kernels of one block type, as blocks of
their own (``independent``, as published) or as centre slices of one max-kernel block (``shared``:
a k x k candidate runs the centre k x k taps of the 7x7 weights through ``F.conv2d``; the 1x1
convs, the shortcut and the BNs are common to every candidate). A layer runs one op (path mode,
the weight steps) or the softmax(alpha)-weighted sum of every candidate's output (mixture mode,
the architecture steps). There is no fused kernel here: each candidate is a plain block forward."""

from __future__ import annotations

import torch
from torch import nn

from ..norm import candidate_batch_norm
from .blocks import make_block
from .op import Op


class SearchLayer(nn.Module):
    def __init__(self, spec, weight_sharing: str, affine_bn: bool, bn_eps: float):
        super().__init__()
        self.spec, self.weight_sharing, self.affine_bn, self.bn_eps = spec, weight_sharing, affine_bn, bn_eps
        ops = [Op.parse(name) for name in spec.candidates]
        if len({op.block for op in ops}) != 1:
            raise ValueError(f"layer {spec.key}: the candidates {spec.candidates} mix block types; a searched "
                             "ResNet layer chooses a kernel size within one block type")
        self.widest = max(ops, key=lambda op: op.kernel)
        owners = [self.widest] if weight_sharing == "shared" else ops
        norm = candidate_batch_norm(bn_eps, affine_bn)
        self.blocks = nn.ModuleDict({op.name: make_block(spec.in_channels, spec.out_channels, spec.stride, op,
                                                         dilation=spec.dilation, norm_layer=norm)
                                     for op in owners})
        self.choice: str | torch.Tensor | None = None  # an op name, or mixture weights

    def _owner(self, op: str) -> nn.Module:
        return self.blocks[self.widest.name] if self.weight_sharing == "shared" else self.blocks[op]

    def run_op(self, x: torch.Tensor, op: str) -> torch.Tensor:
        return self._owner(op)(x, kernel=Op.parse(op).kernel)

    def sampled_masks(self, op: str) -> dict[nn.Parameter, torch.Tensor]:
        """In shared mode, the K x K weights' entries op uses (their centre): the optimiser step must
        leave the ring, which only larger candidates use, where it was. Everything else in the block
        serves every candidate; independent candidates own all their weights."""
        if self.weight_sharing != "shared":
            return {}
        block, kernel = self._owner(op), Op.parse(op).kernel
        start = (block.kernel_size - kernel) // 2
        masks = {}
        for name in ("conv1", "conv2") if block.block == "basic" else ("conv2",):
            weight = getattr(block, name).weight
            mask = torch.zeros_like(weight, dtype=torch.bool)
            mask[..., start:start + kernel, start:start + kernel] = True
            masks[weight] = mask
        return masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.choice, str):
            return self.run_op(x, self.choice)
        if self.choice is None:
            raise RuntimeError(f"layer {self.spec.key}: set a path or mixture on the super network first")
        out = 0
        for w, op in zip(self.choice, self.spec.candidates, strict=True):
            out = out + w * self.run_op(x, op)
        return out

    def forward_tapping_expand(self, x: torch.Tensor, tap: bool = True):
        """(output, None): a ResNet block has no expansion feature to tap."""
        return self(x), None
