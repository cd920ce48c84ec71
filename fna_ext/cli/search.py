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
from pathlib import Path

import torch
import torch.distributed

from .. import cli
from ..engine import distributed
from ..nas.search import STRATEGIES, search
from ..config import resolve
from ..tasks.detection.presets import search_preset
from ..remap import load_seed_network
from .train import add_common_arguments, check_device

PHASES = ("data", "seed", "remap", "cost table", "search", "derive")


def build_config(args) -> dict:
    preset = search_preset(args.detector, synthetic=args.data is None)
    overrides = [f"data.root={args.data}"] if args.data is not None else []
    overrides += list(args.set)
    for flag, key in ((args.weight_sharing, "search.weight_sharing"), (args.strategy, "search.strategy"),
                      (args.cost, "search.cost")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if getattr(args, "no_fused", False):
        overrides.append("search.fused=false")
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be positive, got {args.epochs}")
        overrides.append(f"train.epochs={args.epochs}")
    return resolve(preset, args.config, overrides)


def seed_weights_path(seed_weights: str | None, data: str | None) -> Path:
    """The seed's weight file: the given one, or with no ``--data`` the embedded default's
    (pretrained once and cached)."""
    if seed_weights:
        return Path(seed_weights)
    if data is not None:
        raise ValueError("--seed-weights is required with --data: FNA adapts a pretrained seed "
                         "(torchvision, timm, FNA or fna_ext weights)")
    from ..pretrain import default_seed_weights  # imported late: only the embedded default needs it
    return default_seed_weights()


def summary(result, seed_path: Path, seconds: dict, args) -> str:
    record = result.record
    adapted, seed = record["adapted"], record["seed"]
    size = "x".join(map(str, adapted["input_size"]))
    lines = [f"derived architecture ({record['strategy']} search, {record['weight_sharing']} weights):",
             f"  {result.arch}",
             f"{'':12}{'params':>12}{'MAdds':>16}   ({record['detector']} at {size})",
             f"{'seed':12}{seed['params']:>12,}{seed['madds']:>16,}",
             f"{'adapted':12}{adapted['params']:>12,}{adapted['madds']:>16,}",
             f"backbone {record['cost_kind']} the search optimised: {record['expected_cost']:.4g} "
             f"{record['cost_unit']} expected under softmax(alpha), {record['derived_cost']:.4g} derived",
             "time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()),
             f"wrote {result.out_dir / 'arch.json'}, arch.png, alphas.png",
             "next (parameter adaptation):"]
    command = ["python", "-m", "fna_ext.train", "--task", "coco", "--detector", record["detector"],
               "--arch", str(result.out_dir / "arch.json"), "--seed-weights", str(seed_path),
               "--out", str(result.out_dir.parent / "train")]
    if args.data:
        command += ["--data", args.data]
    lines.append("  " + shlex.join(command))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--seed-arch", help="the seed's arch, when its weight file does not embed one "
                                            "(default: mobilenet_v2)")
    parser.add_argument("--out", default="runs/search", help="output folder (default: runs/search)")
    parser.add_argument("--weight-sharing", choices=["shared", "independent"])
    parser.add_argument("--strategy", choices=STRATEGIES)
    parser.add_argument("--cost", choices=["madds", "latency"])
    parser.add_argument("--no-fused", action="store_true",
                        help="run the sampled MBConv with the pure-PyTorch reference instead of the fused kernels")
    args = parser.parse_args(argv)
    check_device(args.device)
    import time

    config = build_config(args)
    context = distributed.init_from_env(args.device)  # under torchrun: one process per device
    try:
        started = time.perf_counter()
        if context is None or context.is_main:  # builds the embedded seed once, on one process
            seed_path = seed_weights_path(args.seed_weights, args.data)
        if context is not None:
            torch.distributed.barrier()
            seed_path = seed_weights_path(args.seed_weights, args.data)
        seed = load_seed_network(seed_path, args.seed_arch)
        seed_seconds = time.perf_counter() - started
        result = search(config, seed, Path(args.out), resume=args.resume, device=args.device)
    finally:
        distributed.shutdown()
    if context is None or context.is_main:
        print(summary(result, seed_path, {"seed": seed_seconds, **result.phase_seconds}, args))
    return 0


if __name__ == "__main__":
    cli.run(main)
