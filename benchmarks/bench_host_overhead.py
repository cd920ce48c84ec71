"""The fused sampled MBConv's host cost: a block so small that its kernels take next to nothing,
timed fused and eager, forward and forward+backward, with the ATen ops each dispatches.

At the search shapes on a GPU the step waits on the host, not the kernels (benchmarks/RESULTS.md:
on an H200 the device was busy 0.56 ms of a 1.8-2.6 ms forward+backward), so the host's share is
what this measures, on any device:

    python benchmarks/bench_host_overhead.py [--device cpu|cuda] [--repeats 200] [--json]

Times are medians of interleaved calls (benchmarks/timing.py; on CUDA, events after the queue has
drained, so a call's time is its host time whenever the host is the slower side). The op counts
are torch.profiler's ``aten::`` events per call, the fused op's internal steps included.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import hardware, interleaved_medians  # noqa: E402

from fna_ext import ops  # noqa: E402

# N, C_in = C_out, H = W, E_max, kernel: one image of 4x4, so the arithmetic is negligible
TINY = dict(n=1, c=8, size=4, e_max=48, kernel=7)


def make_block(device: str):
    g = torch.Generator().manual_seed(0)

    def param(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    n, c, size, e_max = TINY["n"], TINY["c"], TINY["size"], TINY["e_max"]
    x = torch.randn(n, c, size, size, generator=g).to(device).to(memory_format=torch.channels_last)
    weights = [param(e_max, c, 1, 1), param(e_max, 1, 7, 7), param(c, e_max, 1, 1)]
    bns = {f"bn{i}_{kind}": param(width) for i, width in ((1, e_max), (2, e_max), (3, c)) for kind in ("weight", "bias")}
    grad = torch.randn(n, c, size, size, generator=g).to(device).to(memory_format=torch.channels_last)
    return x.requires_grad_(), weights, bns, grad


def versions(x, weights, bns, grad) -> dict:
    kwargs = dict(kernel_size=TINY["kernel"], expand_channels=TINY["e_max"], **bns)

    def run(fused: bool, backward: bool):
        def call():
            with ops.fused(fused), torch.set_grad_enabled(backward):
                y = ops.sampled_mbconv(x, *weights, **kwargs)
            if backward:
                y.backward(grad)
        return call

    return {f"{name} {mode}": run(name == "fused", mode == "forward+backward")
            for mode in ("forward", "forward+backward") for name in ("fused", "eager")}


def aten_ops(call) -> int:
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    counts = collections.Counter(e.name for e in prof.events())
    return sum(n for name, n in counts.items() if name.startswith("aten::"))


def measure(device: str, repeats: int) -> dict:
    """Median microseconds and ATen ops per call of each version (fused and eager, forward and
    forward+backward) on the tiny block."""
    x, weights, bns, grad = make_block(device)
    calls = versions(x, weights, bns, grad)
    seconds = interleaved_medians(calls, repeats, device, warmup=20)
    found = [{"version": name, "us": 1e6 * seconds[name], "aten_ops": aten_ops(call)} for name, call in calls.items()]
    return {"device": device, "hardware": hardware(device), "torch": torch.__version__, "block": TINY,
            "repeats": repeats, "calls": found}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=200, help="interleaved calls per version (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.exit(2, f"error: --repeats must be at least 1, got {args.repeats}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda: no CUDA device is visible; run with --device cpu\n")
    if not ops.takes_fused_path(torch.empty(1, 1, 1, 1, device=args.device), TINY["kernel"]):
        parser.exit(2, f"error: the extension has no fused kernel for {args.device}; build it (README, Install)\n")
    result = measure(args.device, args.repeats)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['hardware']}, torch {result['torch']}; block {TINY}")
    for row in result["calls"]:
        print(f"  {row['version']:<26} {row['us']:8.1f} us  {row['aten_ops']:4d} ATen ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
