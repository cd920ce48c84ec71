"""``python -m fna_ext.search``: FNA's architecture adaptation, the project's main job. It remaps
the seed into the super network, searches on the task with a cost term, derives the target
architecture and writes ``arch.json``, ``arch.png`` and ``alphas.png``.

With no ``--data`` it runs on the embedded default: the synthetic COCO-format shapes and the
project's own pretrained seed (built once and cached), with a schedule sized for a small CPU.
With ``--data`` it uses the published settings, and needs ``--seed-weights``.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch
import torch.distributed

from . import ArgumentParser, check_output_folder, removed_if_failed, run
from .common import add_common_arguments, check_device, config_from_preset, seed_arch_of, task_and_model
from ..engine import distributed
from ..nas.search import search
from ..nas.settings import COSTS, STRATEGIES
from ..nas.report import DECISIVE_PROBABILITY
from ..pretrain import seed_weights_path
from ..remap import load_seed_network

PHASES = ("data", "seed", "remap", "cost table", "search", "derive")


def build_config(args) -> dict:
    seed_arch = seed_arch_of(args)  # reads --seed-weights once for the model and the preset
    task, model = task_and_model(args, seed_arch)
    overrides = [f"{key}={flag}" for flag, key in ((args.weight_sharing, "search.weight_sharing"),
                                                   (args.strategy, "search.strategy"), (args.cost, "search.cost"))
                 if flag is not None]
    if getattr(args, "no_fused", False):
        overrides.append("search.fused=false")
    preset = task.search_preset(model, synthetic=args.data is None, seed_arch=seed_arch)
    return config_from_preset(task, preset, args, overrides)


def summary(result, seed_path: Path, seconds: dict, args) -> str:
    record = result.record
    adapted, seed = record["adapted"], record["seed"]
    size = "x".join(map(str, adapted["input_size"]))
    lines = [f"derived architecture ({record['strategy']} search, {record['weight_sharing']} weights):",
             f"  {result.arch}",
             f"{'':12}{'params':>12}{'MAdds':>16}   ({record['model']} at {size})",
             f"{'seed':12}{seed['params']:>12,}{seed['madds']:>16,}",
             f"{'adapted':12}{adapted['params']:>12,}{adapted['madds']:>16,}",
             f"backbone {record['cost_kind']} the search optimised: {record['expected_cost']:.4g} "
             f"{record['cost_unit']} expected under softmax(alpha), {record['derived_cost']:.4g} derived",
             f"decided layers (winner >= {DECISIVE_PROBABILITY:g} of softmax(alpha)): {record['decided_layers']} of "
             f"{len(record['layers'])}",
             "time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()),
             f"wrote {result.out_dir / 'arch.json'}, arch.png, alphas.png, summary.md",
             "next (parameter adaptation):"]
    command = ["python", "-m", "fna_ext.train", "--task", record["task"], "--model", record["model"],
               "--arch", str(result.out_dir / "arch.json"), "--seed-weights", str(seed_path),
               "--out", str(result.out_dir.parent / "train")]
    if getattr(args, "seed_arch", None):  # a torchvision or timm file does not carry its arch
        command += ["--seed-arch", args.seed_arch]
    if args.data:
        command += ["--data", args.data]
    lines.append("  " + shlex.join(command))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.search", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--seed-arch", help="the seed's arch, when its weight file does not embed one; without "
                                            "--seed-weights, the project's own seed of that named arch "
                                            "(mobilenet_v2, the default, or resnet18, resnet34, resnet50)")
    parser.add_argument("--out", default="runs/search", help="output folder (default: runs/search)")
    parser.add_argument("--weight-sharing", choices=["shared", "independent"])
    parser.add_argument("--strategy", choices=STRATEGIES)
    parser.add_argument("--cost", choices=COSTS)
    parser.add_argument("--no-fused", action="store_true",
                        help="run the sampled MBConv with the pure-PyTorch reference instead of the fused kernels")
    args = parser.parse_args(argv)
    check_device(args.device)
    config = build_config(args)
    check_output_folder(args.out)
    context = distributed.init_from_env(args.device)  # under torchrun: one process per device
    with removed_if_failed(args.out):
        result, seed_path, seed_seconds = _run(args, config, context)
    if context is None or context.is_main:
        print(summary(result, seed_path, {"seed": seed_seconds, **result.phase_seconds}, args))
    return 0


def _run(args, config: dict, context):
    try:
        started = time.perf_counter()
        if context is None or context.is_main:  # builds the embedded seed once, on one process
            seed_path = seed_weights_path(args.seed_weights, args.data, args.seed_arch)
        if context is not None:
            torch.distributed.barrier()
            seed_path = seed_weights_path(args.seed_weights, args.data, args.seed_arch)
        seed = load_seed_network(seed_path, args.seed_arch)
        seed_seconds = time.perf_counter() - started
        result = search(config, seed, Path(args.out), resume=args.resume, device=args.device)
    finally:
        distributed.shutdown()
    return result, seed_path, seed_seconds


if __name__ == "__main__":
    run(main)
