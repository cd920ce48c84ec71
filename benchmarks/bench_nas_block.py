"""What a NAS seed's searched layer costs without a fused op: times one sampled-path step (forward
and backward) of MobileNetV3's SE + hard-swish block, sliced from the shared max-size weights, three
ways:

- ``eager``: the search's own path (``fna_ext.families.mbconv.sampled_block``), a chain of PyTorch
  ops on the slices;
- ``compiled``: the same function through ``torch.compile`` (inductor), compiled once per candidate
  before timing;
- ``fused_relu6_no_se``: for scale, the fused C++/CUDA op on the same shapes without the SE and with
  ReLU6 (MobileNetV2's block, all the fused kernels compute today).

and the mixture step (every candidate, weighted, backward to alpha) eagerly. The default shape is
MobileNetV3-Large's layer ``s5_l1`` (112 -> 160 channels in, 160 out, hidden up to 960) at the
embedded detection default's 160 px input (5x5 maps), batch 8.

    python benchmarks/bench_nas_block.py [--c-in 160] [--c-out 160] [--size 5] [--batch 8]
        [--repeats 7] [--device cpu|cuda] [--no-compile] [--json]
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

from fna_ext.families.mbconv.op import Op  # noqa: E402
from fna_ext.families.mbconv.sampled_block import sampled_block  # noqa: E402
from fna_ext.families.mbconv.search_layer import SearchLayer  # noqa: E402
from fna_ext.nas.search_space import LayerSpec  # noqa: E402
from fna_ext.ops.sampled_mbconv import takes_fused_path  # noqa: E402


def _layer(c_in, c_out, suffix, device):
    ops = tuple(f"k{k}_e{e}{suffix}" for k in (3, 5, 7) for e in (2.3, 2.5, 3, 4, 6)) + ("skip",)
    return SearchLayer(LayerSpec(5, 1, c_in, c_out, 1, ops), "shared", affine_bn=False, bn_eps=1e-5).to(device)


def _saved_megabytes(layer, x, weights) -> float:
    """What the mixture's forward keeps for its backward (inputs and weights excluded)."""
    kept, skip = [], {t.data_ptr() for t in [x, *layer.parameters()]}

    def pack(t):
        if t.data_ptr() not in skip and all(t.data_ptr() != k.data_ptr() for k in kept):
            kept.append(t)
        return t

    layer.choice = weights
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.sum().backward()
    return sum(t.numel() * t.element_size() for t in kept) / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c-in", type=int, default=160)
    parser.add_argument("--c-out", type=int, default=160)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    layer = _layer(args.c_in, args.c_out, "_hse0.25_hs", args.device)
    plain = _layer(args.c_in, args.c_out, "", args.device)
    x = torch.randn(args.batch, args.c_in, args.size, args.size, device=args.device, requires_grad=True)
    block = layer.blocks[next(iter(layer.blocks))]
    compiled = None if args.no_compile else torch.compile(sampled_block, dynamic=False)
    rows = {}
    for name in ("k3_e3", "k5_e6", "k7_e6"):
        op = Op.parse(f"{name}_hse0.25_hs")
        parts = dict(stride=1, dilation=1, affine=False, eps=1e-5)

        def step(fn=sampled_block, op=op):
            fn(x, block, op, **parts).square().mean().backward()

        def fused_plain(name=name):
            plain.choice = name
            plain(x).square().mean().backward()

        versions = {"eager": step, "fused_relu6_no_se": fused_plain}
        if compiled is not None:
            versions["compiled"] = lambda op=op: step(compiled, op)
        rows[name] = {k: v * 1e3 for k, v in interleaved_medians(versions, args.repeats, args.device).items()}
    weights = torch.softmax(torch.randn(len(layer.spec.candidates), device=args.device), 0).requires_grad_()

    def mixture():
        layer.choice = weights
        layer(x).square().mean().backward()

    # the eager mixture keeps every candidate's inner outputs (search.recompute applies to the fused ones)
    rows["mixture (16 candidates)"] = {"eager": interleaved_medians({"m": mixture}, args.repeats, args.device)["m"] * 1e3,
                                       "saved_mb": _saved_megabytes(layer, x, weights)}
    result = {"device": args.device, "torch": torch.__version__, "shape": vars(args), "ms": rows,
              "fused_path_taken": takes_fused_path(x, 3)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.device}, torch {torch.__version__}; x {tuple(x.shape)}; ms per forward+backward (median of "
          f"{args.repeats}); fused path available: {result['fused_path_taken']}")
    columns = ["eager", "compiled", "fused_relu6_no_se"]
    print(f"{'candidate':<36}" + "".join(f"{c:>20}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<36}" + "".join(f"{row[c]:>20.2f}" if c in row else f"{'-':>20}" for c in columns)
              + (f"   kept for the backward {row['saved_mb']:.2f} MB" if "saved_mb" in row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
