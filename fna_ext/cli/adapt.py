"""``python -m fna_ext.adapt``: the whole FNA pipeline in one command. The seed's parameters are
remapped into the super network, the architecture is adapted on the task (the search), the seed
is remapped again into the derived architecture, and its parameters are adapted (fine-tuning)
and evaluated with pycocotools.

``OUT/search/`` and ``OUT/train/`` hold each phase's own outputs; ``OUT/summary.json`` and
``OUT/summary.md`` sum them up: the architecture, Params/MAdds next to the seed's, the 12 COCO
stats, the time per phase and the cost in device-hours, as the paper reports it.

With no ``--data`` it runs on the embedded default (the synthetic shapes and the project's own
pretrained seed) with schedules sized for a small CPU; with ``--data``, on the published
settings, and it needs ``--seed-weights``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import cli
from ..nas.search import search
from ..atomic import atomic_write_text
from ..config import resolve
from ..tasks.detection.coco_eval import STAT_NAMES
from ..tasks.detection.presets import finetune_preset, search_preset
from ..remap import load_seed_network
from .search import seed_weights_path
from ..tasks import DETECTORS
from .train import check_device, format_metrics
from ..tasks.detection.training import INITS, train_detector

SUMMARY_FORMAT = "fna_ext.adapt_summary"


@dataclass
class AdaptOptions:
    detector: str = "ssdlite"
    data: str | None = None
    seed_weights: str | None = None
    search_init: str = "remap"     # the paper's Table 5: Remap or RandInit before ArchAdapt
    train_init: str = "remap"      # ... and before ParamAdapt
    bn_recalibrate: int = 0
    seed: int = 0                  # the runs' random seed (data order, augmentation, new layers)
    search_overrides: Sequence[str] = ()
    train_overrides: Sequence[str] = ()
    device: str = "cpu"


def pipeline_configs(options: AdaptOptions) -> tuple[dict, dict]:
    """(search config, fine-tuning config): the presets, then the options, then the overrides."""
    synthetic = options.data is None
    common = [f"data.root={options.data}"] if options.data else []
    common.append(f"train.seed={options.seed}")
    search_config = resolve(search_preset(options.detector, synthetic), None,
                            [*common, f"search.init={options.search_init}", *options.search_overrides])
    train_config = resolve(finetune_preset(options.detector, synthetic), None,
                           [*common, *options.train_overrides])
    return search_config, train_config


def adapt(options: AdaptOptions, out_dir: str | os.PathLike,
          announce: Callable[[str], None] = lambda message: None) -> dict:
    """Runs the pipeline into ``out_dir`` and returns the summary it writes there."""
    for name, value in (("--search-init", options.search_init), ("--init", options.train_init)):
        if value not in INITS:
            raise ValueError(f"{name} must be one of {INITS}, got {value!r}")
    out_dir = Path(out_dir)
    search_config, train_config = pipeline_configs(options)  # bad settings fail before any work
    started = time.perf_counter()
    phases: dict[str, float] = {}

    announce("seed: loading the seed network")
    seed_path = seed_weights_path(options.seed_weights, options.data)
    seed = load_seed_network(seed_path)
    phases["seed"] = time.perf_counter() - started

    announce(f"architecture adaptation ({options.search_init} init) -> {out_dir / 'search'}")
    found = search(search_config, seed, out_dir / "search", device=options.device)
    phases.update({f"search: {k}": v for k, v in found.phase_seconds.items()})

    announce(f"parameter adaptation ({options.train_init} init) -> {out_dir / 'train'}")
    trained = train_detector(train_config, found.arch, out_dir / "train", seed_weights=seed_path,
                             init=options.train_init, bn_recalibrate=options.bn_recalibrate,
                             device=options.device)
    phases.update({f"parameter adaptation: {k}": v for k, v in trained.phase_seconds.items()})

    summary = build_summary(options, found, trained, seed_path, phases, time.perf_counter() - started)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary


def device_description(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def build_summary(options: AdaptOptions, found, trained, seed_path: Path, phases: dict,
                  seconds: float) -> dict:
    record = found.record
    search_seconds = sum(v for k, v in phases.items() if k.startswith("search: "))
    train_seconds = sum(v for k, v in phases.items() if k.startswith("parameter adaptation: "))
    return {
        "format": SUMMARY_FORMAT, "task": "coco", "detector": options.detector,
        "data": options.data or "embedded synthetic default", "seed_weights": str(seed_path),
        "pipeline": f"{'Remap' if options.search_init == 'remap' else 'RandInit'} -> ArchAdapt -> "
                    f"{'Remap' if options.train_init == 'remap' else 'RandInit'} -> ParamAdapt",
        "run_seed": options.seed,
        "arch": str(found.arch), "seed_arch": record["seed_arch"],
        "adapted": record["adapted"], "seed": record["seed"],
        "metrics": trained.metrics,
        "seconds": {"total": seconds, **phases},
        # adapt runs in one process, so device-hours are wall-clock hours on one device
        "cost": {"device": device_description(options.device), "processes": 1,
                 "search_device_hours": search_seconds / 3600,
                 "parameter_adaptation_device_hours": train_seconds / 3600,
                 "total_device_hours": seconds / 3600},
        "outputs": {"search": str(found.out_dir), "arch": str(found.out_dir / "arch.json"),
                    "train": str(trained.out_dir), "weights": str(trained.weights)},
    }


def summary_markdown(summary: dict) -> str:
    adapted, seed, metrics, cost = summary["adapted"], summary["seed"], summary["metrics"], summary["cost"]
    size = "x".join(map(str, adapted["input_size"]))
    lines = [
        f"# FNA adaptation: {summary['detector']} on {summary['data']}", "",
        f"Pipeline: {summary['pipeline']} (run seed {summary['run_seed']})", "",
        "## Architecture", "", f"- seed: `{summary['seed_arch']}`", f"- adapted: `{summary['arch']}`", "",
        f"| network ({size}) | Params | MAdds | backbone Params | backbone MAdds |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {c['params']:,} | {c['madds']:,} | {c['backbone_params']:,} | {c['backbone_madds']:,} |"
          for name, c in (("seed", seed), ("adapted", adapted))),
        "", "## COCO metrics (pycocotools, validation split)", "",
        "| " + " | ".join(STAT_NAMES) + " |", "|" + " ---: |" * len(STAT_NAMES),
        "| " + " | ".join(f"{metrics[name]:.3f}" for name in STAT_NAMES) + " |",
        "", "## Time and cost", "", "| phase | seconds |", "| --- | ---: |",
        *(f"| {name} | {value:.1f} |" for name, value in summary["seconds"].items()),
        "",
        f"Cost on {cost['device']} x {cost['processes']}: search {cost['search_device_hours']:.3f}, "
        f"parameter adaptation {cost['parameter_adaptation_device_hours']:.3f}, total "
        f"{cost['total_device_hours']:.3f} device-hours.", "",
        f"Weights: `{summary['outputs']['weights']}`", "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="coco", choices=["coco"])
    parser.add_argument("--detector", default="ssdlite", choices=DETECTORS)
    parser.add_argument("--data", help="COCO-format root; default: the embedded synthetic dataset")
    parser.add_argument("--seed-weights", help="pretrained seed weights (torchvision, timm, FNA or fna_ext)")
    parser.add_argument("--out", default="runs/adapt", help="output folder (default: runs/adapt)")
    parser.add_argument("--search-init", choices=INITS, default="remap",
                        help="how the super network starts (default: remap the seed)")
    parser.add_argument("--init", choices=INITS, default="remap",
                        help="how the derived network starts fine-tuning (default: remap the seed)")
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                        help="re-estimate BN statistics on N batches before fine-tuning")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the runs (default 0)")
    parser.add_argument("--search-epochs", type=int, help="shortcut for --search-set train.epochs=N")
    parser.add_argument("--train-epochs", type=int, help="shortcut for --train-set train.epochs=N")
    parser.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a search setting, e.g. search.lambda=0.2 (repeatable)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fine-tuning setting, e.g. train.optimizer.lr=0.1 (repeatable)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-fused", action="store_true",
                        help="search with the pure-PyTorch sampled MBConv instead of the fused kernels")
    args = parser.parse_args(argv)
    check_device(args.device)
    for flag, value in (("--search-epochs", args.search_epochs), ("--train-epochs", args.train_epochs)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.bn_recalibrate < 0:
        raise ValueError(f"--bn-recalibrate must be a number of batches >= 0, got {args.bn_recalibrate}")
    options = AdaptOptions(
        detector=args.detector, data=args.data, seed_weights=args.seed_weights,
        search_init=args.search_init, train_init=args.init, bn_recalibrate=args.bn_recalibrate,
        seed=args.seed, device=args.device,
        search_overrides=[*args.search_set] + ([f"train.epochs={args.search_epochs}"] if args.search_epochs else [])
        + (["search.fused=false"] if args.no_fused else []),
        train_overrides=[*args.train_set] + ([f"train.epochs={args.train_epochs}"] if args.train_epochs else []))
    summary = adapt(options, args.out, announce=lambda message: print(f"== {message}", flush=True))
    adapted, seed = summary["adapted"], summary["seed"]
    print(f"adapted architecture: {summary['arch']}")
    print(f"params {seed['params']:,} -> {adapted['params']:,}, MAdds {seed['madds']:,} -> {adapted['madds']:,}")
    print(format_metrics(summary["metrics"]))
    print(f"total {summary['seconds']['total'] / 60:.1f} min "
          f"({summary['cost']['total_device_hours']:.3f} device-hours on {summary['cost']['device']})")
    print(f"wrote {Path(args.out) / 'summary.md'} and summary.json")
    return 0


if __name__ == "__main__":
    cli.run(main)
