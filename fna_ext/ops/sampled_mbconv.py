"""The super network's sampled path: one MBConv block whose weights are slices of max-size
weights (Once-for-All style). Kernel k uses the centre k x k of the max kernel, and expansion e
the first e * C_in hidden channels. BatchNorm uses the batch's statistics (the published super
network keeps no running statistics), with optional affine parameters sliced the same way.

Two implementations with one signature:

- fused: the ``fna_ext::sampled_mbconv_*`` and ``fna_ext::depthwise_project_*`` C++/CUDA ops
  (csrc/mbconv), a few kernels per direction instead of eager PyTorch's chain of ten or more,
  slicing inside the kernels and writing gradients straight into the max-size weights' shape;
- reference: the pure-PyTorch definition below (``*_reference``), what the tests compare the
  fused ops with.

:func:`sampled_mbconv` and :func:`depthwise_project` take the fused path whenever the extension
has a kernel for the input's device and dtype, unless :func:`set_fused(False) <set_fused>` (the
CLIs' ``--no-fused``) says otherwise. Under ``torchrun`` they take the reference, whose BatchNorm
reduces its statistics over every process (:mod:`fna_ext.engine.distributed`).

``dilation`` spaces the depthwise taps (padding ``dilation * (k - 1) // 2``): dense tasks keep
output stride 16 or 8 by turning a stage's stride into dilation (DeepLab), so a dilated block has
stride 1; the two together are rejected.

The NAS seeds' blocks (MnasNet, FBNet, MobileNetV3, EfficientNet) run through the same ops:
``activation`` replaces both ReLU6s (``"relu"``, ``"hardswish"``, ``"swish"``), and ``se``
(a :class:`SqueezeExcite`) gates the depthwise conv's activation before the projection.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import _extension
from .autograd import register_autograd
from .slices import kernel_window
from ..engine import distributed
from ..engine.distributed import batch_norm as global_batch_norm

FUSED_KERNEL_SIZES = (3, 5, 7)  # the search spaces' kernels; others run the reference
_FUSED_DTYPES = {"cpu": (torch.float32, torch.float64),
                 "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
_fused_enabled = True
# the ops' integer codes (csrc/mbconv/activation.h)
ACTIVATION_CODES = {"relu6": 0, "relu": 1, "hardswish": 2, "swish": 3}
GATE_CODES = {"sigmoid": 0, "hardsigmoid": 1}
_ACTIVATIONS = {"relu6": F.relu6, "relu": F.relu, "hardswish": F.hardswish, "swish": F.silu}
_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


class SqueezeExcite(NamedTuple):
    """A squeeze-and-excitation on the first ``channels`` squeezed channels of max-size
    ``(S_max, E_max, 1, 1)`` reduce and ``(E_max, S_max, 1, 1)`` expand convs (with biases):
    ``hidden * gate(expand(activation(reduce(mean(hidden)))))`` (Once-for-All's dynamic SE)."""

    reduce_weight: torch.Tensor
    reduce_bias: torch.Tensor
    expand_weight: torch.Tensor
    expand_bias: torch.Tensor
    channels: int
    activation: str = "relu"
    gate: str = "sigmoid"

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The reference: eager PyTorch."""
        e, s = hidden.shape[1], self.channels
        scale = F.conv2d(hidden.mean((2, 3), keepdim=True), self.reduce_weight[:s, :e], self.reduce_bias[:s])
        scale = F.conv2d(_ACTIVATIONS[self.activation](scale), self.expand_weight[:e, :s], self.expand_bias[:e])
        return hidden * _GATES[self.gate](scale)


def _check_attributes(activation: str, se: SqueezeExcite | None) -> None:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATION_CODES)}")
    if se is not None and (se.activation not in ACTIVATION_CODES or se.gate not in GATE_CODES):
        raise ValueError(f"SE activation {se.activation!r} / gate {se.gate!r}: the activation must be one of "
                         f"{sorted(ACTIVATION_CODES)} and the gate one of {sorted(GATE_CODES)}")


def _attribute_args(x: torch.Tensor, activation: str, se: SqueezeExcite | None) -> tuple:
    """The ops' trailing arguments: activation, the SE's four tensors (in x's dtype), its width,
    inner activation and gate."""
    if se is None:
        return (ACTIVATION_CODES[activation], None, None, None, None, 0, 1, 0)
    tensors = _like_x(x, se.reduce_weight, se.reduce_bias, se.expand_weight, se.expand_bias)
    return (ACTIVATION_CODES[activation], *tensors, int(se.channels), ACTIVATION_CODES[se.activation],
            GATE_CODES[se.gate])


def set_fused(enabled: bool) -> None:
    """Lets :func:`sampled_mbconv` use the fused kernels (the default) or forces the reference."""
    global _fused_enabled
    _fused_enabled = bool(enabled)


# The devices whose fused kernels beat eager PyTorch, measured (benchmarks/RESULTS.md): CPUs (up to
# 2.4x). On an H200 the CUDA kernels ran at 0.91-1.17x eager at the search shapes, forward and
# backward (2026-12-04, second run; 2.0x at N=256), where the step waits on the host: a GPU
# search runs eager unless told otherwise (search.fused: true).
FUSED_BY_DEFAULT = frozenset({"cpu"})


def fused_setting(value, device: str | torch.device) -> bool:
    """The fused switch a run on ``device`` uses for the setting ``search.fused`` ("auto", true or
    false)."""
    text = value.lower() if isinstance(value, str) else None  # a hand-built config's text
    if text == "auto":
        return torch.device(device).type in FUSED_BY_DEFAULT
    if text in ("true", "false"):
        return text == "true"
    if isinstance(value, bool):
        return value
    raise ValueError(f"search.fused must be auto, true or false, got {value!r}")


def fused_enabled() -> bool:
    return _fused_enabled


@contextlib.contextmanager
def fused(enabled: bool):
    """``with fused(False): ...`` runs the block with the reference and restores the setting."""
    previous = _fused_enabled
    set_fused(enabled)
    try:
        yield
    finally:
        set_fused(previous)


def takes_fused_path(x: torch.Tensor, kernel_size: int) -> bool:
    """Whether :func:`sampled_mbconv` would run the fused op for this input."""
    return (_fused_enabled and distributed.current() is None and kernel_size in FUSED_KERNEL_SIZES
            and x.dtype in _FUSED_DTYPES.get(x.device.type, ())
            and _extension.has_kernel("sampled_mbconv_forward", x.device))


def _slice(t: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    return None if t is None else t[:channels]


def _bn(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    # batch statistics over the global batch when several processes share it
    channels = x.shape[1]
    return global_batch_norm(x, _slice(weight, channels), _slice(bias, channels), eps)


def check_dilation(stride: int, dilation: int) -> None:
    """Raises ValueError unless ``dilation`` is a positive int that comes with stride 1."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    if dilation > 1 and stride != 1:
        raise ValueError(f"stride {stride} with dilation {dilation}: a dilated block must have stride 1 "
                         "(DeepLab replaces a stride by dilation, never combines the two)")


def _same_padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size - 1) // 2


def centre_kernel(dw_weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The centre ``kernel_size`` x ``kernel_size`` taps of a (C, 1, K, K) depthwise weight."""
    taps = kernel_window(dw_weight.shape[-1], kernel_size)
    return dw_weight[:, :, taps, taps]


def expand_hidden(x: torch.Tensor, expand_weight: torch.Tensor, expand_channels: int, bn1_weight=None,
                  bn1_bias=None, eps: float = 1e-5, activation: str = "relu6") -> torch.Tensor:
    """expand 1x1 -> BN1 -> activation on the first ``expand_channels`` rows. Every op is per
    channel, so the first e3 channels of the e6 result are exactly the e3 result: a mixture
    computes the widest once."""
    return _ACTIVATIONS[activation](_bn(F.conv2d(x, expand_weight[:expand_channels]), bn1_weight, bn1_bias, eps))


def depthwise_project_reference(x: torch.Tensor, hidden: torch.Tensor, dw_weight: torch.Tensor,
                                project_weight: torch.Tensor, *, kernel_size: int, stride: int = 1,
                                bn2_weight=None, bn2_bias=None, bn3_weight=None, bn3_bias=None,
                                eps: float = 1e-5, dilation: int = 1, activation: str = "relu6",
                                se: SqueezeExcite | None = None) -> torch.Tensor:
    """Pure-PyTorch :func:`depthwise_project`."""
    check_dilation(stride, dilation)
    _check_attributes(activation, se)
    e = hidden.shape[1]
    hidden = F.conv2d(hidden, centre_kernel(dw_weight[:e], kernel_size), stride=stride,
                      padding=_same_padding(kernel_size, dilation), dilation=dilation, groups=e)
    hidden = _ACTIVATIONS[activation](_bn(hidden, bn2_weight, bn2_bias, eps))
    if se is not None:
        hidden = se(hidden)
    out = _bn(F.conv2d(hidden, project_weight[:, :e]), bn3_weight, bn3_bias, eps)
    return out + x if stride == 1 and out.shape[1] == x.shape[1] else out


def sampled_mbconv_reference(x: torch.Tensor, expand_weight: torch.Tensor | None, dw_weight: torch.Tensor,
                             project_weight: torch.Tensor, *, kernel_size: int, expand_channels: int,
                             stride: int = 1, bn1_weight=None, bn1_bias=None, bn2_weight=None, bn2_bias=None,
                             bn3_weight=None, bn3_bias=None, eps: float = 1e-5, dilation: int = 1,
                             activation: str = "relu6", se: SqueezeExcite | None = None) -> torch.Tensor:
    """Pure-PyTorch :func:`sampled_mbconv`."""
    _check(x, expand_weight, dw_weight, expand_channels)
    check_dilation(stride, dilation)
    _check_attributes(activation, se)
    hidden = x if expand_weight is None else expand_hidden(x, expand_weight, expand_channels, bn1_weight,
                                                           bn1_bias, eps, activation)
    return depthwise_project_reference(x, hidden, dw_weight, project_weight, kernel_size=kernel_size,
                                       stride=stride, bn2_weight=bn2_weight, bn2_bias=bn2_bias,
                                       bn3_weight=bn3_weight, bn3_bias=bn3_bias, eps=eps, dilation=dilation,
                                       activation=activation, se=se)


def _check(x, expand_weight, dw_weight, expand_channels: int) -> None:
    e = expand_channels
    if e < 1 or e > dw_weight.shape[0]:
        raise ValueError(f"expand_channels {e} is outside 1..{dw_weight.shape[0]} (E_max)")
    if expand_weight is None and e != x.shape[1]:
        raise ValueError(f"without an expansion conv, expand_channels must equal C_in ({x.shape[1]}), got {e}")


def _like_x(x: torch.Tensor, *tensors):
    # One dtype for the kernels (autocast hands bf16 activations with fp32 weights); the cast is
    # differentiable, so gradients reach the parameters in their own dtype.
    return [t if t is None or t.dtype == x.dtype else t.to(x.dtype) for t in tensors]


def depthwise_project(x: torch.Tensor, hidden: torch.Tensor, dw_weight: torch.Tensor,
                      project_weight: torch.Tensor, *, kernel_size: int, stride: int = 1, bn2_weight=None,
                      bn2_bias=None, bn3_weight=None, bn3_bias=None, eps: float = 1e-5,
                      dilation: int = 1, activation: str = "relu6", se: SqueezeExcite | None = None) -> torch.Tensor:
    """The rest of the block on ``hidden`` (its channel count is the expansion): depthwise k x k
    (taps ``dilation`` apart) -> BN2 -> activation (-> SE) -> project 1x1 -> BN3, plus the
    residual ``x`` when the shapes allow."""
    kernel_window(dw_weight.shape[-1], kernel_size)  # checks that k fits, without slicing a tensor
    check_dilation(stride, dilation)
    _check_attributes(activation, se)
    if not takes_fused_path(x, kernel_size):
        return depthwise_project_reference(x, hidden, dw_weight, project_weight, kernel_size=kernel_size,
                                           stride=stride, bn2_weight=bn2_weight, bn2_bias=bn2_bias,
                                           bn3_weight=bn3_weight, bn3_bias=bn3_bias, eps=eps, dilation=dilation,
                                           activation=activation, se=se)
    tensors = _like_x(x, hidden, dw_weight, project_weight, bn2_weight, bn2_bias, bn3_weight, bn3_bias)
    return torch.ops.fna_ext.depthwise_project_forward(x, *tensors, int(kernel_size), int(stride), float(eps),
                                                       int(dilation), *_attribute_args(x, activation, se))[0]


def sampled_mbconv(x: torch.Tensor, expand_weight: torch.Tensor | None, dw_weight: torch.Tensor,
                   project_weight: torch.Tensor, *, kernel_size: int, expand_channels: int,
                   stride: int = 1, bn1_weight=None, bn1_bias=None, bn2_weight=None, bn2_bias=None,
                   bn3_weight=None, bn3_bias=None, eps: float = 1e-5, dilation: int = 1,
                   activation: str = "relu6", se: SqueezeExcite | None = None) -> torch.Tensor:
    """expand 1x1 -> BN1 -> act -> depthwise k x k (stride, or taps ``dilation`` apart) -> BN2 ->
    act (-> SE) -> project 1x1 -> BN3 (+ x when stride is 1 and C_in == C_out), on the slices of
    the max-size weights ``(E_max, C_in, 1, 1)``, ``(E_max, 1, K_max, K_max)`` and
    ``(C_out, E_max, 1, 1)``. ``expand_weight=None`` means no expansion conv (``expand_channels``
    must be C_in). ``act`` is ``activation`` (ReLU6, MobileNetV2's, by default)."""
    _check(x, expand_weight, dw_weight, expand_channels)
    kernel_window(dw_weight.shape[-1], kernel_size)  # checks that k fits, without slicing a tensor
    check_dilation(stride, dilation)
    _check_attributes(activation, se)
    bn23 = dict(bn2_weight=bn2_weight, bn2_bias=bn2_bias, bn3_weight=bn3_weight, bn3_bias=bn3_bias, eps=eps,
                dilation=dilation, activation=activation, se=se)
    if expand_weight is None:
        return depthwise_project(x, x, dw_weight, project_weight, kernel_size=kernel_size, stride=stride, **bn23)
    if not takes_fused_path(x, kernel_size):
        return sampled_mbconv_reference(x, expand_weight, dw_weight, project_weight, kernel_size=kernel_size,
                                        expand_channels=expand_channels, stride=stride, bn1_weight=bn1_weight,
                                        bn1_bias=bn1_bias, **bn23)
    tensors = _like_x(x, expand_weight, dw_weight, project_weight, bn1_weight, bn1_bias, bn2_weight, bn2_bias,
                      bn3_weight, bn3_bias)
    return torch.ops.fna_ext.sampled_mbconv_forward(x, *tensors, int(kernel_size), int(expand_channels),
                                                    int(stride), float(eps), int(dilation),
                                                    *_attribute_args(x, activation, se))[0]


# ---- registration of the fused ops: fake kernels (shapes for torch.compile) and autograd ------

def _out_size(size: int, kernel_size: int, stride: int, dilation: int = 1) -> int:
    extent = dilation * (kernel_size - 1) + 1  # the dilated window's span
    return (size + 2 * _same_padding(kernel_size, dilation) - extent) // stride + 1


def _channels_last(x: torch.Tensor, n: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _fake_tail(x, hidden_channels, project_weight, kernel_size, stride, dilation, with_bn1, attributes):
    n, _, h, w = x.shape
    ho, wo = _out_size(h, kernel_size, stride, dilation), _out_size(w, kernel_size, stride, dilation)
    e, c_out = hidden_channels, project_weight.shape[0]
    se_pooled = n * e if _attributes(attributes, 0)[_SE_TENSORS][0] is not None else 0  # the SE's means
    # the layout is the kernels' to decide: ask them rather than re-encode it here
    stats = x.new_empty((torch.ops.fna_ext.sampled_stats_size(int(e), int(c_out), with_bn1, se_pooled),),
                        dtype=torch.float64)
    return (_channels_last(x, n, c_out, ho, wo), _channels_last(x, n, e, ho, wo),
            _channels_last(x, n, c_out, ho, wo), stats)


# The ops' trailing attribute arguments (activation, the SE's four tensors, its width, inner
# activation and gate), with their schema defaults, and where the SE tensors sit among them.
_ATTRIBUTE_DEFAULTS = (0, None, None, None, None, 0, 1, 0)
_SE_TENSORS = slice(1, 5)
_SAMPLED_TENSORS, _SAMPLED_SCALARS = 10, 5  # x, 3 weights, 6 BN params; kernel_size .. dilation
_TAIL_TENSORS, _TAIL_SCALARS = 8, 4         # x, hidden, 2 weights, 4 BN params; kernel_size .. dilation


def _attributes(inputs, first: int) -> tuple:
    given = tuple(inputs[first:])
    return given + _ATTRIBUTE_DEFAULTS[len(given):]


def _fake_se_grads(x, attributes, weight_grads):
    se = attributes[_SE_TENSORS]
    if not weight_grads or se[0] is None:
        return [x.new_empty(0) for _ in se]
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in se]


def _fake_sampled_forward(x, expand_weight, dw_weight, project_weight, bn1_w, bn1_b, bn2_w, bn2_b, bn3_w, bn3_b,
                          kernel_size, expand_channels, stride, eps, dilation=1, *attributes):
    out, h2, h3, stats = _fake_tail(x, expand_channels, project_weight, kernel_size, stride, dilation,
                                    with_bn1=True, attributes=attributes)
    h1 = _channels_last(x, x.shape[0], expand_channels, x.shape[2], x.shape[3])
    return out, h1, h2, h3, stats


def _fake_tail_forward(x, hidden, dw_weight, project_weight, bn2_w, bn2_b, bn3_w, bn3_b, kernel_size, stride, eps,
                       dilation=1, *attributes):
    return _fake_tail(x, hidden.shape[1], project_weight, kernel_size, stride, dilation, with_bn1=False,
                      attributes=attributes)


def _fake_grads(x, params, bns, weight_grads):
    if not weight_grads:
        return [x.new_empty(0) for _ in (*params, *bns)]
    grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    grads += [torch.empty_like(b) if b is not None else x.new_empty(0) for b in bns]
    return grads


def _fake_sampled_backward(grad_out, x, expand_weight, dw_weight, project_weight, bn1_w, bn1_b, bn2_w, bn2_b,
                           bn3_w, bn3_b, h1, h2, h3, stats, kernel_size, stride, weight_grads, dilation=1,
                           *attributes):
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    return ([grad_x] + _fake_grads(x, (expand_weight, dw_weight, project_weight),
                                   (bn1_w, bn1_b, bn2_w, bn2_b, bn3_w, bn3_b), weight_grads)
            + _fake_se_grads(x, _attributes(attributes, 0), weight_grads))


def _fake_tail_backward(grad_out, x, hidden, dw_weight, project_weight, bn2_w, bn2_b, bn3_w, bn3_b, h2, h3, stats,
                        kernel_size, stride, weight_grads, dilation=1, *attributes):
    residual = stride == 1 and project_weight.shape[0] == x.shape[1]
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if residual else x.new_empty(0)
    grad_hidden = torch.empty_like(hidden, memory_format=torch.channels_last)
    return ([grad_x, grad_hidden] + _fake_grads(x, (dw_weight, project_weight), (bn2_w, bn2_b, bn3_w, bn3_b),
                                                weight_grads)
            + _fake_se_grads(x, _attributes(attributes, 0), weight_grads))


def _none_if_empty(grads):
    return tuple(g if g.numel() else None for g in grads)


def _setup(ctx, inputs, tensors: int, scalars: int, saved_outputs) -> None:
    """Saves the op's tensors, the outputs backward needs and the SE's tensors; keeps the scalars."""
    attributes = _attributes(inputs, tensors + scalars)
    ctx.save_for_backward(*inputs[:tensors], *saved_outputs, *attributes[_SE_TENSORS])
    ctx.scalars = tuple(inputs[tensors:tensors + scalars])
    ctx.attributes = attributes
    # Only `out` is differentiable: without this autograd would fill hidden-sized zero gradients
    # for the saved tensors on every backward.
    ctx.set_materialize_grads(False)


def _backward_args(ctx, weight_params: slice, tensors: int, scalars: int):
    """(saved tensors in the backward op's order, weight_grads, trailing attribute arguments)."""
    *saved, rw, rb, ew, eb = ctx.saved_tensors
    se_first = tensors + scalars + 1
    # false in architecture steps, where every weight is frozen: no weight gradients then
    weight_grads = any(ctx.needs_input_grad[weight_params]) or any(ctx.needs_input_grad[se_first:se_first + 4])
    attributes = (ctx.attributes[0], rw, rb, ew, eb, *ctx.attributes[5:])
    return saved, weight_grads, attributes


def _input_grads(grads, tensors: int, scalars: int) -> tuple:
    """The op's gradients laid out over its inputs: tensors, scalars, activation, SE, SE scalars."""
    grads = _none_if_empty(grads)
    return grads[:tensors] + (None,) * (scalars + 1) + grads[tensors:] + (None,) * 3


def _setup_sampled(ctx, inputs, output):
    _, h1, h2, h3, stats = output
    _setup(ctx, inputs, _SAMPLED_TENSORS, _SAMPLED_SCALARS, (h1, h2, h3, stats))


def _backward_sampled(ctx, grad_out, *_):
    if grad_out is None:
        return (None,) * (_SAMPLED_TENSORS + _SAMPLED_SCALARS + len(_ATTRIBUTE_DEFAULTS))
    saved, weight_grads, attributes = _backward_args(ctx, slice(1, _SAMPLED_TENSORS), _SAMPLED_TENSORS,
                                                     _SAMPLED_SCALARS)
    kernel_size, _, stride, _, dilation = ctx.scalars
    grads = torch.ops.fna_ext.sampled_mbconv_backward(grad_out, *saved, kernel_size, stride, weight_grads, dilation,
                                                      *attributes)
    return _input_grads(grads, _SAMPLED_TENSORS, _SAMPLED_SCALARS)


def _setup_tail(ctx, inputs, output):
    _, h2, h3, stats = output
    _setup(ctx, inputs, _TAIL_TENSORS, _TAIL_SCALARS, (h2, h3, stats))


def _backward_tail(ctx, grad_out, *_):
    if grad_out is None:
        return (None,) * (_TAIL_TENSORS + _TAIL_SCALARS + len(_ATTRIBUTE_DEFAULTS))
    saved, weight_grads, attributes = _backward_args(ctx, slice(2, _TAIL_TENSORS), _TAIL_TENSORS, _TAIL_SCALARS)
    kernel_size, stride, _, dilation = ctx.scalars
    grads = torch.ops.fna_ext.depthwise_project_backward(grad_out, *saved, kernel_size, stride, weight_grads,
                                                         dilation, *attributes)
    return _input_grads(grads, _TAIL_TENSORS, _TAIL_SCALARS)


def _register() -> None:
    if not hasattr(torch.ops.fna_ext, "sampled_mbconv_forward"):
        return  # an extension built from older sources
    lib = torch.library
    lib.register_fake("fna_ext::sampled_mbconv_forward", _fake_sampled_forward)
    lib.register_fake("fna_ext::sampled_mbconv_backward", _fake_sampled_backward)
    lib.register_fake("fna_ext::depthwise_project_forward", _fake_tail_forward)
    lib.register_fake("fna_ext::depthwise_project_backward", _fake_tail_backward)
    register_autograd("fna_ext::sampled_mbconv_forward", _backward_sampled, setup_context=_setup_sampled)
    register_autograd("fna_ext::depthwise_project_forward", _backward_tail, setup_context=_setup_tail)


_extension.on_load(_register)
