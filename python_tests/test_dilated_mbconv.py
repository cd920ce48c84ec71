"""Dilation in the fused MBConv ops (segmentation keeps output stride 16 or 8 by turning a
stage's stride into dilation): each op against its eager reference built from F.conv2d with
dilation, opcheck, the stats-size ops the fake kernels ask, and the argument checks."""

import pytest
import torch
import torch.nn.functional as F

from fna_ext import _extension, ops

from precision import assert_matches_float64

pytestmark = pytest.mark.skipif(not _extension.has_kernel("mixture_mbconv_forward", "cpu"),
                                reason="the extension has no fused MBConv kernels")

F64 = {"rtol": 1e-9, "atol": 1e-9}
CPU_F32 = {"rtol": 1e-4, "atol": 1e-4}
GRID = [(k, e) for k in (3, 5, 7) for e in (24, 48)]  # the search spaces' six candidates at C_in = 8
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _params(c_in, c_out, e_max, dtype=torch.float64, device="cpu", requires_grad=True):
    """Max-size weights and affine BN parameters; BN scales kept away from 0."""
    def param(*shape, positive=False):
        t = torch.randn(*shape, dtype=dtype, device=device) * 0.3
        return (t.abs() + 0.5 if positive else t).requires_grad_(requires_grad)

    weights = {"expand_weight": param(e_max, c_in, 1, 1), "dw_weight": param(e_max, 1, 7, 7),
               "project_weight": param(c_out, e_max, 1, 1)}
    bns = {}
    for i, n in enumerate((e_max, e_max, c_out), 1):
        bns[f"bn{i}_weight"], bns[f"bn{i}_bias"] = param(n, positive=True), param(n)
    return weights, bns


def _input(n, c, h, w, layout, dtype=torch.float64, device="cpu", scale=1.0):
    return (torch.randn(n, c, h, w, dtype=dtype, device=device) * scale).to(memory_format=layout).requires_grad_()


def _output_and_grads(fused, fn, leaves, grad):
    with ops.fused(fused):
        y = fn()
    return y, torch.autograd.grad(y, leaves, grad)


def _assert_fused_matches_reference(fn, leaves, grad, **tol):
    y1, g1 = _output_and_grads(True, fn, leaves, grad)
    y2, g2 = _output_and_grads(False, fn, leaves, grad)
    torch.testing.assert_close(y1, y2, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)
    return y1


def _manual_reference(x, weights, bns, k, e, dilation, eps=1e-5):
    """The block written out with F.conv2d and F.batch_norm, independent of fna_ext's reference."""
    def bn(t, i):
        c = t.shape[1]
        return F.batch_norm(t, None, None, bns[f"bn{i}_weight"][:c], bns[f"bn{i}_bias"][:c], True, 0.0, eps)

    start = (7 - k) // 2
    dw = weights["dw_weight"][:e, :, start:start + k, start:start + k]
    h = F.relu6(bn(F.conv2d(x, weights["expand_weight"][:e]), 1))
    h = F.relu6(bn(F.conv2d(h, dw, padding=dilation * (k - 1) // 2, dilation=dilation, groups=e), 2))
    out = bn(F.conv2d(h, weights["project_weight"][:, :e]), 3)
    return out + x if out.shape[1] == x.shape[1] else out


# ---- the sampled path -----------------------------------------------------------------------

@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("e, c_out", [(3, 8), (6, 12)])  # with and without the residual
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sampled_mbconv_matches_the_reference(dilation, k, e, c_out, layout):
    torch.manual_seed(dilation * 100 + k * 10 + e)
    weights, bns = _params(8, c_out, 48, requires_grad=True)
    x = _input(2, 8, 9, 11, layout)  # odd sizes, not multiples of the dilation
    kwargs = dict(kernel_size=k, expand_channels=e * 8, dilation=dilation, **bns)
    fn = lambda: ops.sampled_mbconv(x, *weights.values(), **kwargs)  # noqa: E731
    grad = torch.randn(2, c_out, 9, 11, dtype=torch.float64)
    y = _assert_fused_matches_reference(fn, [x, *weights.values(), *bns.values()], grad, **F64)
    assert y.shape == (2, c_out, 9, 11)  # "same" padding: dilation keeps the size
    assert y.grad_fn.name().startswith("GeneratedBackwardFor_fna_ext_sampled_mbconv")
    # and the reference is the block as F.conv2d writes it
    torch.testing.assert_close(y, _manual_reference(x, weights, bns, k, e * 8, dilation), **F64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sampled_mbconv_in_float32(layout):
    # 40 hidden channels: two full blocks of 16 and a partial one, through every phase
    torch.manual_seed(1)
    weights, bns = _params(8, 8, 48, dtype=torch.float32)
    x = _input(4, 8, 13, 10, layout, dtype=torch.float32)
    fn = lambda: ops.sampled_mbconv(x, *weights.values(), kernel_size=5, expand_channels=40,  # noqa: E731
                                    dilation=2, **bns)
    _assert_fused_matches_reference(fn, [x, *weights.values(), *bns.values()], torch.randn(4, 8, 13, 10),
                                    **CPU_F32)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (2, 9)])
def test_images_smaller_than_the_dilation(size):
    # some phases of the dilated conv are empty: they must add nothing
    torch.manual_seed(2)
    weights, bns = _params(8, 8, 48)
    x = _input(3, 8, *size, torch.channels_last)
    fn = lambda: ops.sampled_mbconv(x, *weights.values(), kernel_size=7, expand_channels=40,  # noqa: E731
                                    dilation=4, **bns)
    _assert_fused_matches_reference(fn, [x, *weights.values(), *bns.values()],
                                    torch.randn(3, 8, *size, dtype=torch.float64), **F64)


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_project_on_a_slice_of_a_shared_hidden(dilation, k, layout):
    torch.manual_seed(dilation + k)
    weights, bns = _params(8, 10, 48)
    x = _input(2, 8, 9, 11, layout)
    shared = (torch.rand(2, 48, 9, 11, dtype=torch.float64) * 6).to(memory_format=layout).requires_grad_()
    bn23 = {n: b for n, b in bns.items() if not n.startswith("bn1")}
    fn = lambda: ops.depthwise_project(x, shared[:, :24], weights["dw_weight"],  # noqa: E731
                                       weights["project_weight"], kernel_size=k, dilation=dilation, **bn23)
    leaves = [shared, weights["dw_weight"], weights["project_weight"], *bn23.values()]  # no residual: x unused
    _assert_fused_matches_reference(fn, leaves, torch.randn(2, 10, 9, 11, dtype=torch.float64), **F64)


def test_depthwise_project_with_the_residual():
    torch.manual_seed(3)
    weights, bns = _params(8, 8, 48)
    x = _input(2, 8, 10, 12, torch.channels_last)
    hidden = (torch.rand(2, 40, 10, 12, dtype=torch.float64) * 6).requires_grad_()
    fn = lambda: ops.depthwise_project(x, hidden, weights["dw_weight"], weights["project_weight"],  # noqa: E731
                                       kernel_size=5, dilation=2)
    _assert_fused_matches_reference(fn, [x, hidden, weights["dw_weight"], weights["project_weight"]],
                                    torch.randn(2, 8, 10, 12, dtype=torch.float64), **F64)


# ---- the mixtures (the CPU runs every kernel size in one nested pass) -------------------------

def _mixture_weights(candidates):
    return torch.softmax(torch.randn(len(candidates), dtype=torch.float64), 0).requires_grad_()


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("candidates", [GRID, [(7, 48), (3, 24)], [(5, 40)], [(3, 16), (7, 40), (3, 16)]])
@pytest.mark.parametrize("c_out", [8, 12])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mbconv_mixture_matches_the_reference(dilation, candidates, c_out, layout):
    torch.manual_seed(dilation * 10 + len(candidates) + c_out)
    weights, bns = _params(8, c_out, 48, requires_grad=False)  # an architecture step: frozen weights
    x, mix = _input(2, 8, 9, 11, layout), _mixture_weights(candidates)
    assert ops.takes_fused_mixture(x, candidates, *weights.values())
    fn = lambda: ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"],  # noqa: E731
                                    weights["project_weight"], candidates=candidates, dilation=dilation, **bns)
    y = _assert_fused_matches_reference(fn, [x, mix], torch.randn(2, c_out, 9, 11, dtype=torch.float64), **F64)
    assert y.grad_fn.name().startswith("GeneratedBackwardFor_fna_ext_mixture_mbconv")


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("candidates", [GRID, [(5, 24), (7, 48)]])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_project_mixture_matches_the_reference(dilation, candidates, layout):
    torch.manual_seed(dilation + len(candidates))
    weights, bns = _params(8, 8, 48, requires_grad=False)
    bn23 = {n: b for n, b in bns.items() if not n.startswith("bn1")}
    x, mix = _input(2, 8, 9, 11, layout), _mixture_weights(candidates)
    hidden = (torch.rand(2, 48, 9, 11, dtype=torch.float64) * 6).to(memory_format=layout).requires_grad_()
    fn = lambda: ops.depthwise_project_mixture(x, hidden, mix, weights["dw_weight"],  # noqa: E731
                                               weights["project_weight"], candidates=candidates,
                                               dilation=dilation, **bn23)
    y = _assert_fused_matches_reference(fn, [x, hidden, mix], torch.randn(2, 8, 9, 11, dtype=torch.float64),
                                        **F64)
    assert y.grad_fn.name().startswith("GeneratedBackwardFor_fna_ext_mixture_depthwise_project")


def test_mixture_in_float32():
    torch.manual_seed(4)
    weights, bns = _params(8, 8, 48, dtype=torch.float32, requires_grad=False)
    x = _input(4, 8, 13, 10, torch.channels_last, dtype=torch.float32)
    mix = torch.softmax(torch.randn(6), 0).requires_grad_()
    fn = lambda: ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"],  # noqa: E731
                                    weights["project_weight"], candidates=GRID, dilation=2, **bns)
    grad = torch.randn(4, 8, 13, 10)
    y1, g1 = _output_and_grads(True, fn, [x, mix], grad)
    y2, g2 = _output_and_grads(False, fn, [x, mix], grad)
    torch.testing.assert_close(y1, y2, **CPU_F32)
    for a, b in zip(g1, g2):
        scale = b.abs().max().clamp(min=1)  # the mixture weights' gradients sum over the whole output
        torch.testing.assert_close(a / scale, b / scale, **CPU_F32)


# ---- registration: opcheck and the stats layout -------------------------------------------------

def _op_args(dtype=torch.float64, device="cpu"):
    torch.manual_seed(6)
    weights, bns = _params(4, 6, 24, dtype=dtype, device=device)
    x = _input(2, 4, 7, 9, torch.contiguous_format, dtype=dtype, device=device)
    return x, list(weights.values()), list(bns.values())


def test_opcheck_sampled_mbconv_forward():
    x, weights, bns = _op_args()
    torch.library.opcheck(torch.ops.fna_ext.sampled_mbconv_forward.default, (x, *weights, *bns, 5, 12, 1, 1e-5, 2))


def test_opcheck_depthwise_project_forward():
    x, weights, bns = _op_args()
    hidden = torch.rand(2, 12, 7, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fna_ext.depthwise_project_forward.default,
                          (x, hidden, weights[1], weights[2], *bns[2:], 7, 1, 1e-5, 2))


def test_opcheck_mixture_ops():
    x, weights, bns = _op_args()
    weights, bns = [w.detach() for w in weights], [b.detach() for b in bns]
    candidates = [(3, 12), (7, 24), (5, 12)]
    ks, es = [k for k, _ in candidates], [e for _, e in candidates]
    mix = _mixture_weights(candidates)
    torch.library.opcheck(torch.ops.fna_ext.mixture_mbconv_forward.default,
                          (x, weights[0], mix, weights[1], weights[2], *bns, ks, es, 1, 1e-5, 2))
    hidden = torch.rand(2, 24, 7, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.fna_ext.mixture_depthwise_project_forward.default,
                          (x, hidden, mix, weights[1], weights[2], *bns[2:], ks, es, 1, 1e-5, 2))


def test_the_fake_kernels_give_the_dilated_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, weights, _ = _op_args()
    x, weights = x.detach(), [w.detach() for w in weights]
    real = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, *[None] * 6, 7, 12, 1, 1e-5, 4)
    mode = FakeTensorMode()
    fake_x, fake_weights = mode.from_tensor(x), [mode.from_tensor(w) for w in weights]
    with mode:
        fake = torch.ops.fna_ext.sampled_mbconv_forward(fake_x, *fake_weights, *[None] * 6, 7, 12, 1, 1e-5, 4)
    assert [t.shape for t in fake] == [t.shape for t in real]


def test_sampled_stats_size_is_the_stats_the_kernels_return():
    x, weights, bns = _op_args()
    with torch.no_grad():
        full = torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, *bns, 3, 12, 1, 1e-5, 2)
        hidden = torch.rand(2, 12, 7, 9, dtype=torch.float64)
        tail = torch.ops.fna_ext.depthwise_project_forward(x, hidden, weights[1], weights[2], *bns[2:], 3, 1, 1e-5)
    assert full[4].numel() == torch.ops.fna_ext.sampled_stats_size(12, 6, True)
    assert tail[3].numel() == torch.ops.fna_ext.sampled_stats_size(12, 6, False)


@pytest.mark.parametrize("candidates", [GRID, [(7, 20), (3, 8), (7, 20)], [(5, 24)]])
def test_mixture_stats_size_is_the_stats_the_kernels_return(candidates):
    torch.manual_seed(7)
    weights, bns = _params(8, 6, 48, requires_grad=False)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    mix = torch.softmax(torch.randn(len(candidates), dtype=torch.float64), 0)
    ks, es = [k for k, _ in candidates], [e for _, e in candidates]
    w, b = list(weights.values()), list(bns.values())
    full = torch.ops.fna_ext.mixture_mbconv_forward(x, w[0], mix, w[1], w[2], *b, ks, es, 1, 1e-5, 2)
    hidden = torch.rand(2, 48, 7, 9, dtype=torch.float64)
    tail = torch.ops.fna_ext.mixture_depthwise_project_forward(x, hidden, mix, w[1], w[2], *b[2:], ks, es, 1, 1e-5)
    assert full[4].numel() == torch.ops.fna_ext.mixture_stats_size(ks, es, 6, True)
    assert tail[3].numel() == torch.ops.fna_ext.mixture_stats_size(ks, es, 6, False)


# ---- argument checks ----------------------------------------------------------------------------

def _calls():
    """Each public op (fused and reference) as fn(stride, dilation)."""
    torch.manual_seed(8)
    weights, bns = _params(8, 8, 48, requires_grad=False)
    ew, dw, pw = weights.values()
    x, hidden, mix = torch.randn(2, 8, 9, 9, dtype=torch.float64), torch.rand(2, 48, 9, 9, dtype=torch.float64), \
        torch.softmax(torch.randn(2, dtype=torch.float64), 0)
    cands = [(3, 24), (5, 48)]
    return {
        "sampled_mbconv": lambda s, d: ops.sampled_mbconv(x, ew, dw, pw, kernel_size=3, expand_channels=24,
                                                          stride=s, dilation=d),
        "sampled_mbconv_reference": lambda s, d: ops.sampled_mbconv_reference(
            x, ew, dw, pw, kernel_size=3, expand_channels=24, stride=s, dilation=d),
        "depthwise_project": lambda s, d: ops.depthwise_project(x, hidden, dw, pw, kernel_size=3, stride=s,
                                                                dilation=d),
        "depthwise_project_reference": lambda s, d: ops.depthwise_project_reference(
            x, hidden, dw, pw, kernel_size=3, stride=s, dilation=d),
        "mbconv_mixture": lambda s, d: ops.mbconv_mixture(x, ew, mix, dw, pw, candidates=cands, stride=s,
                                                          dilation=d),
        "mbconv_mixture_reference": lambda s, d: ops.mbconv_mixture_reference(
            x, ew, mix, dw, pw, candidates=cands, stride=s, dilation=d),
        "depthwise_project_mixture": lambda s, d: ops.depthwise_project_mixture(
            x, hidden, mix, dw, pw, candidates=cands, stride=s, dilation=d),
        "depthwise_project_mixture_reference": lambda s, d: ops.depthwise_project_mixture_reference(
            x, hidden, mix, dw, pw, candidates=cands, stride=s, dilation=d),
    }


@pytest.mark.parametrize("name", list(_calls()))
@pytest.mark.parametrize("dilation", [0, -2, 1.0, 2.5, True, "2"])
def test_a_dilation_that_is_not_a_positive_int_is_refused(name, dilation):
    with pytest.raises(ValueError, match="dilation must be a positive int"):
        _calls()[name](1, dilation)


@pytest.mark.parametrize("name", list(_calls()))
def test_stride_with_dilation_is_refused_naming_both(name):
    with pytest.raises(ValueError, match="stride 2 with dilation 2"):
        _calls()[name](2, 2)
    _calls()[name](2, 1)  # each alone is fine
    _calls()[name](1, 2)


def test_the_kernels_refuse_stride_with_dilation_too():
    x, weights, bns = _op_args()
    with pytest.raises(RuntimeError, match="stride 2 with dilation 2"):
        torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, *bns, 3, 12, 2, 1e-5, 2)
    with pytest.raises(RuntimeError, match="dilation must be positive"):
        torch.ops.fna_ext.sampled_mbconv_forward(x, *weights, *bns, 3, 12, 1, 1e-5, 0)


# ---- CUDA ---------------------------------------------------------------------------------------

def _as64(t):
    return t.detach().cpu().double().requires_grad_(t.requires_grad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, dilation", [(3, 2), (5, 4), (7, 2)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_sampled_mbconv_matches_a_float64_reference(dtype, k, dilation, layout):
    def run(seed):
        torch.manual_seed(seed)
        weights, bns = _params(16, 16, 96, dtype=dtype, device="cuda")
        x = _input(4, 16, 15, 17, layout, dtype=dtype, device="cuda")
        grad = torch.randn(4, 16, 15, 17, device="cuda", dtype=dtype)
        kwargs = dict(kernel_size=k, expand_channels=80, dilation=dilation)
        assert ops.takes_fused_path(x, k)
        leaves = [x, *weights.values(), *bns.values()]
        fused = _output_and_grads(True, lambda: ops.sampled_mbconv(x, *weights.values(), **kwargs, **bns), leaves,
                                  grad)
        w64, b64 = {n: _as64(w) for n, w in weights.items()}, {n: _as64(b) for n, b in bns.items()}
        x64 = _as64(x)
        ref = _output_and_grads(False, lambda: ops.sampled_mbconv_reference(x64, *w64.values(), **kwargs, **b64),
                                [x64, *w64.values(), *b64.values()], grad.cpu().double())
        eager = (_output_and_grads(False, lambda: ops.sampled_mbconv_reference(x, *weights.values(), **kwargs, **bns),
                                   leaves, grad) if dtype != torch.float32 else None)
        return fused, ref, eager

    assert_matches_float64(run, dtype, first_seed=9)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dilation", [2, 4])
def test_cuda_mbconv_mixture_matches_a_float64_reference(dtype, dilation):
    torch.manual_seed(10)
    weights, bns = _params(16, 16, 96, dtype=dtype, device="cuda", requires_grad=False)
    candidates = [(k, e) for k in (3, 5, 7) for e in (48, 96)]
    x = _input(4, 16, 15, 17, torch.channels_last, dtype=dtype, device="cuda")
    mix = torch.softmax(torch.randn(6, device="cuda"), 0).to(dtype).requires_grad_()
    grad = torch.randn(4, 16, 15, 17, device="cuda", dtype=dtype)

    def run(x, mix, weights, bns):
        return ops.mbconv_mixture(x, weights["expand_weight"], mix, weights["dw_weight"], weights["project_weight"],
                                  candidates=candidates, dilation=dilation, **bns)
    y, grads = _output_and_grads(True, lambda: run(x, mix, weights, bns), [x, mix], grad)
    x64, mix64 = _as64(x), _as64(mix)
    ref = _output_and_grads(False, lambda: run(x64, mix64, {n: _as64(w) for n, w in weights.items()},
                                               {n: _as64(b) for n, b in bns.items()}),
                            [x64, mix64], grad.cpu().double())
    tol = {"rtol": 1e-3, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-1, "atol": 1e-1}
    torch.testing.assert_close(y.cpu().double(), ref[0], **tol)
    for a, b in zip(grads, ref[1]):
        scale = b.abs().max().clamp(min=1)
        torch.testing.assert_close(a.cpu().double() / scale, b / scale, **tol)


@pytest.mark.cuda
def test_cuda_opcheck():
    x, weights, bns = _op_args(torch.float32, "cuda")
    torch.library.opcheck(torch.ops.fna_ext.sampled_mbconv_forward.default, (x, *weights, *bns, 7, 12, 1, 1e-5, 2))
