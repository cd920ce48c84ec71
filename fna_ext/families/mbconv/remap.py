"""The MBConv family's layer remapping (FNA Eq. 2-3 and Algorithm 1 within a block)."""

from __future__ import annotations

import torch

from ...remap import RemapPlan, add_bn, add_conv, first_channels, kernel_index, width_index
from .blocks import MBConv


def _width_reference(block: MBConv, mode: str) -> torch.Tensor | None:
    """Algorithm 1's reference vector over the seed block's hidden channels."""
    first = block.expand if block.expand is not None else block.depthwise  # makes the hidden channels
    if mode == "bn":
        return first.bn.weight.detach().abs()
    if mode in ("std", "l1"):
        filters = first.conv.weight.detach().flatten(1)
        return filters.std(1, unbiased=False) if mode == "std" else filters.abs().sum(1)
    return None


def plan_block(plan: RemapPlan, seed: MBConv, target: MBConv, seed_prefix: str, target_prefix: str,
               width: str = "first", kernel_mode: str = "center") -> RemapPlan:
    """Adds the maps that remap MBConv ``seed`` into MBConv ``target`` (any kernel and expansion)
    to ``plan``. The same hidden-channel selection flows through the expand conv's outputs, both
    hidden BNs, the depthwise conv and the project conv's inputs. A target expand conv whose seed
    layer has none (expansion 1) starts as the identity on the channels the seed passes through."""
    in_map = first_channels(target.in_channels, seed.in_channels)
    out_map = first_channels(target.out_channels, seed.out_channels)
    hidden, counts = width_index(seed.hidden_channels, target.hidden_channels,
                                 _width_reference(seed, width), width)
    s, t = seed_prefix, target_prefix
    if target.expand is not None:
        if seed.expand is not None:
            add_conv(plan, f"{t}.expand.conv", f"{s}.expand.conv", [hidden, in_map, None, None])
            add_bn(plan, f"{t}.expand.bn", f"{s}.expand.bn", hidden)
        else:
            identity = torch.eye(seed.in_channels)[:, :, None, None]
            add_conv(plan, f"{t}.expand.conv", None, [hidden, in_map, None, None], synthetic=identity)
            add_bn(plan, f"{t}.expand.bn", None, hidden)
    spatial = kernel_index(seed.kernel_size, target.kernel_size, kernel_mode)
    add_conv(plan, f"{t}.depthwise.conv", f"{s}.depthwise.conv", [hidden, None, spatial, spatial])
    add_bn(plan, f"{t}.depthwise.bn", f"{s}.depthwise.bn", hidden)
    scale = (1, 1.0 / counts[hidden].double()) if counts is not None else None
    add_conv(plan, f"{t}.project.conv", f"{s}.project.conv", [out_map, hidden, None, None], scale=scale)
    add_bn(plan, f"{t}.project.bn", f"{s}.project.bn", out_map)
    return plan
