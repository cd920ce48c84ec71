"""One searched layer's mixture of MBConv candidates over shared weights, as one op.

An architecture step runs every candidate ``(k, e)`` of a layer and weights them by
softmax(alpha). With shared weights (Once-for-All style slices of one max-size block) the
candidates share more than the expansion: the depthwise conv, BN2 and ReLU6 are per channel, so
``(k, e3)`` is the first e3 channels of ``(k, e6)``, and the projections nest
(``P(k, e6) = P(k, e3) + a[:, e3:e6] Wp[:, e3:e6]^T``). The ops here compute the expansion once,
the depthwise conv once per kernel size and the projection once per kernel size, where one op per
candidate repeats all three for every candidate (``fna_ext::mixture_*``,
csrc/mbconv/mixture_driver.h):

- :func:`mbconv_mixture` from ``x``, the expansion included (BN1 and ReLU6 applied as the
  depthwise convs load it, so the activated expansion is never stored);
- :func:`depthwise_project_mixture` from an activated expansion ``hidden``, for a layer whose
  expansion output a detector taps.

Their backward returns the gradients of ``x``, ``hidden`` and the mixture weights: architecture
steps freeze the network's weights. When a weight does need a gradient, or the fused kernels do
not apply (:func:`~fna_ext.ops.sampled_mbconv.takes_fused_path`), they run the ``*_reference``
versions: the expansion once, then one :func:`~fna_ext.ops.depthwise_project` per candidate.

``dilation`` spaces every candidate's depthwise taps, as in :func:`~fna_ext.ops.sampled_mbconv`
(stride 1 only); a dilated k3 is still the centre of the dilated k7, so the sharing holds.
"""

from __future__ import annotations

import torch

from .. import _extension
from .autograd import register_autograd
from .sampled_mbconv import (_channels_last, _like_x, _out_size, check_dilation, depthwise_project, expand_hidden,
                             takes_fused_path)


def depthwise_project_mixture_reference(x: torch.Tensor, hidden: torch.Tensor, weights: torch.Tensor,
                                        dw_weight: torch.Tensor, project_weight: torch.Tensor, *,
                                        candidates: list[tuple[int, int]], stride: int = 1, bn2_weight=None,
                                        bn2_bias=None, bn3_weight=None, bn3_bias=None,
                                        eps: float = 1e-5, dilation: int = 1) -> torch.Tensor:
    """``sum_i weights[i] * depthwise_project(x, hidden[:, :e_i], ..., kernel_size=k_i)`` over
    ``candidates = [(k_i, e_i), ...]``, one op per candidate."""
    check_dilation(stride, dilation)
    out = 0
    for w, (k, e) in zip(weights, candidates):
        out = out + w * depthwise_project(x, hidden[:, :e], dw_weight, project_weight, kernel_size=k, stride=stride,
                                          bn2_weight=bn2_weight, bn2_bias=bn2_bias, bn3_weight=bn3_weight,
                                          bn3_bias=bn3_bias, eps=eps, dilation=dilation)
    return out


def mbconv_mixture_reference(x: torch.Tensor, expand_weight: torch.Tensor, weights: torch.Tensor,
                             dw_weight: torch.Tensor, project_weight: torch.Tensor, *,
                             candidates: list[tuple[int, int]], stride: int = 1, bn1_weight=None, bn1_bias=None,
                             eps: float = 1e-5, dilation: int = 1, **bn23) -> torch.Tensor:
    """The widest candidate's expansion once, then :func:`depthwise_project_mixture_reference`."""
    check_dilation(stride, dilation)
    hidden = expand_hidden(x, expand_weight, max(e for _, e in candidates), bn1_weight, bn1_bias, eps)
    return depthwise_project_mixture_reference(x, hidden, weights, dw_weight, project_weight, candidates=candidates,
                                               stride=stride, eps=eps, dilation=dilation, **bn23)


def _check(channels: int, weights: torch.Tensor, candidates) -> None:
    if not candidates:
        raise ValueError("a mixture needs at least one (kernel_size, expansion) candidate")
    if weights.shape != (len(candidates),):
        raise ValueError(f"weights must hold one value per candidate ({len(candidates)}), got shape "
                         f"{tuple(weights.shape)}")
    for k, e in candidates:
        if not 1 <= e <= channels:
            raise ValueError(f"candidate (k{k}, {e} channels) is wider than the {channels} channels available")


def takes_fused_mixture(x: torch.Tensor, candidates, *params) -> bool:
    """Whether the mixture ops run fused: the fused kernels apply to every candidate and no
    weight needs a gradient."""
    frozen = not torch.is_grad_enabled() or not any(p is not None and p.requires_grad for p in params)
    return frozen and all(takes_fused_path(x, k) for k, _ in candidates) and _extension.has_kernel(
        "mixture_mbconv_forward", x.device)


def _op_lists(candidates) -> tuple[list[int], list[int]]:
    return [int(k) for k, _ in candidates], [int(e) for _, e in candidates]


def mbconv_mixture(x: torch.Tensor, expand_weight: torch.Tensor, weights: torch.Tensor, dw_weight: torch.Tensor,
                   project_weight: torch.Tensor, *, candidates: list[tuple[int, int]], stride: int = 1,
                   bn1_weight=None, bn1_bias=None, bn2_weight=None, bn2_bias=None, bn3_weight=None, bn3_bias=None,
                   eps: float = 1e-5, dilation: int = 1, recompute: bool = False) -> torch.Tensor:
    """The weighted sum over ``candidates = [(k_i, e_i), ...]`` of
    :func:`~fna_ext.ops.sampled_mbconv` ``(x, ..., kernel_size=k_i, expand_channels=e_i)``, with
    ``weights[i]`` as candidate i's weight; every candidate slices the same max-size weights.
    ``recompute`` keeps neither the expansion nor the depthwise outputs for the backward, which
    computes them again: about half the memory an architecture step keeps, for one more pass of
    the expansion GEMM and the depthwise convs (fused only; bit-identical results)."""
    _check(dw_weight.shape[0], weights, candidates)
    check_dilation(stride, dilation)
    bns = dict(bn1_weight=bn1_weight, bn1_bias=bn1_bias, bn2_weight=bn2_weight, bn2_bias=bn2_bias,
               bn3_weight=bn3_weight, bn3_bias=bn3_bias)
    if not takes_fused_mixture(x, candidates, expand_weight, dw_weight, project_weight, *bns.values()):
        return mbconv_mixture_reference(x, expand_weight, weights, dw_weight, project_weight, candidates=candidates,
                                        stride=stride, eps=eps, dilation=dilation, **bns)
    tensors = _like_x(x, expand_weight, weights, dw_weight, project_weight, *bns.values())
    return torch.ops.fna_ext.mixture_mbconv_forward(x, *tensors, *_op_lists(candidates), int(stride), float(eps),
                                                    int(dilation), bool(recompute))[0]


def depthwise_project_mixture(x: torch.Tensor, hidden: torch.Tensor, weights: torch.Tensor, dw_weight: torch.Tensor,
                              project_weight: torch.Tensor, *, candidates: list[tuple[int, int]], stride: int = 1,
                              bn2_weight=None, bn2_bias=None, bn3_weight=None, bn3_bias=None,
                              eps: float = 1e-5, dilation: int = 1, recompute: bool = False) -> torch.Tensor:
    """The weighted sum over ``candidates = [(k_i, e_i), ...]`` of depthwise k_i x k_i -> BN2 ->
    ReLU6 -> project 1x1 -> BN3 (+ x) on the first e_i channels of ``hidden`` (the shared,
    activated expansion), with ``weights[i]`` as candidate i's weight; ``recompute`` as in
    :func:`mbconv_mixture`."""
    _check(hidden.shape[1], weights, candidates)
    check_dilation(stride, dilation)
    bns = dict(bn2_weight=bn2_weight, bn2_bias=bn2_bias, bn3_weight=bn3_weight, bn3_bias=bn3_bias)
    if not takes_fused_mixture(x, candidates, dw_weight, project_weight, *bns.values()):
        return depthwise_project_mixture_reference(x, hidden, weights, dw_weight, project_weight,
                                                   candidates=candidates, stride=stride, eps=eps, dilation=dilation,
                                                   **bns)
    tensors = _like_x(x, hidden, weights, dw_weight, project_weight, *bns.values())
    return torch.ops.fna_ext.mixture_depthwise_project_forward(x, *tensors, *_op_lists(candidates), int(stride),
                                                               float(eps), int(dilation), bool(recompute))[0]


# ---- registration: fake kernels and autograd -----------------------------------------------------

def _fake_saved(x, project_weight, kernel_sizes, expansions, stride, dilation, expand, recompute):
    n, _, h, w = x.shape
    ho, wo = _out_size(h, kernel_sizes[0], stride, dilation), _out_size(w, kernel_sizes[0], stride, dilation)
    width, c_out, kernels = max(expansions), project_weight.shape[0], len(set(kernel_sizes))
    h2 = x.new_empty((0,) if recompute else (kernels, n * ho * wo, width))
    h3 = x.new_empty((len(expansions), n * ho * wo, c_out))
    # the layout is the kernels' to decide: ask them rather than re-encode it here
    size = torch.ops.fna_ext.mixture_stats_size(list(kernel_sizes), list(expansions), int(c_out), expand)
    stats = x.new_empty((size,), dtype=torch.float64)
    return _channels_last(x, n, c_out, ho, wo), h2, h3, stats


def _fake_mbconv_forward(x, expand_weight, weights, dw_weight, project_weight, bn1_w, bn1_b, bn2_w, bn2_b, bn3_w,
                         bn3_b, kernel_sizes, expansions, stride, eps, dilation=1, recompute=False):
    out, h2, h3, stats = _fake_saved(x, project_weight, kernel_sizes, expansions, stride, dilation, True, recompute)
    h1 = x.new_empty(0) if recompute else _channels_last(x, x.shape[0], max(expansions), x.shape[2], x.shape[3])
    return out, h1, h2, h3, stats


def _fake_mbconv_backward(grad_out, x, expand_weight, weights, dw_weight, project_weight, bn1_w, bn1_b, bn2_w,
                          bn2_b, bn3_w, bn3_b, h1, h2, h3, stats, kernel_sizes, expansions, stride, dilation=1):
    return [torch.empty_like(x, memory_format=torch.channels_last), torch.empty_like(weights)]


def _fake_tail_forward(x, hidden, weights, dw_weight, project_weight, bn2_w, bn2_b, bn3_w, bn3_b, kernel_sizes,
                       expansions, stride, eps, dilation=1, recompute=False):
    return _fake_saved(x, project_weight, kernel_sizes, expansions, stride, dilation, False, recompute)


def _fake_tail_backward(grad_out, x, hidden, weights, dw_weight, project_weight, bn2_w, bn2_b, bn3_w, bn3_b, h2, h3,
                        stats, kernel_sizes, expansions, stride, dilation=1):
    residual = stride == 1 and project_weight.shape[0] == x.shape[1]
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if residual else x.new_empty(0)
    return [grad_x, torch.empty_like(hidden, memory_format=torch.channels_last), torch.empty_like(weights)]


def _setup(ctx, inputs, output):
    *tensors, kernel_sizes, expansions, stride, _, dilation, _ = inputs
    ctx.save_for_backward(*tensors, *output[1:])
    ctx.kernel_sizes, ctx.expansions, ctx.stride, ctx.dilation = kernel_sizes, expansions, stride, dilation
    ctx.set_materialize_grads(False)  # only `out` is differentiable


def _check_frozen(ctx, weight_positions: slice) -> None:
    if any(ctx.needs_input_grad[weight_positions]):
        raise RuntimeError("the fused mixture ops compute no weight gradients (architecture steps freeze the "
                           "weights); fna_ext.ops.mbconv_mixture runs one op per candidate when a weight needs one")


def _backward_mbconv(ctx, grad_out, *_):
    if grad_out is None:
        return (None,) * 17
    _check_frozen(ctx, slice(1, 2))
    _check_frozen(ctx, slice(3, 11))
    grad_x, grad_weights = torch.ops.fna_ext.mixture_mbconv_backward(grad_out, *ctx.saved_tensors, ctx.kernel_sizes,
                                                                     ctx.expansions, ctx.stride, ctx.dilation)
    return (grad_x, None, grad_weights) + (None,) * 14


def _backward_tail(ctx, grad_out, *_):
    if grad_out is None:
        return (None,) * 15
    _check_frozen(ctx, slice(3, 9))
    grad_x, grad_hidden, grad_weights = torch.ops.fna_ext.mixture_depthwise_project_backward(
        grad_out, *ctx.saved_tensors, ctx.kernel_sizes, ctx.expansions, ctx.stride, ctx.dilation)
    return (grad_x if grad_x.numel() else None, grad_hidden, grad_weights) + (None,) * 12


def _register() -> None:
    if not hasattr(torch.ops.fna_ext, "mixture_mbconv_forward"):
        return  # an extension built from older sources
    lib = torch.library
    lib.register_fake("fna_ext::mixture_mbconv_forward", _fake_mbconv_forward)
    lib.register_fake("fna_ext::mixture_mbconv_backward", _fake_mbconv_backward)
    lib.register_fake("fna_ext::mixture_depthwise_project_forward", _fake_tail_forward)
    lib.register_fake("fna_ext::mixture_depthwise_project_backward", _fake_tail_backward)
    register_autograd("fna_ext::mixture_mbconv_forward", _backward_mbconv, setup_context=_setup)
    register_autograd("fna_ext::mixture_depthwise_project_forward", _backward_tail, setup_context=_setup)


_extension.on_load(_register)
