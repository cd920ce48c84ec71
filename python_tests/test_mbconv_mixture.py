"""The fused mixture ops (one searched layer's candidates as one op, csrc/mbconv/mixture_driver.h)
against one reference op per candidate, plus opcheck, gradcheck and the fallbacks."""

import pytest
import torch

from fna_ext.families.features import extract_features
from fna_ext import _extension, mobilenet_v2, ops
from fna_ext.tasks.detection.detector import first_stage_at_stride
from fna_ext.families.features import Tap
from fna_ext.tasks.detection.task import SSDLITE_SPACE as SSDLITE
from fna_ext.nas.supernet import SuperNetwork

from precision import assert_matches_float64

pytestmark = pytest.mark.skipif(not _extension.has_kernel("mixture_mbconv_forward", "cpu"),
                                reason="the extension has no fused mixture kernel")

GRID = [(k, e) for k in (3, 5, 7) for e in (24, 48)]  # the search spaces' six candidates at C_in = 8


def _frozen(c_in, c_out, e_max, affine, dtype=torch.float64, device="cpu"):
    """Max-size weights and BN parameters of a frozen block (an architecture step's)."""
    def param(*shape, positive=False):
        t = torch.randn(*shape, dtype=dtype, device=device) * 0.3
        return t.abs() + 0.5 if positive else t

    weights = {"expand_weight": param(e_max, c_in, 1, 1), "dw_weight": param(e_max, 1, 7, 7),
               "project_weight": param(c_out, e_max, 1, 1)}
    bns = {}
    if affine:
        for i, n in enumerate((e_max, e_max, c_out), 1):
            bns[f"bn{i}_weight"], bns[f"bn{i}_bias"] = param(n, positive=True), param(n)
    return weights, bns


def _mixture(fused, x, mix, weights, bns, candidates, stride, grad):
    with ops.fused(fused):
        y = ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                               candidates=candidates, stride=stride, **bns)
    return y, torch.autograd.grad(y, [x, mix], grad)


def _inputs(c_in, candidates, stride, h=9, w=11, dtype=torch.float64):
    x = torch.randn(2, c_in, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    mix = torch.softmax(torch.randn(len(candidates), dtype=dtype), 0).requires_grad_()
    return x, mix


@pytest.mark.parametrize("candidates", [GRID, [(7, 48), (3, 24), (5, 48)], [(5, 40)], [(3, 16), (7, 40), (3, 16)]])
@pytest.mark.parametrize("stride, c_out", [(1, 8), (2, 12), (1, 12)])
@pytest.mark.parametrize("affine", [False, True])
def test_mbconv_mixture_matches_one_reference_op_per_candidate(candidates, stride, c_out, affine):
    torch.manual_seed(len(candidates) * 10 + stride + c_out)
    weights, bns = _frozen(8, c_out, 48, affine)
    x, mix = _inputs(8, candidates, stride)
    assert ops.takes_fused_mixture(x, candidates, *weights.values())
    y_ref = ops.mbconv_mixture_reference(x, weights["expand_weight"], mix, weights["dw_weight"],
                                         weights["project_weight"], candidates=candidates, stride=stride, **bns)
    grad = torch.randn_like(y_ref)
    fused = _mixture(True, x, mix, weights, bns, candidates, stride, grad)
    reference = _mixture(False, x, mix, weights, bns, candidates, stride, grad)
    assert fused[0].grad_fn.name().startswith("GeneratedBackwardFor_fna_ext_mixture_mbconv")
    torch.testing.assert_close(fused[0], reference[0])
    for a, b in zip(fused[1], reference[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("candidates", [GRID, [(3, 24), (5, 48)], [(5, 40)], [(7, 40)]])
@pytest.mark.parametrize("size", [(8, 10), (1, 1), (2, 3), (6, 5)])
def test_stride_two_mixture_at_every_input_parity(candidates, size):
    """A stride-2 mixture's input gradient runs per input phase (polyphase), each phase with its own
    taps of every ring group; even, odd and tiny sizes give the phases different extents."""
    torch.manual_seed(size[0] * 7 + size[1] + len(candidates))
    weights, bns = _frozen(8, 12, 48, affine=True)
    x, mix = _inputs(8, candidates, 2, *size)
    y_ref = ops.mbconv_mixture_reference(x, weights["expand_weight"], mix, weights["dw_weight"],
                                         weights["project_weight"], candidates=candidates, stride=2, **bns)
    grad = torch.randn_like(y_ref)
    fused = _mixture(True, x, mix, weights, bns, candidates, 2, grad)
    reference = _mixture(False, x, mix, weights, bns, candidates, 2, grad)
    for a, b in zip((fused[0], *fused[1]), (reference[0], *reference[1])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("stride, c_out", [(1, 8), (2, 12)])
def test_depthwise_project_mixture_matches_the_reference(stride, c_out):
    torch.manual_seed(stride)
    weights, bns = _frozen(8, c_out, 48, affine=True)
    bns = {k: v for k, v in bns.items() if not k.startswith("bn1")}
    x, mix = _inputs(8, GRID, stride)
    hidden = torch.rand(2, 56, 9, 11, dtype=torch.float64).mul(6).requires_grad_()  # wider than the candidates
    outputs = []
    for fused in (True, False):
        with ops.fused(fused):
            y = ops.depthwise_project_mixture(x, hidden, mix, weights["dw_weight"], weights["project_weight"],
                                              candidates=GRID, stride=stride, **bns)
        grad = torch.ones_like(y) if not outputs else outputs[0][2]
        outputs.append((y, torch.autograd.grad(y, [x, hidden, mix], grad, allow_unused=True), grad))
    (y1, g1, _), (y2, g2, _) = outputs
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2):
        if b is None:  # no residual: x reaches the output only through hidden
            assert a is None
        else:
            torch.testing.assert_close(a, b)
    assert g1[1][:, 48:].abs().max() == 0  # channels no candidate reads


def test_float32_matches_the_reference():
    torch.manual_seed(3)
    candidates = [(k, e) for k in (3, 5, 7) for e in (48, 96)]
    weights, bns = _frozen(16, 16, 96, affine=False, dtype=torch.float32)
    x, mix = _inputs(16, candidates, 1, h=20, w=20, dtype=torch.float32)
    grad = torch.randn(2, 16, 20, 20)
    fused = _mixture(True, x, mix, weights, bns, candidates, 1, grad)
    reference = _mixture(False, x, mix, weights, bns, candidates, 1, grad)
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(fused[1], reference[1]):
        scale = b.abs().max().clamp(min=1)  # the mixture weights' gradients are sums over every element
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-4, atol=1e-4)


def test_gradcheck_in_float64():
    torch.manual_seed(4)
    candidates = [(3, 8), (5, 16), (7, 16)]
    weights, bns = _frozen(4, 4, 16, affine=True)
    x, mix = _inputs(4, candidates, 1, h=5, w=6)

    def mixture(x, mix):
        return ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                                  candidates=candidates, **bns)
    assert torch.autograd.gradcheck(mixture, (x, mix), eps=1e-6, atol=1e-5)

    hidden = torch.rand(2, 16, 5, 6, dtype=torch.float64).mul(6).requires_grad_()

    def tail(x, hidden, mix):
        return ops.depthwise_project_mixture(x, hidden, mix, weights["dw_weight"], weights["project_weight"],
                                             candidates=candidates, stride=2)
    assert torch.autograd.gradcheck(tail, (x, hidden, mix), eps=1e-6, atol=1e-5)


def test_opcheck():
    torch.manual_seed(5)
    weights, bns = _frozen(8, 8, 48, affine=True, dtype=torch.float32)
    x, mix = _inputs(8, GRID, 1, dtype=torch.float32)
    ks, es = [k for k, _ in GRID], [e for _, e in GRID]
    torch.library.opcheck(torch.ops.fna_ext.mixture_mbconv_forward.default,
                          (x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                           *bns.values(), ks, es, 1, 1e-5))
    hidden = torch.rand(2, 48, 9, 11).requires_grad_()
    for recompute in (False, True):
        torch.library.opcheck(torch.ops.fna_ext.mixture_mbconv_forward.default,
                              (x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                               *bns.values(), ks, es, 2, 1e-5, 1, recompute))
        torch.library.opcheck(torch.ops.fna_ext.mixture_depthwise_project_forward.default,
                              (x, hidden, mix, weights["dw_weight"], weights["project_weight"],
                               *list(bns.values())[2:], ks, es, 2, 1e-5, 1, recompute))


@pytest.mark.parametrize("stride, size", [(1, (9, 11)), (2, (8, 10))])
def test_recompute_gives_the_same_bits_and_keeps_no_depthwise_outputs(stride, size):
    """recompute=True saves an empty h2 and runs the depthwise convs again in the backward: the
    output and every gradient equal the saving version's bit for bit."""
    torch.manual_seed(8 + stride)
    weights, bns = _frozen(8, 12, 48, affine=True)
    x, mix = _inputs(8, GRID, stride, *size)
    hidden = torch.rand(2, 48, *size, dtype=torch.float64).mul(6).requires_grad_()
    common = dict(candidates=GRID, stride=stride, **{k: v for k, v in bns.items() if not k.startswith("bn1")})
    runs = []
    for recompute in (False, True):
        y = ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                               bn1_weight=bns["bn1_weight"], bn1_bias=bns["bn1_bias"], recompute=recompute, **common)
        t = ops.depthwise_project_mixture(x, hidden, mix, weights["dw_weight"], weights["project_weight"],
                                          recompute=recompute, **common)
        runs.append((y, t, *torch.autograd.grad(y.sum() + t.square().sum(), [x, hidden, mix])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    args = (x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"], *bns.values(),
            [k for k, _ in GRID], [e for _, e in GRID], stride, 1e-5, 1, True)
    assert torch.ops.fna_ext.mixture_mbconv_forward(*args)[2].numel() == 0


def test_weights_that_need_gradients_take_one_op_per_candidate():
    torch.manual_seed(6)
    weights, bns = _frozen(8, 8, 48, affine=False)
    weights["dw_weight"].requires_grad_()
    x, mix = _inputs(8, GRID, 1)
    assert not ops.takes_fused_mixture(x, GRID, *weights.values())
    y = ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                           candidates=GRID)
    assert "mixture" not in y.grad_fn.name()
    (grad_dw,) = torch.autograd.grad(y.sum(), [weights["dw_weight"]])
    assert grad_dw.abs().sum() > 0


@pytest.mark.parametrize("candidates, mix, message", [([], torch.ones(0), "at least one"),
                                                      ([(3, 24)], torch.ones(2), "one value per candidate"),
                                                      ([(3, 96)], torch.ones(1), "wider than")])
def test_bad_candidates_are_named(candidates, mix, message):
    weights, _ = _frozen(8, 8, 48, affine=False)
    with pytest.raises(ValueError, match=message):
        ops.mbconv_mixture(torch.randn(1, 8, 5, 5, dtype=torch.float64), weights["expand_weight"],
                           mix.double(), weights["dw_weight"], weights["project_weight"], candidates=candidates)


def test_super_network_alpha_step_is_the_same_fused_or_not():
    """The SSDLite super network's mixture (every layer, the tapped one included), its output and
    the gradients of x and the mixture weights, with the fused ops (saving the depthwise outputs or
    recomputing them) and with the reference."""
    torch.manual_seed(7)
    supernet = SuperNetwork(mobilenet_v2(num_classes=None).arch, SSDLITE).double()
    supernet.requires_grad_(False)
    probs = [torch.softmax(torch.randn(len(layer.spec.candidates), dtype=torch.float64), 0).requires_grad_()
             for layer in supernet.search_layers()]
    supernet.set_mixture(probs)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    results = []
    for fused, recompute in ((True, False), (True, True), (False, False)):
        for layer in supernet.search_layers():
            layer.recompute = recompute
        with ops.fused(fused):
            taps = [Tap("expand", first_stage_at_stride(supernet.arch, 32)), Tap("stage", 3), Tap("head")]
            features = extract_features(supernet, taps, x)
        loss = sum((f * torch.linspace(-1, 1, f.numel(), dtype=f.dtype).view_as(f)).sum() for f in features)
        results.append((features, torch.autograd.grad(loss, [x, *probs])))
    (f1, g1), (f2, g2), (f3, g3) = results
    for a, b, c in zip(f1 + list(g1), f2 + list(g2), f3 + list(g3)):
        assert torch.equal(a, b)  # recomputing changes no bit
        torch.testing.assert_close(a, c)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_a_float64_reference(dtype):
    candidates = [(k, e) for k in (3, 5, 7) for e in (48, 96)]

    def run(seed):
        torch.manual_seed(seed)
        weights, bns = _frozen(16, 16, 96, affine=True, dtype=dtype, device="cuda")
        x = torch.randn(4, 16, 15, 17, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_()
        mix = torch.softmax(torch.randn(6, device="cuda"), 0).to(dtype).requires_grad_()
        grad = torch.randn(4, 16, 15, 17, device="cuda", dtype=dtype)
        fused = _mixture(True, x, mix, weights, bns, candidates, 1, grad)

        def as64(t):
            return t.detach().double().requires_grad_()
        ref = _mixture(False, as64(x), as64(mix), {n: w.double() for n, w in weights.items()},
                       {n: b.double() for n, b in bns.items()}, candidates, 1, grad.double())
        eager = _mixture(False, x, mix, weights, bns, candidates, 1, grad) if dtype != torch.float32 else None
        return fused, ref, eager

    assert_matches_float64(run, dtype, first_seed=8)
