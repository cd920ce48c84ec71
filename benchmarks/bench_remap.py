"""Time remapping MobileNetV2 into the full detection super network (REFERENCE.md's search space:
max depths {4,4,4,4,4,1}, k{3,5,7} x e{3,6} per layer, each candidate with its own weights), with
the compiled one-call op and with the pure-PyTorch reference. Also the shared-weight variant
(one k7_e6 block per layer) and a whole target network.

``--seed-arch resnet50`` (or resnet18, resnet34) times a ResNet seed into its super network
instead: the seed's depth plus one layer per searched stage, kernels 3/5/7 x groups 1/2/4, shared
(one dense 7x7 block per layer) and independent (one block per candidate, the grouped ones
sliced from the dense seed by the block-diagonal rule).

    python benchmarks/bench_remap.py [--seed-arch NAME] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fna_ext import _extension, mobilenet_v2
from fna_ext.remap import plan_candidates
from fna_ext.families.mbconv.candidates import candidate_blocks
from fna_ext.tasks.detection.task import RETINANET_SPACE as DETECTION


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seed-arch", default="mobilenet_v2", help="mobilenet_v2 (default) or a named ResNet")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.seed_arch != "mobilenet_v2":
        return resnet_supernet(args)
    seed = mobilenet_v2(num_classes=None)
    blocks = candidate_blocks(seed.arch, DETECTION)
    tensors = sum(1 for v in blocks.state_dict().values() if v.is_floating_point())
    elements = sum(v.numel() for v in blocks.state_dict().values() if v.is_floating_point())
    shared = torch.nn.ModuleDict({k.rsplit("_", 2)[0] + "_k7_e6": b for k, b in blocks.items() if k.endswith("k7_e6")})

    def full(apply_name: str, modules=blocks):
        def run():
            plan = plan_candidates(seed, modules)
            getattr(plan, apply_name)(seed, modules)
        return run

    results = {
        "candidates": len(blocks), "tensors": tensors, "elements": elements,
        "extension": _extension.has_kernel("remap_copy", "cpu"),
        "threads": torch.get_num_threads(),
        "independent_fused_s": median_seconds(full("apply"), args.repeats),
        "independent_reference_s": median_seconds(full("apply_reference"), args.repeats),
        "shared_fused_s": median_seconds(full("apply", shared), args.repeats),
        "plan_only_s": median_seconds(lambda: plan_candidates(seed, blocks), args.repeats),
    }
    if args.json:
        print(json.dumps(results))
        return
    print(f"detection super network: {results['candidates']} candidate blocks, {tensors} tensors, "
          f"{elements / 1e6:.1f}M values; extension kernel: {results['extension']}, "
          f"{results['threads']} threads")
    for key in ("independent_fused_s", "independent_reference_s", "shared_fused_s", "plan_only_s"):
        print(f"  {key:<26} {results[key] * 1000:8.1f} ms")


def resnet_supernet(args) -> None:
    from fna_ext.arch import Arch
    from fna_ext.families import get_family
    from fna_ext.nas.search_space import SearchSpace
    from fna_ext.nas.supernet import SuperNetwork
    from fna_ext.remap import plan_candidates as plan

    arch = Arch.parse(args.seed_arch)
    seed = get_family(arch.family).build_network(arch, None).eval()
    space = SearchSpace("resnet", (), groups=(1, 2, 4), depth_margin=1)
    results = {"seed": args.seed_arch, "extension": _extension.has_kernel("remap_copy", "cpu"),
               "threads": torch.get_num_threads()}
    for mode in ("shared", "independent"):
        supernet = SuperNetwork(arch, space, weight_sharing=mode)
        blocks = torch.nn.ModuleDict({f"{layer.spec.key}_{name}": block for layer in supernet.search_layers()
                                      for name, block in layer.blocks.items()})
        results[f"{mode}_blocks"] = len(blocks)
        results[f"{mode}_values"] = sum(v.numel() for v in blocks.state_dict().values() if v.is_floating_point())
        results[f"{mode}_s"] = median_seconds(lambda: plan(seed, blocks).apply(seed, blocks), args.repeats)
        # the whole super network from the seed, as the search builds it (stem and first stage too)
        results[f"{mode}_supernet_s"] = median_seconds(
            lambda: SuperNetwork(arch, space, seed=seed, weight_sharing=mode), args.repeats)
    if args.json:
        print(json.dumps(results))
        return
    for key, value in results.items():
        print(f"  {key:<26} {value * 1000:8.1f} ms" if key.endswith("_s") else f"  {key:<26} {value}")


if __name__ == "__main__":
    main()
