"""How close the fused CUDA ops must come to a float64 reference, in each dtype.

float32 is compared element by element. In float16 and bfloat16 a few pre-activations round to
the other side of a ReLU6 or ReLU boundary, which flips their gradient: a handful of elements
then differ by the whole gradient, in eager PyTorch as much as in the fused kernels. So 16-bit
results are held to benchmarks/gpu_parity.py's rule instead: relative L2 error against float64
at most max(floor, 4x the error of eager PyTorch in the same dtype on the same inputs).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_parity import EAGER_FACTOR, REL_L2_FLOOR, rel_l2  # noqa: E402  (the one rule, shared)

FLOAT32 = {"rtol": 1e-3, "atol": 1e-3}


def assert_matches_reference(fused, reference, dtype, eager=None):
    """fused, reference, eager: (output, gradients). reference in float64; eager (the op's
    PyTorch reference in ``dtype``) is needed for 16-bit dtypes only."""
    outputs = [fused[0], *fused[1]]
    references = [reference[0], *reference[1]]
    assert len(outputs) == len(references)
    if dtype == torch.float32:
        torch.testing.assert_close(outputs[0].cpu().double(), references[0].cpu().double(), **FLOAT32)
        for value, ref in zip(outputs[1:], references[1:]):
            ref = ref.cpu().double()
            scale = ref.abs().max().clamp(min=1)  # gradients are compared relative to their size
            torch.testing.assert_close(value.cpu().double() / scale, ref / scale, **FLOAT32)
        return
    assert eager is not None, "16-bit results are judged against eager PyTorch's error"
    for i, (value, ref, base) in enumerate(zip(outputs, references, [eager[0], *eager[1]], strict=True)):
        ref = ref.detach().cpu().double()
        error, eager_error = rel_l2(value, ref), rel_l2(base, ref)
        bound = max(REL_L2_FLOOR[dtype], EAGER_FACTOR * eager_error)
        what = "the output" if i == 0 else f"gradient {i - 1}"
        assert error <= bound, (f"{what}: relative L2 error {error:.3g} against float64, eager {eager_error:.3g} "
                                f"in {dtype}, allowed {bound:.3g}")
