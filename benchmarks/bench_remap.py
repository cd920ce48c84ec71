"""Time remapping MobileNetV2 into the full detection super network (REFERENCE.md's search space:
max depths {4,4,4,4,4,1}, k{3,5,7} x e{3,6} per layer, each candidate with its own weights), with
the compiled one-call op and with the pure-PyTorch reference. Also the shared-weight variant
(one k7_e6 block per layer) and a whole target network.

    python benchmarks/bench_remap.py [--repeats 5] [--json]
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
    args = parser.parse_args()
    torch.manual_seed(0)
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


if __name__ == "__main__":
    main()
