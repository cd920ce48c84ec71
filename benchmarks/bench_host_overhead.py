"""The fused ops' host cost: a block so small that its kernels take next to nothing, timed fused
and eager, with the ops each dispatches. Two ops: the sampled MBConv of a weight step (forward, and
forward+backward) and the mixture of an architecture step (every candidate, forward+backward).

At the search shapes on a GPU the step waits on the host, not the kernels (benchmarks/RESULTS.md:
on an H200 the device was busy 0.56 ms of a 1.8-2.6 ms forward+backward), so the host's share is
what this measures, on any device:

    python benchmarks/bench_host_overhead.py [--device cpu|cuda] [--repeats 200] [--json]

Times are medians of interleaved calls (benchmarks/timing.py; on CUDA, events after the queue has
drained, so a call's time is its host time whenever the host is the slower side). Two counts per
call, from torch.profiler:

- ``aten_ops``: every ``aten::`` event, views and the fused op's internal steps included;
- ``dispatched``: the ops that touch data (no views, no allocations) outside any other such op,
  with each of the fused ops' backend steps (``fna_ext::mbconv::*``) counted once and what runs
  inside it not at all. On a GPU each is about one kernel launch, so it counts the launches of
  the ops' own code on any device (the CPU's steps run ATen ops inside that a GPU's do not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import hardware, interleaved_medians  # noqa: E402

from fna_ext import ops  # noqa: E402

# N, C_in = C_out, H = W, E_max, kernel: one image of 4x4, so the arithmetic is negligible
TINY = dict(n=1, c=8, size=4, e_max=48, kernel=7)
# an architecture step's layer: the search spaces' six candidates (kernel, width)
MIXTURE_CANDIDATES = [(3, 24), (3, 48), (5, 24), (5, 48), (7, 24), (7, 48)]


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

    found = {f"{name} {mode}": run(name == "fused", mode == "forward+backward")
             for mode in ("forward", "forward+backward") for name in ("fused", "eager")}
    return {**found, **mixture_versions(x, weights, bns, grad)}


def mixture_versions(x, weights, bns, grad) -> dict:
    """An architecture step's op: every candidate, weighted by softmax(alpha), forward+backward
    into x and alpha (the weights frozen, as in the search)."""
    alpha = torch.zeros(len(MIXTURE_CANDIDATES), device=x.device, requires_grad=True)
    frozen = [w.detach() for w in weights]
    frozen_bns = {name: p.detach() for name, p in bns.items()}

    def run(fused: bool):
        def call():
            with ops.fused(fused):
                y = ops.mbconv_mixture(x, frozen[0], alpha.softmax(0), frozen[1], frozen[2],
                                       candidates=MIXTURE_CANDIDATES, **frozen_bns)
            y.backward(grad)
        return call

    return {f"mixture {name} forward+backward": run(name == "fused") for name in ("fused", "eager")}


# ATen ops that only make views or allocate: no launch on a GPU (zeros and zeros_like are an
# allocation and a fill: the fill inside them counts)
_NO_DATA = {"as_strided", "view", "_unsafe_view", "alias", "select", "slice", "narrow", "permute", "reshape", "t",
            "transpose", "unsqueeze", "squeeze", "expand", "detach", "detach_", "resolve_conj", "resolve_neg",
            "lift_fresh", "contiguous", "to", "empty", "empty_like", "empty_strided", "zeros", "zeros_like",
            "numpy_T"}
_STEP = "fna_ext::mbconv::"


def _touches_data(name: str) -> bool:
    return name.startswith(_STEP) or (name.startswith("aten::") and name[len("aten::"):] not in _NO_DATA)


def _dispatched(event) -> bool:
    """An op that touches data and runs inside no other such op (nor inside a fused op's step)."""
    if not _touches_data(event.name):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if _touches_data(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def op_counts(call) -> dict:
    """``aten_ops`` and ``dispatched`` (see the module's text) for one call, after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.events()
    return {"aten_ops": sum(1 for e in events if e.name.startswith("aten::")),
            "dispatched": sum(1 for e in events if _dispatched(e))}


def measure(device: str, repeats: int) -> dict:
    """Median microseconds and op counts per call of each version (fused and eager; the sampled op
    forward and forward+backward, the mixture forward+backward) on the tiny block."""
    x, weights, bns, grad = make_block(device)
    calls = versions(x, weights, bns, grad)
    seconds = interleaved_medians(calls, repeats, device, warmup=20)
    found = [{"version": name, "us": 1e6 * seconds[name], **op_counts(call)} for name, call in calls.items()]
    return {"device": device, "hardware": hardware(device), "torch": torch.__version__, "block": TINY,
            "mixture_candidates": MIXTURE_CANDIDATES, "repeats": repeats, "calls": found}


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
    print(f"{result['hardware']}, torch {result['torch']}; block {TINY}; mixture candidates {MIXTURE_CANDIDATES}")
    for row in result["calls"]:
        print(f"  {row['version']:<36} {row['us']:8.1f} us  {row['aten_ops']:5d} ATen ops  "
              f"{row['dispatched']:4d} dispatched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
