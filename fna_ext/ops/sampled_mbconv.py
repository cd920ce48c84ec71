"""The super network's sampled path: one MBConv block whose weights are slices of max-size
weights (Once-for-All style). Kernel k uses the centre k x k of the max kernel, and expansion e
the first e * C_in hidden channels. BatchNorm uses the batch's statistics (the published super
network keeps no running statistics), with optional affine parameters sliced the same way.

This is the pure-PyTorch definition; the fused kernels replace its body without changing its
signature or its callers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import batch_norm as global_batch_norm


def _slice(t: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    return None if t is None else t[:channels]


def _bn(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    # batch statistics over the global batch when several processes share it
    channels = x.shape[1]
    return global_batch_norm(x, _slice(weight, channels), _slice(bias, channels), eps)


def centre_kernel(dw_weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The centre ``kernel_size`` x ``kernel_size`` taps of a (C, 1, K, K) depthwise weight."""
    k_max = dw_weight.shape[-1]
    if kernel_size > k_max or kernel_size % 2 != k_max % 2:
        raise ValueError(f"kernel_size {kernel_size} does not fit centred in a {k_max}x{k_max} weight")
    start = (k_max - kernel_size) // 2
    return dw_weight[:, :, start:start + kernel_size, start:start + kernel_size]


def expand_hidden(x: torch.Tensor, expand_weight: torch.Tensor, expand_channels: int, bn1_weight=None,
                  bn1_bias=None, eps: float = 1e-5) -> torch.Tensor:
    """expand 1x1 -> BN1 -> ReLU6 on the first ``expand_channels`` rows. Every op is per channel,
    so the first e3 channels of the e6 result are exactly the e3 result: a mixture computes the
    widest once."""
    return F.relu6(_bn(F.conv2d(x, expand_weight[:expand_channels]), bn1_weight, bn1_bias, eps))


def depthwise_project(x: torch.Tensor, hidden: torch.Tensor, dw_weight: torch.Tensor,
                      project_weight: torch.Tensor, *, kernel_size: int, stride: int = 1, bn2_weight=None,
                      bn2_bias=None, bn3_weight=None, bn3_bias=None, eps: float = 1e-5) -> torch.Tensor:
    """The rest of the block on ``hidden`` (its channel count is the expansion): depthwise k x k ->
    BN2 -> ReLU6 -> project 1x1 -> BN3, plus the residual ``x`` when the shapes allow."""
    e = hidden.shape[1]
    hidden = F.conv2d(hidden, centre_kernel(dw_weight[:e], kernel_size), stride=stride,
                      padding=kernel_size // 2, groups=e)
    hidden = F.relu6(_bn(hidden, bn2_weight, bn2_bias, eps))
    out = _bn(F.conv2d(hidden, project_weight[:, :e]), bn3_weight, bn3_bias, eps)
    return out + x if stride == 1 and out.shape[1] == x.shape[1] else out


def sampled_mbconv(x: torch.Tensor, expand_weight: torch.Tensor | None, dw_weight: torch.Tensor,
                   project_weight: torch.Tensor, *, kernel_size: int, expand_channels: int,
                   stride: int = 1, bn1_weight=None, bn1_bias=None, bn2_weight=None, bn2_bias=None,
                   bn3_weight=None, bn3_bias=None, eps: float = 1e-5) -> torch.Tensor:
    """expand 1x1 -> BN1 -> ReLU6 -> depthwise k x k (stride) -> BN2 -> ReLU6 -> project 1x1 ->
    BN3 (+ x when stride is 1 and C_in == C_out), on the slices of the max-size weights
    ``(E_max, C_in, 1, 1)``, ``(E_max, 1, K_max, K_max)`` and ``(C_out, E_max, 1, 1)``.
    ``expand_weight=None`` means no expansion conv (``expand_channels`` must be C_in)."""
    c_in = x.shape[1]
    e = expand_channels
    if e < 1 or e > dw_weight.shape[0]:
        raise ValueError(f"expand_channels {e} is outside 1..{dw_weight.shape[0]} (E_max)")
    if expand_weight is None:
        if e != c_in:
            raise ValueError(f"without an expansion conv, expand_channels must equal C_in ({c_in}), got {e}")
        hidden = x
    else:
        hidden = expand_hidden(x, expand_weight, e, bn1_weight, bn1_bias, eps)
    return depthwise_project(x, hidden, dw_weight, project_weight, kernel_size=kernel_size, stride=stride,
                             bn2_weight=bn2_weight, bn2_bias=bn2_bias, bn3_weight=bn3_weight,
                             bn3_bias=bn3_bias, eps=eps)
