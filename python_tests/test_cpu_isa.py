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

# Fused forwards and backwards against the eager reference: a k5 stride-2 block, a k3 stride-1
# block and a mixture of four candidates, every width ending in a partial channel block on every
# copy (42 = 2 x 16 + 10 = 5 x 8 + 2 = 10 x 4 + 2; 21 likewise): the largest differences, and the
# instruction set that ran.
PROBE = """
import json, torch
from fna_ext import ops
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 8, 13, 13, generator=g).to(memory_format=torch.channels_last).requires_grad_()
w = [(torch.randn(*s, generator=g) * 0.3).requires_grad_() for s in ((48, 8, 1, 1), (48, 1, 7, 7), (8, 48, 1, 1))]
def run(fn, **kw):
    out = fn(x, *w, **kw)
    grads = torch.autograd.grad(out, [x, *w], torch.ones_like(out))
    return [out, *grads]
alpha = torch.randn(4, generator=g).softmax(0).requires_grad_()
def run_mixture(fn):
    out = fn(x, w[0].detach(), alpha, w[1].detach(), w[2].detach(), candidates=[(3, 21), (3, 42), (7, 21), (7, 42)])
    return [out, *torch.autograd.grad(out, [x, alpha], torch.ones_like(out))]
errors = []
for kw in (dict(kernel_size=5, expand_channels=42, stride=2), dict(kernel_size=3, expand_channels=42)):
    with ops.fused(True):
        fused = run(ops.sampled_mbconv, **kw)
    errors += [float((a - b).abs().max()) for a, b in zip(fused, run(ops.sampled_mbconv_reference, **kw))]
with ops.fused(True):
    fused = run_mixture(ops.mbconv_mixture)
errors += [float((a - b).abs().max()) for a, b in zip(fused, run_mixture(ops.mbconv_mixture_reference))]
print(json.dumps({"isa": torch.ops.fna_ext.cpu_isa(), "errors": errors}))
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


def test_an_unknown_level_warns_and_keeps_the_best(best):
    probe = _probe("sse9")
    assert probe["isa"] == best and "FNA_EXT_CPU_ISA=sse9" in probe["stderr"]
