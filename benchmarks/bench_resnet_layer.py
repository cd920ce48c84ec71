"""Does a ResNet search layer need a fused op? Times one searched layer's sampled-path step
(forward and backward) for every candidate two ways:

- ``sliced``: the shared layer as the search runs it, each candidate's K x K, G-group weight sliced
  from the one dense 7x7 weight and run through oneDNN's convolution (``F.conv2d``);
- ``own``: the same block with its own contiguous weights of that size (an independent
  candidate), the best any fused slice-and-convolve op could do, since it would still run the
  same convolution.

If ``sliced`` is within a few percent of ``own``, slicing costs nothing worth a C++ op and the
search runs on oneDNN. Also the mixture step (every candidate, weighted, backward to alpha), and
kernel nesting in the mixture: the k3, k5 and k7 outputs of one dense conv as three convolutions
of the 7x7 weight's centres, against one convolution of the three stacked along the output
channels (k3 and k5 zero-ringed to 7x7), forward and backward to the input as an alpha step
runs them. Each candidate's output goes through its own BN (batch statistics), so the outputs
cannot be summed before it; one call is the only sharing nesting offers a dense conv.

    python benchmarks/bench_resnet_layer.py [--block basic|bottleneck] [--channels 128] [--size 28]
        [--batch 16] [--repeats 7] [--channels-last] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import interleaved_medians  # noqa: E402

from fna_ext.families.resnet.blocks import make_block  # noqa: E402
from fna_ext.families.resnet.search_layer import SearchLayer  # noqa: E402
from fna_ext.nas.search_space import LayerSpec  # noqa: E402

KERNELS, GROUPS = (3, 5, 7), (1, 2, 4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", choices=["basic", "bottleneck"], default="basic")
    parser.add_argument("--channels", type=int, default=128, help="the block's output channels")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC weights and input (default contiguous, as the search runs a ResNet)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ops = tuple(f"{args.block}_k{k}" + (f"_g{g}" if g > 1 else "") for k in KERNELS for g in GROUPS)
    spec = LayerSpec(1, 1, args.channels, args.channels, 1, ops)
    shared = SearchLayer(spec, "shared", affine_bn=False, bn_eps=1e-5)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, args.channels, args.size, args.size).contiguous(memory_format=layout)
    shared = shared.to(memory_format=layout)

    def step(module, op=None):
        def run():
            module.zero_grad(set_to_none=True)
            out = module(x) if op is None else module.run_op(x, op)
            out.sum().backward()
        return run

    rows = {}
    for op in ops:
        own = make_block(args.channels, args.channels, 1, op).to(memory_format=layout)
        medians = interleaved_medians({"sliced": step(shared, op), "own": step(own)}, args.repeats, "cpu")
        rows[op] = {"sliced_ms": medians["sliced"] * 1e3, "own_ms": medians["own"] * 1e3,
                    "overhead": medians["sliced"] / medians["own"] - 1}
    alpha = torch.zeros(len(ops), requires_grad=True)

    def mixture():
        shared.zero_grad(set_to_none=True)
        alpha.grad = None
        shared.choice = alpha.softmax(0)
        shared(x).sum().backward()
        shared.choice = None

    mixture_ms = interleaved_medians({"mixture": mixture}, args.repeats, "cpu")["mixture"] * 1e3
    nesting = nesting_medians(args)
    record = {"block": args.block, "channels": args.channels, "size": args.size, "batch": args.batch,
              "channels_last": args.channels_last,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows,
              "mixture_ms": mixture_ms, "nesting_ms": nesting}
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    print(f"{args.block} block, {args.channels} channels, {args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads: forward+backward per candidate")
    print(f"{'op':<20} {'sliced ms':>10} {'own ms':>10} {'overhead':>9}")
    for op, row in rows.items():
        print(f"{op:<20} {row['sliced_ms']:>10.1f} {row['own_ms']:>10.1f} {row['overhead']:>+9.1%}")
    print(f"mixture of all {len(ops)}: {mixture_ms:.1f} ms")
    print(f"k3+k5+k7 of one dense conv, forward and backward to the input: three convolutions "
          f"{nesting['separate']:.1f} ms, one stacked {nesting['stacked']:.1f} ms")
    return 0


def nesting_medians(args) -> dict[str, float]:
    """Milliseconds of the k3, k5 and k7 outputs of one dense 7x7 weight: three convolutions of
    its centres, or one of the three stacked (zero-ringed) along the output channels."""
    import torch.nn.functional as F

    c = args.channels
    weight = torch.randn(c, c, 7, 7)
    x = torch.randn(args.batch, c, args.size, args.size, requires_grad=True)
    centres = [weight[:, :, 3 - k // 2:4 + k // 2, 3 - k // 2:4 + k // 2].contiguous() for k in KERNELS]
    stacked = torch.cat([F.pad(w, [(7 - w.shape[-1]) // 2] * 4) for w in centres])

    def separate():
        x.grad = None
        sum(F.conv2d(x, w, padding=w.shape[-1] // 2).sum() for w in centres).backward()

    def one():
        x.grad = None
        F.conv2d(x, stacked, padding=3).sum().backward()

    medians = interleaved_medians({"separate": separate, "stacked": one}, args.repeats, "cpu")
    return {k: v * 1e3 for k, v in medians.items()}


if __name__ == "__main__":
    sys.exit(main())
