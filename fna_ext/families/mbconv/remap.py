"""The MBConv family's layer remapping (FNA Eq. 2-3 and Algorithm 1 within a block)."""

from __future__ import annotations

import torch

from ...remap import FILL, RemapPlan, add_bias, add_bn, add_conv, first_channels, kernel_index, width_index
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


def activation_change(seed: MBConv, target: MBConv) -> str | None:
    """Another activation, or both with an SE of another gate: what the seed's weights were not
    trained for. An SE present on one side only is not one (see :func:`_plan_se`)."""
    if seed.op.activation != target.op.activation:
        return f"the target's activation {target.op.activation} differs from the seed layer's {seed.op.activation}"
    if seed.op.se and target.op.se and seed.op.se != target.op.se:
        return f"the target's SE gate ({target.op.se}) differs from the seed layer's ({seed.op.se})"
    return None


def _plan_se(plan: RemapPlan, seed: MBConv, target: MBConv, s: str, t: str, hidden: torch.Tensor,
             hidden_scale: torch.Tensor | None) -> bool:
    """The SE's maps; True where the target's SE starts as a constant gate of 0.5 (the seed layer
    has none), which the project conv's doubled weights undo.

    Both have one: the hidden-channel selection flows through the reduce conv's inputs and the
    expand conv's outputs; the squeezed channels take the first ones (Eq. 2), extra ones zero, so
    the function is kept. The seed's SE where the target has none is dropped (the function
    changes; the layer table shows it, e.g. ``k5_e3_hse0.25_re -> k5_e3_re``). A new SE keeps its reduce
    conv's initialisation and starts its expand conv at zero: every gate is then sigmoid(0) or
    hard-sigmoid(0) = 0.5 whatever the input, so the block computes the seed's exactly, and the
    gradient reaches the expand conv from the first step (an exact identity gate would need a
    saturated sigmoid, which passes almost none)."""
    if target.se is None:
        return False
    if seed.se is None:
        squeezed = target.se.reduce.out_channels
        add_conv(plan, f"{t}.se.expand", None, [torch.full((target.hidden_channels,), FILL),
                                               torch.full((squeezed,), FILL), None, None], synthetic=torch.zeros(1, 1, 1, 1))
        add_bias(plan, f"{t}.se.expand", None, torch.arange(target.hidden_channels))
        return True
    squeezed = first_channels(target.se.reduce.out_channels, seed.se.reduce.out_channels)
    reduce_scale = (1, hidden_scale) if hidden_scale is not None else None
    add_conv(plan, f"{t}.se.reduce", f"{s}.se.reduce", [squeezed, hidden, None, None], scale=reduce_scale)
    add_bias(plan, f"{t}.se.reduce", f"{s}.se.reduce", squeezed)
    add_conv(plan, f"{t}.se.expand", f"{s}.se.expand", [hidden, squeezed, None, None])
    add_bias(plan, f"{t}.se.expand", f"{s}.se.expand", hidden)
    return False


def plan_block(plan: RemapPlan, seed: MBConv, target: MBConv, seed_prefix: str, target_prefix: str,
               width: str = "first", kernel_mode: str = "center") -> RemapPlan:
    """Adds the maps that remap MBConv ``seed`` into MBConv ``target`` (any kernel and expansion)
    to ``plan``. The same hidden-channel selection flows through the expand conv's outputs, both
    hidden BNs, the depthwise conv, the SE and the project conv's inputs. A target expand conv
    whose seed layer has none (expansion 1) starts as the identity on the channels the seed passes
    through."""
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
    # Net2Net's replicated hidden channels: every conv that sums over them divides by the count
    hidden_scale = 1.0 / counts[hidden].double() if counts is not None else None
    half_gate = _plan_se(plan, seed, target, s, t, hidden, hidden_scale)
    scale = None
    if hidden_scale is not None or half_gate:
        factors = hidden_scale if hidden_scale is not None else torch.ones(target.hidden_channels, dtype=torch.double)
        scale = (1, factors * 2 if half_gate else factors)
    add_conv(plan, f"{t}.project.conv", f"{s}.project.conv", [out_map, hidden, None, None], scale=scale)
    add_bn(plan, f"{t}.project.bn", f"{s}.project.bn", out_map)
    return plan
