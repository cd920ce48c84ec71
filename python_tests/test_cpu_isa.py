"""The CPU kernels are compiled once per instruction set (AVX-512, AVX2, baseline x86-64) and the
best one this CPU runs is registered, unless FNA_EXT_CPU_ISA names a lower one. Every copy this
CPU can run must compute what the eager reference computes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fna_ext import _extension

pytestmark = pytest.mark.skipif(not _extension.has_kernel("sampled_mbconv_forward", "cpu"),
                                reason="needs the compiled CPU kernels")
LEVELS = ("baseline", "avx2", "avx512")

# Fused forwards and backwards against the eager reference, on a small image and on enough rows
# for the weight gradients' own reduction: a k5 stride-2 block, a k3 stride-1 block and a mixture
# of four candidates, at two widths each, and a hard-swish block with an SE (its backward's own
# passes).
# - 42 channels (and 21) end in a partial channel block on every copy (42 = 2 x 16 + 10 = 5 x 8 +
#   2 = 10 x 4 + 2), and 168 bytes a pixel do not start cache lines, so the depthwise tasks take a
#   block each (task_channels).
# - 48 channels (and 24) are 192 bytes a pixel, three whole lines, so the small images run the
#   depthwise forwards and backwards (the mixture's nested ones too) two cache lines of channels a
#   task (AVX-512: two blocks, AVX2: four), with a last task of one block (AVX-512) or two (AVX2).
# A 48-wide k3 block on an image sized to this machine's L2 runs AVX2's two-block tasks
# throughout: the largest image where two blocks' tiles leave half of L2 free and fit beside the
# next task's lines, so four blocks' do not. On an L2 of up to 2 MB the 96 x 96 image's tiles are
# too large for more than one block, so it runs a block a task. The largest differences relative
# to the largest value, whether a block gives the same bits on one thread and two (every copy's
# reductions add in a fixed order), and the instruction set that ran.
PROBE = """
import json, os, torch
from fna_ext import ops
from fna_ext.ops.sampled_mbconv import SqueezeExcite
g = torch.Generator().manual_seed(0)
w = [(torch.randn(*s, generator=g) * 0.3).requires_grad_() for s in ((48, 8, 1, 1), (48, 1, 7, 7), (8, 48, 1, 1))]
se = SqueezeExcite(*[(torch.randn(*s, generator=g) * 0.3) for s in ((12, 48, 1, 1), (12,), (48, 12, 1, 1), (48,))],
                   channels=10, activation="relu", gate="hardsigmoid")
alpha = torch.randn(4, generator=g).softmax(0).requires_grad_()
def grads(out, leaves):  # a random upstream gradient: under a batch-statistics BN, ones give zero
    return list(torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=torch.Generator().manual_seed(1))))
def sampled(fn, **kw):
    out = fn(x, *w, **kw)
    return [out, *grads(out, [x, *w])]
def mixture(fn, width=42, **kw):
    candidates = [(3, width // 2), (3, width), (7, width // 2), (7, width)]
    out = fn(x, w[0].detach(), alpha, w[1].detach(), w[2].detach(), candidates=candidates, **kw)
    return [out, *grads(out, [x, alpha])]
def relative_errors(run, *args, **kw):
    with ops.fused(True):
        fused = run(*args, **kw)
    eager = run(*[getattr(ops, f.__name__ + "_reference") for f in args], **kw)
    return [float((a - b).abs().max() / b.abs().max()) for a, b in zip(fused, eager)]
errors = []
for shape in ((2, 8, 13, 13), (4, 8, 16, 16)):  # 1024 rows: the weight gradients take the backend's reduction
    x = torch.randn(*shape, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    for width in (42, 48):
        errors += relative_errors(sampled, ops.sampled_mbconv, kernel_size=5, expand_channels=width, stride=2)
        errors += relative_errors(sampled, ops.sampled_mbconv, kernel_size=3, expand_channels=width)
        errors += relative_errors(mixture, ops.mbconv_mixture, width=width)
        errors += relative_errors(mixture, ops.mbconv_mixture, width=width, stride=2)
    errors += relative_errors(sampled, ops.sampled_mbconv, kernel_size=3, expand_channels=42, activation="hardswish",
                              se=se)
l2 = os.sysconf("SC_LEVEL2_CACHE_SIZE") if "SC_LEVEL2_CACHE_SIZE" in os.sysconf_names else 0
l2 = l2 if l2 > 0 else 1 << 20  # as the kernels assume where the C library cannot tell
def two_blocks_fit(s):  # task_channels for a k3 stride-1 task of two of AVX2's 8-float blocks
    tile = ((s + 3) ** 2 + (s + 6) ** 2) * 64
    return 2 * tile <= l2 and tile + 3 * s * s * 64 <= l2
size = max(s for s in range(8, 1024) if two_blocks_fit(s))
x = torch.randn(1, 8, size, size, generator=g).to(memory_format=torch.channels_last).requires_grad_()
errors += relative_errors(sampled, ops.sampled_mbconv, kernel_size=3, expand_channels=48)
x = torch.randn(1, 8, 96, 96, generator=g).to(memory_format=torch.channels_last).requires_grad_()
errors += relative_errors(sampled, ops.sampled_mbconv, kernel_size=3, expand_channels=42)
errors += relative_errors(mixture, ops.mbconv_mixture)
# the fused block's results on one thread and on two, bit for bit (the 1x1 weight gradients'
# reductions over 1024 rows included: alone with an SE, inside the projection's backward by pieces
# without one)
x = torch.randn(4, 8, 16, 16, generator=g).to(memory_format=torch.channels_last).requires_grad_()
runs = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    with ops.fused(True):
        runs.append(sampled(ops.sampled_mbconv, kernel_size=3, expand_channels=42, activation="hardswish", se=se)
                    + sampled(ops.sampled_mbconv, kernel_size=3, expand_channels=48))
same_bits = all(torch.equal(a, b) for a, b in zip(*runs))
print(json.dumps({"isa": torch.ops.fna_ext.cpu_isa(), "errors": errors, "same_bits_on_1_and_2_threads": same_bits}))
"""


def _probe(level: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FNA_EXT_CPU_ISA"}
    if level is not None:
        env["FNA_EXT_CPU_ISA"] = level
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "stderr": result.stderr}


@pytest.fixture(scope="module")
def best() -> str:
    """What a process without FNA_EXT_CPU_ISA registers: the best copy this CPU runs."""
    return _probe(None)["isa"]


def test_the_best_copy_is_registered_by_default(best):
    assert best in (*LEVELS, "native")
    if os.environ.get("FNA_EXT_CPU_ISA") in (None, ""):
        assert torch.ops.fna_ext.cpu_isa() == best


@pytest.mark.parametrize("level", LEVELS)
def test_every_copy_this_cpu_runs_matches_the_reference(level, best):
    if best == "native" or LEVELS.index(level) > LEVELS.index(best):
        pytest.skip(f"this CPU (or build) runs at most {best}")
    probe = _probe(level)
    assert probe["isa"] == level
    assert max(probe["errors"]) < 1e-4, probe["errors"]
    assert probe["same_bits_on_1_and_2_threads"]


def test_an_unknown_level_warns_and_keeps_the_best(best):
    probe = _probe("sse9")
    assert probe["isa"] == best and "FNA_EXT_CPU_ISA=sse9" in probe["stderr"]
