"""The fused SE + hard-swish block against eager PyTorch and ``torch.compile``: times one
sampled-path step (forward and backward) of MobileNetV3's block, sliced from the shared max-size
weights, three ways:

- ``fused``: the search's own path, the fused C++/CUDA op (``fna_ext::sampled_mbconv_forward``
  with ``activation`` and the SE);
- ``eager``: the op's reference (``sampled_mbconv_reference``), a chain of PyTorch ops on the
  slices, what ``--no-fused`` runs;
- ``compiled``: the reference through ``torch.compile`` (inductor), compiled once per candidate
  before timing;

and ``fused_relu6_no_se`` (MobileNetV2's block on the same shapes) for scale. Then the mixture
step (every candidate, weighted, backward to alpha), fused and eager, with what each keeps for the
backward. The default shape is MobileNetV3-Large's layer ``s5_l1`` (112 -> 160 channels in, 160
out, hidden up to 960) at the embedded detection default's 160 px input (5x5 maps), batch 8;
``--size 10 --c-in 80 --c-out 80`` is its ``s4`` layers at 10x10.

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

from fna_ext.families.mbconv.search_layer import SearchLayer  # noqa: E402
from fna_ext.nas.search_space import LayerSpec  # noqa: E402
from fna_ext.ops.sampled_mbconv import fused, sampled_mbconv_reference, takes_fused_path  # noqa: E402

SUFFIX = "_hse0.25_hs"  # MobileNetV3's block: hard-swish, an SE with a hard-sigmoid gate


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


def _reference_step(layer, x, name):
    """The candidate as the reference computes it, from the layer's own arguments."""
    block = layer.blocks[next(iter(layer.blocks))]
    attributes = layer._attributes(f"{name}{SUFFIX}", block)
    kernel = int(name[1])
    hidden = layer._expansion(f"{name}{SUFFIX}")

    def run(x):
        return sampled_mbconv_reference(x, block.expand.conv.weight, block.depthwise.conv.weight,
                                        block.project.conv.weight, kernel_size=kernel, expand_channels=hidden,
                                        **attributes)
    return run


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
    layer = _layer(args.c_in, args.c_out, SUFFIX, args.device)
    plain = _layer(args.c_in, args.c_out, "", args.device)
    x = torch.randn(args.batch, args.c_in, args.size, args.size, device=args.device, requires_grad=True)
    rows = {}
    for name in ("k3_e3", "k5_e6", "k7_e6"):
        reference = _reference_step(layer, x, name)
        compiled = None if args.no_compile else torch.compile(reference, dynamic=False)

        def fused_step(name=name):
            layer.choice = f"{name}{SUFFIX}"
            layer(x).square().mean().backward()

        def fused_plain(name=name):
            plain.choice = name
            plain(x).square().mean().backward()

        versions = {"fused": fused_step, "eager": lambda fn=reference: fn(x).square().mean().backward(),
                    "fused_relu6_no_se": fused_plain}
        if compiled is not None:
            versions["compiled"] = lambda fn=compiled: fn(x).square().mean().backward()
        rows[name] = {k: v * 1e3 for k, v in interleaved_medians(versions, args.repeats, args.device).items()}
    weights = torch.softmax(torch.randn(len(layer.spec.candidates), device=args.device), 0).requires_grad_()

    def mixture(use_fused):
        def run():
            with fused(use_fused):
                layer.choice = weights
                layer(x).square().mean().backward()
        return run

    row = {k: v * 1e3 for k, v in interleaved_medians({"fused": mixture(True), "eager": mixture(False)},
                                                      args.repeats, args.device).items()}
    with fused(True):
        row["saved_mb_fused"] = _saved_megabytes(layer, x, weights)
    with fused(False):
        row["saved_mb_eager"] = _saved_megabytes(layer, x, weights)
    rows["mixture (16 candidates)"] = row
    result = {"device": args.device, "torch": torch.__version__, "isa": torch.ops.fna_ext.cpu_isa() if args.device == "cpu" else args.device, "shape": vars(args),
              "ms": rows, "fused_path_taken": takes_fused_path(x, 3)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.device} ({result['isa']}), torch {torch.__version__}; x {tuple(x.shape)}; ms per forward+backward "
          f"(interleaved medians of {args.repeats}); fused path taken: {result['fused_path_taken']}")
    columns = ["fused", "eager", "compiled", "fused_relu6_no_se"]
    print(f"{'candidate':<26}" + "".join(f"{c:>19}" for c in columns) + f"{'eager/fused':>13}")
    for name, row in rows.items():
        print(f"{name:<26}" + "".join(f"{row[c]:>19.2f}" if c in row else f"{'-':>19}" for c in columns)
              + f"{row['eager'] / row['fused']:>12.2f}x"
              + (f"   kept for the backward: fused {row['saved_mb_fused']:.2f} MB, eager {row['saved_mb_eager']:.2f} MB"
                 if "saved_mb_fused" in row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
