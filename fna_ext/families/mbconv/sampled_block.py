"""A sampled candidate of a shared max-size MBConv in eager PyTorch, for the vocabulary the fused
ops (:mod:`fna_ext.ops.sampled_mbconv`, :mod:`fna_ext.ops.mbconv_mixture`) do not cover yet:
squeeze-and-excitation, ReLU / hard-swish / swish, and ``_pw``'s expand conv at expansion 1.

The slice rule is the fused ops' (:mod:`fna_ext.ops.slices`): the first hidden channels, the centre
k x k taps; an SE takes its first squeezed channels too (Once-for-All's dynamic SE). BatchNorm uses
the batch's statistics, over every process under ``torchrun``, as the fused ops' reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.distributed import batch_norm as global_batch_norm
from ...ops.sampled_mbconv import centre_kernel, check_dilation
from ...ops.slices import hidden_window
from .blocks import GATE_FUNCTIONS
from .op import GATES, Op

ACT_FUNCTIONS = {"relu6": F.relu6, "relu": F.relu, "hardswish": F.hardswish, "swish": F.silu}


def _bn(x: torch.Tensor, bn: nn.Module, affine: bool, eps: float) -> torch.Tensor:
    channels = x.shape[1]
    weight, bias = (bn.weight[:channels], bn.bias[:channels]) if affine else (None, None)
    return global_batch_norm(x, weight, bias, eps)


def _squeeze_excite(hidden: torch.Tensor, se: nn.Module, op: Op, in_channels: int, act) -> torch.Tensor:
    channels, squeezed = hidden.shape[1], op.se_channels(in_channels)
    scale = F.conv2d(hidden.mean((2, 3), keepdim=True), se.reduce.weight[:squeezed, :channels],
                     se.reduce.bias[:squeezed])
    scale = (F.relu if op.se == "hse" else act)(scale)
    scale = F.conv2d(scale, se.expand.weight[:channels, :squeezed], se.expand.bias[:channels])
    return hidden * GATE_FUNCTIONS[GATES[op.se]](scale)


def expansion_output(x: torch.Tensor, block: nn.Module, op: Op, affine: bool, eps: float) -> torch.Tensor:
    """The candidate's expand conv -> BN -> activation (the input where it has no expand conv)."""
    if not op.has_expand:
        return x
    channels = hidden_window(op.hidden_channels(x.shape[1]))
    act = ACT_FUNCTIONS[op.activation]
    return act(_bn(F.conv2d(x, block.expand.conv.weight[channels]), block.expand.bn, affine, eps))


def rest_of_block(x: torch.Tensor, hidden: torch.Tensor, block: nn.Module, op: Op, *, stride: int,
                  dilation: int, affine: bool, eps: float) -> torch.Tensor:
    """Depthwise -> BN -> activation -> SE -> project -> BN (+ the input where the block keeps its
    shape), on the candidate's slices of ``block`` (the max-size MBConv)."""
    check_dilation(stride, dilation)
    channels, act = hidden.shape[1], ACT_FUNCTIONS[op.activation]
    weight = centre_kernel(block.depthwise.conv.weight[:channels], op.kernel)
    out = F.conv2d(hidden, weight, stride=stride, padding=dilation * (op.kernel - 1) // 2, dilation=dilation,
                   groups=channels)
    out = act(_bn(out, block.depthwise.bn, affine, eps))
    if op.se:
        out = _squeeze_excite(out, block.se, op, x.shape[1], act)
    out = _bn(F.conv2d(out, block.project.conv.weight[:, :channels]), block.project.bn, affine, eps)
    return out + x if stride == 1 and out.shape[1] == x.shape[1] else out


def sampled_block(x: torch.Tensor, block: nn.Module, op: Op, *, stride: int, dilation: int, affine: bool,
                  eps: float) -> torch.Tensor:
    """Candidate ``op`` of the max-size MBConv ``block`` on ``x``."""
    hidden = expansion_output(x, block, op, affine, eps)
    return rest_of_block(x, hidden, block, op, stride=stride, dilation=dilation, affine=affine, eps=eps)
