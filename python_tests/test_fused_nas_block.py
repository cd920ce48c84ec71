"""The fused sampled-MBConv ops with the NAS seeds' block attributes (ReLU, hard-swish, swish and
squeeze-and-excitation) against their pure-PyTorch reference, and the registration checks for
the new arguments (opcheck, gradcheck, bad arguments)."""

import pytest
import torch

from fna_ext import _extension, ops
from fna_ext.ops.sampled_mbconv import SqueezeExcite

from precision import assert_matches_float64

pytestmark = pytest.mark.skipif(not _extension.has_kernel("sampled_mbconv_forward", "cpu"),
                                reason="the extension has no fused sampled-MBConv kernel")

# (block activation, SE kind): MobileNetV3 (hard-swish, hard-sigmoid SE with ReLU inside), its
# ReLU stages, EfficientNet's and MnasNet's (swish / ReLU, sigmoid SE with the block's activation)
VARIANTS = [("hardswish", "hse"), ("relu", "hse"), ("swish", "se"), ("relu", "se"), ("hardswish", None),
            ("swish", None), ("relu", None), ("relu6", "se")]


def _param(*shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_()


def _block(c_in, c_out, e_max, s_max, dtype=torch.float64, device="cpu"):
    """Max-size MBConv weights, affine BN parameters and SE weights, all requiring grad."""
    p = dict(dtype=dtype, device=device)
    weights = {"expand_weight": _param(e_max, c_in, 1, 1, **p), "dw_weight": _param(e_max, 1, 7, 7, **p),
               "project_weight": _param(c_out, e_max, 1, 1, **p)}
    for i, n in enumerate((e_max, e_max, c_out), 1):
        weights[f"bn{i}_weight"], weights[f"bn{i}_bias"] = _param(n, **p), _param(n, **p)
    se = [_param(s_max, e_max, 1, 1, **p), _param(s_max, **p), _param(e_max, s_max, 1, 1, **p), _param(e_max, **p)]
    return weights, se


def _se(se_tensors, kind, activation, channels):
    if kind is None:
        return None
    inner, gate = ("relu", "hardsigmoid") if kind == "hse" else (activation, "sigmoid")
    return SqueezeExcite(*se_tensors, channels, inner, gate)


def _run(fused, x, weights, se_tensors, grad, se, **kwargs):
    with ops.fused(fused):
        y = ops.sampled_mbconv(x, **weights, se=se, **kwargs)
    leaves = [x, *weights.values(), *(se_tensors if se is not None else ())]
    return y, torch.autograd.grad(y, leaves, grad)


def _assert_same(fused, reference, **tol):
    torch.testing.assert_close(fused[0], reference[0], **tol)
    for a, b in zip(fused[1], reference[1], strict=True):
        torch.testing.assert_close(a, b, **tol)


def _assert_fused_matches_the_reference_in_float64(x, weights, se_tensors, se, **kwargs):
    """The fused block's output and every gradient against the eager reference's, to 1e-9."""
    with ops.fused(False):
        y = ops.sampled_mbconv(x, **weights, se=se, **kwargs)
    grad = torch.randn_like(y)
    _assert_same(_run(True, x, weights, se_tensors, grad, se, **kwargs),
                 _run(False, x, weights, se_tensors, grad, se, **kwargs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation, se_kind", VARIANTS)
@pytest.mark.parametrize("k, stride, dilation", [(3, 1, 1), (5, 2, 1), (7, 1, 2)])
def test_fused_block_matches_the_reference_in_float64(activation, se_kind, k, stride, dilation):
    torch.manual_seed(len(activation) * 10 + k)
    c_in, c_out = 8, 8 if stride == 1 else 12
    weights, se_tensors = _block(c_in, c_out, e_max=48, s_max=12)
    se = _se(se_tensors, se_kind, activation, channels=6)
    x = torch.randn(2, c_in, 9, 11, dtype=torch.float64, requires_grad=True)
    assert ops.takes_fused_path(x, k)
    _assert_fused_matches_the_reference_in_float64(x, weights, se_tensors, se, kernel_size=k, expand_channels=24,
                                                   stride=stride, dilation=dilation, activation=activation)


@pytest.mark.parametrize("gemm", ["own", "mkl"])
def test_se_projection_matches_the_reference_with_the_gate_in_the_rows_or_the_weight(gemm, monkeypatch):
    # The SE block's projection gates a2's rows (se_gated_act) where the backend's own product
    # takes the shape (on AVX-512 here: k = e = 80 <= 256), else multiplies the ungated a2 by each
    # image's gate-scaled weight (project_gate_in_weight): FNA_EXT_CPU_GEMM=mkl, read at every
    # call, sends every product to MKL and so takes the second on every copy.
    if gemm == "mkl":
        monkeypatch.setenv("FNA_EXT_CPU_GEMM", "mkl")
    torch.manual_seed(7)
    weights, se_tensors = _block(16, 24, e_max=96, s_max=24)
    se = _se(se_tensors, "hse", "hardswish", channels=20)
    x = torch.randn(3, 16, 8, 10, dtype=torch.float64, requires_grad=True)  # 240 rows, 80 an image
    _assert_fused_matches_the_reference_in_float64(x, weights, se_tensors, se, kernel_size=5, expand_channels=80,
                                                   activation="hardswish")


@pytest.mark.parametrize("activation, se_kind", [("hardswish", "hse"), ("swish", "se"), ("relu", None)])
@pytest.mark.parametrize("stride, c_out", [(1, 8), (2, 10)])
def test_fused_tail_on_a_shared_hidden_matches_the_reference(activation, se_kind, stride, c_out):
    """depthwise_project with an SE: what a NAS seed's mixture runs per candidate."""
    torch.manual_seed(stride)
    weights, se_tensors = _block(8, c_out, e_max=32, s_max=8)
    se = _se(se_tensors, se_kind, activation, channels=5)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(2, 32, 7, 9, dtype=torch.float64)[:, :16].requires_grad_()  # a slice, as the mixture's
    tail = {k: weights[k] for k in ("dw_weight", "project_weight", "bn2_weight", "bn2_bias", "bn3_weight",
                                    "bn3_bias")}
    results = []
    for fused in (True, False):
        with ops.fused(fused):
            y = ops.depthwise_project(x, hidden, tail["dw_weight"], tail["project_weight"], kernel_size=5,
                                      stride=stride, **{k: v for k, v in tail.items() if k.startswith("bn")},
                                      activation=activation, se=se)
        residual = stride == 1 and c_out == 8  # x reaches the output only through the residual
        leaves = [*([x] if residual else []), hidden, *tail.values(), *(se_tensors if se else ())]
        results.append((y, torch.autograd.grad(y.square().sum(), leaves)))
    _assert_same(*results, rtol=1e-9, atol=1e-9)


def test_se_gradients_are_max_size_and_zero_outside_the_slice():
    torch.manual_seed(3)
    weights, se_tensors = _block(8, 8, e_max=48, s_max=12)
    se = _se(se_tensors, "hse", "hardswish", channels=4)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    y = ops.sampled_mbconv(x, **weights, kernel_size=3, expand_channels=16, activation="hardswish", se=se)
    reduce_w, reduce_b, expand_w, expand_b = torch.autograd.grad(y.square().sum(), se_tensors)
    assert reduce_w.shape == (12, 48, 1, 1) and expand_w.shape == (48, 12, 1, 1)
    assert reduce_w[:4, :16].abs().sum() > 0 and expand_w[:16, :4].abs().sum() > 0
    inside = torch.zeros(12, 48, 1, 1, dtype=torch.bool)
    inside[:4, :16] = True
    assert reduce_w[~inside].abs().sum() == 0 and expand_w[~inside.transpose(0, 1)].abs().sum() == 0
    assert reduce_b[4:].abs().sum() == 0 and expand_b[16:].abs().sum() == 0 and expand_b[:16].abs().sum() > 0


def _op_args(dtype=torch.float64, device="cpu"):
    torch.manual_seed(4)
    weights, se_tensors = _block(4, 6, e_max=24, s_max=8, dtype=dtype, device=device)
    x = torch.randn(2, 4, 5, 7, dtype=dtype, device=device, requires_grad=True)
    return x, list(weights.values()), se_tensors


def test_opcheck_sampled_mbconv_forward_with_se_and_hardswish():
    x, weights, se = _op_args()
    torch.library.opcheck(torch.ops.fna_ext.sampled_mbconv_forward.default,
                          (x, *weights, 5, 12, 2, 1e-5, 1, 2, *se, 6, 1, 1))


def test_opcheck_depthwise_project_forward_with_se_and_swish():
    x, weights, se = _op_args()
    hidden = torch.randn(2, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fna_ext.depthwise_project_forward.default,
                          (x, hidden, *weights[1:3], *weights[5:], 3, 1, 1e-5, 1, 3, *se, 5, 3, 0))


def test_the_forward_keeps_the_se_pooled_means_for_the_backward():
    # stats: BN1's [mean, invstd], the SE's (N, e) pooled means, then BN2's and BN3's; the
    # backward takes the gate from the means rather than a pass over the pixels
    x, weights, se = _op_args()
    n, e, c_out = x.shape[0], 12, weights[2].shape[0]
    with torch.no_grad():
        _, _, h2, _, stats = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, 5, e, 2, 1e-5, 1, 2, *se, 6, 1, 1)
        plain = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, 5, e, 2, 1e-5, 1, 2)[4]
    assert stats.numel() == torch.ops.fna_ext.sampled_stats_size(e, c_out, True, n * e)
    assert plain.numel() == torch.ops.fna_ext.sampled_stats_size(e, c_out, True)
    tail = stats[stats.numel() - 2 * e - 2 * c_out:]
    mean2, invstd2 = tail[:e], tail[e:2 * e]
    pre = (h2 - mean2.view(1, e, 1, 1)) * invstd2.view(1, e, 1, 1) * weights[5][:e].view(1, e, 1, 1)
    activated = torch.nn.functional.hardswish(pre + weights[6][:e].view(1, e, 1, 1))
    pooled = stats[stats.numel() - 2 * e - 2 * c_out - n * e:stats.numel() - 2 * e - 2 * c_out].view(n, e)
    torch.testing.assert_close(pooled, activated.mean((2, 3)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation, se_kind", [("swish", "se"), ("hardswish", "hse")])
def test_gradcheck_with_se_in_float64(activation, se_kind):
    x, weights, se_tensors = _op_args()
    names = ["expand_weight", "dw_weight", "project_weight"] + [f"bn{i}_{k}" for i in (1, 2, 3)
                                                                 for k in ("weight", "bias")]

    def fn(x, *p):
        se = _se(p[9:], se_kind, activation, channels=5)
        return ops.sampled_mbconv(x, **dict(zip(names, p[:9])), kernel_size=3, expand_channels=12,
                                  activation=activation, se=se)
    assert torch.autograd.gradcheck(fn, (x, *weights, *se_tensors), eps=1e-6, atol=1e-5)


def test_se_block_results_do_not_depend_on_the_thread_count():
    """The SE's per-image sums and BN2's, like every reduction of the fused op, add fixed chunks in
    a fixed order: one thread and two give the same bits."""
    torch.manual_seed(11)
    weights, se_tensors = _block(8, 8, 48, 12, dtype=torch.float32)
    x = torch.randn(3, 8, 23, 23).to(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(3, 8, 23, 23)
    se = _se(se_tensors, "hse", "hardswish", 10)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_run(True, x, weights, se_tensors, grad, se, kernel_size=3, expand_channels=40,
                                activation="hardswish"))
    finally:
        torch.set_num_threads(threads)
    _assert_same(results[0], results[1], rtol=0, atol=0)


def test_frozen_weights_get_no_se_gradient_work():
    x, weights, se = _op_args()
    with torch.no_grad():
        out, h1, h2, h3, stats = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, 3, 12, 1, 1e-5, 1, 2, *se, 6,
                                                                          1, 1)
        grads = torch.ops.fna_ext.sampled_mbconv_backward(torch.randn_like(out), x, *weights, h1, h2, h3, stats, 3, 1,
                                                          False, 1, 2, *se, 6, 1, 1)
    assert len(grads) == 14 and grads[0].shape == x.shape
    assert all(g.numel() == 0 for g in grads[1:])


def test_a_backward_refuses_stats_from_another_block():
    # the stats' layout depends on the SE (its pooled means); another forward's would be misread
    x, weights, se = _op_args()
    with torch.no_grad():
        out, h1, h2, h3, stats = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, 3, 12, 1, 1e-5, 1, 2)
        with pytest.raises(RuntimeError, match="stats must be the forward's float64 stats"):
            torch.ops.fna_ext.sampled_mbconv_backward(torch.randn_like(out), x, *weights, h1, h2, h3, stats, 3, 1,
                                                      True, 1, 2, *se, 6, 1, 1)
        hidden = torch.randn(2, 12, 5, 7, dtype=torch.float64)
        out, h2, h3, stats = torch.ops.fna_ext.depthwise_project_forward(x, hidden, *weights[1:3], *weights[5:], 3, 1,
                                                                         1e-5, 1, 3, *se, 5, 3, 0)
        with pytest.raises(RuntimeError, match="stats must be the forward's float64 stats"):
            torch.ops.fna_ext.depthwise_project_backward(torch.randn_like(out), x, hidden, *weights[1:3],
                                                         *weights[5:], h2, h3, stats, 3, 1, True, 1, 3)


@pytest.mark.parametrize("change, message", [
    (dict(activation=7), "activation 7 is not an activation code"),
    (dict(se_channels=9), "se_channels 9 is outside 1..8"),
    (dict(se_gate=2), "se_gate must be 0"),
    (dict(drop_bias=True), "an SE needs all four"),
])
def test_bad_attribute_arguments_are_refused(change, message):
    x, weights, se = _op_args()
    if change.get("drop_bias"):
        se = [se[0], None, se[2], se[3]]
    args = dict(activation=2, se_channels=6, se_gate=1)
    args.update({k: v for k, v in change.items() if k != "drop_bias"})
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, 3, 12, 1, 1e-5, 1, args["activation"], *se,
                                                 args["se_channels"], 1, args["se_gate"])


def test_the_python_wrapper_names_an_unknown_activation():
    x, weights, _ = _op_args()
    with pytest.raises(ValueError, match="activation 'gelu' is not one of"):
        ops.sampled_mbconv(x, *weights[:3], kernel_size=3, expand_channels=12, activation="gelu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation, se_kind", [("hardswish", "hse"), ("swish", "se"), ("relu", None)])
def test_cuda_nas_block_matches_a_float64_reference(dtype, activation, se_kind):
    def run(seed):
        torch.manual_seed(seed)
        weights, se_tensors = _block(16, 16, e_max=96, s_max=24, dtype=dtype, device="cuda")
        se = _se(se_tensors, se_kind, activation, channels=20)
        x = torch.randn(4, 16, 15, 17, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_()
        grad = torch.randn(4, 16, 8, 9, device="cuda", dtype=dtype)
        kwargs = dict(kernel_size=5, expand_channels=80, stride=2, activation=activation)
        assert ops.takes_fused_path(x, 5)
        fused = _run(True, x, weights, se_tensors, grad, se, **kwargs)

        def as64(t):
            return t.detach().double().requires_grad_()
        se_tensors64 = [as64(t) for t in se_tensors]
        ref = _run(False, as64(x), {n: as64(w) for n, w in weights.items()}, se_tensors64, grad.double(),
                   _se(se_tensors64, se_kind, activation, channels=20), **kwargs)
        eager = _run(False, x, weights, se_tensors, grad, se, **kwargs) if dtype != torch.float32 else None
        return fused, ref, eager

    assert_matches_float64(run, dtype, first_seed=5)


@pytest.mark.cuda
def test_cuda_opcheck_with_se_and_hardswish():
    x, weights, se = _op_args(torch.float32, "cuda")
    torch.library.opcheck(torch.ops.fna_ext.sampled_mbconv_forward.default,
                          (x, *weights, 3, 12, 1, 1e-5, 1, 2, *se, 6, 1, 1))
