"""The norm layers families build their blocks with, chosen when a block is built: BatchNorm2d,
or under ``torchrun`` the :class:`~fna_ext.engine.distributed.GlobalBatchNorm2d` whose batch
statistics cover every process (same parameters, buffers and state dict)."""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from ..engine import distributed


def batch_norm(eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """The default norm layer factory: ``factory(channels)`` builds a BN with ``eps``."""
    return partial(distributed.batch_norm_class(), eps=eps)


def candidate_batch_norm(eps: float, affine: bool) -> Callable[[int], nn.Module]:
    """The norm layer of a super network's candidate blocks: batch statistics only, never running
    ones (as published); without affine parameters there is nothing to learn either, so the
    parameters are frozen at (1, 0) and never used."""
    def build(channels: int) -> nn.Module:
        bn = distributed.batch_norm_class()(channels, eps=eps, track_running_stats=False)
        bn.weight.requires_grad_(affine)
        bn.bias.requires_grad_(affine)
        return bn
    return build
