"""torch.compile with the fused ops: a graph holds them whole (fullgraph, so no graph break at the
custom ops: their fake kernels give the shapes and their autograd the backward), and the compiled
function computes what the eager one computes, gradients included."""

import pytest
import torch

from fna_ext import _extension, ops

pytestmark = pytest.mark.skipif(not _extension.has_kernel("sampled_mbconv_forward", "cpu"),
                                reason="needs the compiled CPU kernels")


def _inputs(c_in=8, c_out=8, e_max=48, size=9):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, size, size, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    weights = [(torch.randn(*shape, generator=g) * 0.3).requires_grad_()
               for shape in ((e_max, c_in, 1, 1), (e_max, 1, 7, 7), (c_out, e_max, 1, 1))]
    return x, weights


def _sampled(x, expand, dw, project):
    return ops.sampled_mbconv(x, expand, dw, project, kernel_size=5, expand_channels=40, stride=2)


ALPHA = torch.zeros(3).requires_grad_()  # the alpha step's: the weights are frozen, alpha is learnt


def _mixture(x, expand, dw, project):
    mix = torch.softmax(ALPHA * 2 + torch.arange(3.0), 0)
    return ops.mbconv_mixture(x, expand.detach(), mix, dw.detach(), project.detach(),
                              candidates=[(3, 3), (5, 6), (7, 6)])


def _with_grads(fn, x, weights, wanted):
    """The output and the gradients of ``wanted`` (a weight step's: the input and weights; an
    alpha step's: the input and alpha)."""
    out = fn(x, *weights)
    return [out, *torch.autograd.grad(out, [x, *weights] if wanted == "weights" else [x, ALPHA], torch.cos(out))]


class CountingBackend:
    """aot_eager, counting the graphs and the fused ops in them."""

    def __init__(self):
        self.graphs, self.ops = 0, set()

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        self.graphs += 1
        self.ops |= {str(node.target) for node in gm.graph.nodes if "fna_ext" in str(node.target)}
        keep = lambda graph, _: make_boxed_func(graph)  # noqa: E731 (the graphs run as traced)
        return aot_autograd(fw_compiler=keep, bw_compiler=keep)(gm, example_inputs)


@pytest.mark.parametrize("fn, op, wanted", [(_sampled, "sampled_mbconv_forward", "weights"),
                                            (_mixture, "mixture_mbconv_forward", "alpha")])
def test_one_graph_holds_the_fused_op_and_matches_eager(fn, op, wanted):
    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    x, weights = _inputs()
    with ops.fused(True):
        expected = _with_grads(fn, x, weights, wanted)
        got = _with_grads(compiled, x, weights, wanted)
    assert backend.graphs == 1 and any(op in name for name in backend.ops), backend.ops
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inductor_compiles_around_the_fused_op():
    torch._dynamo.reset()
    compiled = torch.compile(_sampled, fullgraph=True)  # inductor, the default backend
    x, weights = _inputs()
    with ops.fused(True):
        expected = _with_grads(_sampled, x, weights, "weights")
        got = _with_grads(compiled, x, weights, "weights")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
