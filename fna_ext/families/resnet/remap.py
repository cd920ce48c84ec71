"""The ResNet family's block remapping (FNA Eq. 2-3 within a block).

Kernel (Eq. 3 or 6): every K x K conv through :func:`fna_ext.remap.kernel_index`. Width (Eq. 2,
Algorithm 1): the block's inner channels (conv1's outputs; in a BasicBlock they are also its
outputs, so its width follows the stage) through :func:`fna_ext.remap.width_index`, the same
selection flowing through conv1, bn1, conv2 (both channel dimensions of a bottleneck's) and the
conv that reads them. Outer channels take the first ones. The shortcut's 1x1 conv and BN remap
like any conv; a target shortcut whose seed layer has none starts as the identity.

Groups, both ways (FNA's issue #20): a K x K conv whose group count differs from the seed's is
remapped through the dense weight. The seed's weight is placed in a dense one (a dense seed as
is; a grouped seed on its block-diagonal, zero elsewhere, so a dense target computes exactly what
it did), its channels are remapped as above, and the target's groups are sliced out of it by the
``groups`` rule: ``diagonal`` (each output channel keeps its own group's inputs) or ``first``
(the first C_in / G inputs), the rules of :func:`~fna_ext.families.resnet.blocks.grouped_weight`."""

from __future__ import annotations

import torch

from ...remap import (FILL, RemapPlan, TensorRemap, add_bn, add_conv, first_channels, gather, kernel_index,
                      width_index)
from .blocks import dense_weight, grouped_weight


def _width_reference(block, mode: str) -> torch.Tensor | None:
    """Algorithm 1's reference vector over the seed block's inner channels (conv1's outputs)."""
    if mode == "bn":
        return block.bn1.weight.detach().abs()
    if mode in ("std", "l1"):
        filters = block.conv1.weight.detach().flatten(1)
        return filters.std(1, unbiased=False) if mode == "std" else filters.abs().sum(1)
    return None


def start_as_identity(plan: RemapPlan, target, prefix: str) -> None:
    """A block past the seed's depth starts as an identity residual: Eq. 1's copy of the seed
    stage's last block, with the scale and shift of its last BN zeroed, adds nothing to its
    shortcut, and the ReLU after the sum leaves the (already non-negative) input as it was. So a
    deeper target computes exactly what the seed does in eval mode, and trains from there (the
    zero-init residual of Goyal et al., 2017)."""
    if target.downsample is not None:  # only a stage's first layer changes shape; it is never extra
        return
    bn = f"{prefix}.{'bn2' if target.block == 'basic' else 'bn3'}"
    keys = {f"{bn}.weight", f"{bn}.bias"}
    plan.entries[:] = [e for e in plan.entries if e.target not in keys]
    channels = torch.full((target.out_channels,), FILL)
    plan.entries += [TensorRemap(key, None, [channels], 0.0, synthetic=torch.zeros(1)) for key in sorted(keys)]


def _plan_shortcut(plan: RemapPlan, seed, target, s: str, t: str, in_map, out_map) -> None:
    if target.downsample is None:
        return  # nothing to fill; a seed shortcut the target lacks is dropped
    if seed.downsample is not None:
        add_conv(plan, f"{t}.downsample.0", f"{s}.downsample.0", [out_map, in_map, None, None])
        add_bn(plan, f"{t}.downsample.1", f"{s}.downsample.1", out_map)
        return
    # the seed layer adds x unchanged: a 1x1 identity conv and a BN at its initial values do too
    identity = torch.eye(seed.out_channels, seed.in_channels)[:, :, None, None]
    add_conv(plan, f"{t}.downsample.0", None, [out_map, in_map, None, None], synthetic=identity)
    add_bn(plan, f"{t}.downsample.1", None, out_map)


def _add_spatial_conv(plan: RemapPlan, seed, target, conv: str, s: str, t: str, channel_maps, spatial,
                      groups: str, scale=None) -> None:
    """A block's K x K conv ``conv``: channel and kernel maps, through the dense weight when the
    group counts differ (or the channels of a grouped conv change)."""
    source, destination = getattr(seed, conv), getattr(target, conv)
    s_groups, t_groups = source.groups, destination.groups
    if s_groups == t_groups == 1:
        add_conv(plan, f"{t}.{conv}", f"{s}.{conv}", [*channel_maps, spatial, spatial], scale=scale)
        return
    unchanged = source.weight.shape[:2] == destination.weight.shape[:2] and all(
        m is None or torch.equal(m, torch.arange(len(m))) for m in channel_maps)
    if s_groups == t_groups and unchanged:  # the same grouped conv, perhaps another kernel
        add_conv(plan, f"{t}.{conv}", f"{s}.{conv}", [None, None, spatial, spatial])
        return
    dense = dense_weight(source.weight.detach(), s_groups, groups)
    dense = gather(dense, [*channel_maps, None, None], scale=scale)
    add_conv(plan, f"{t}.{conv}", None, [None, None, spatial, spatial],
             synthetic=grouped_weight(dense, t_groups, groups).contiguous())


def plan_block(plan: RemapPlan, seed, target, seed_prefix: str, target_prefix: str, width: str = "first",
               kernel_mode: str = "center", groups: str = "diagonal") -> RemapPlan:
    """Adds the maps that remap block ``seed`` into block ``target`` of the same type (any kernel)."""
    if seed.block != target.block:
        raise ValueError(f"{target_prefix}: cannot remap a {seed.block} block ({seed_prefix}) into a "
                         f"{target.block} block; FNA++ remaps within one block type")
    in_map = first_channels(target.in_channels, seed.in_channels)
    out_map = first_channels(target.out_channels, seed.out_channels)
    inner, counts = width_index(seed.width, target.width, _width_reference(seed, width), width)
    spatial = kernel_index(seed.kernel_size, target.kernel_size, kernel_mode)
    # net2net: a replicated inner channel's outgoing weights are divided among its copies
    scale = (1, 1.0 / counts[inner].double()) if counts is not None else None
    s, t = seed_prefix, target_prefix
    if target.block == "basic":
        _add_spatial_conv(plan, seed, target, "conv1", s, t, [inner, in_map], spatial, groups)
        add_bn(plan, f"{t}.bn1", f"{s}.bn1", inner)
        _add_spatial_conv(plan, seed, target, "conv2", s, t, [out_map, inner], spatial, groups, scale)
        add_bn(plan, f"{t}.bn2", f"{s}.bn2", out_map)
    else:
        add_conv(plan, f"{t}.conv1", f"{s}.conv1", [inner, in_map, None, None])
        add_bn(plan, f"{t}.bn1", f"{s}.bn1", inner)
        _add_spatial_conv(plan, seed, target, "conv2", s, t, [inner, inner], spatial, groups, scale)
        add_bn(plan, f"{t}.bn2", f"{s}.bn2", inner)
        add_conv(plan, f"{t}.conv3", f"{s}.conv3", [out_map, inner, None, None], scale=scale)
        add_bn(plan, f"{t}.bn3", f"{s}.bn3", out_map)
    _plan_shortcut(plan, seed, target, s, t, in_map, out_map)
    return plan
