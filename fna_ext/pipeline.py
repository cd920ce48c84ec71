"""The whole FNA pipeline as a function (:func:`adapt`): the seed remapped into the super
network, the architecture adapted on the task (the search), the seed remapped again into the
derived architecture, its parameters adapted (fine-tuning) and evaluated with the task's metrics.
``python -m fna_ext.adapt`` is its command line."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .atomic import atomic_write_text
from .engine.finetune import INITS, finetune
from .nas.report import decisions_markdown
from .nas.search import search
from .pretrain import seed_weights_path
from .remap import declared_seed_arch, load_seed_network
from .tasks import DEFAULT_TASK, get_task

SUMMARY_FORMAT = "fna_ext.adapt_summary"


@dataclass
class AdaptOptions:
    task: str = DEFAULT_TASK
    model: str | None = None       # the task's model; None: its default
    data: str | None = None
    seed_weights: str | None = None
    seed_arch: str | None = None   # the weights' arch where the file has none; without weights, the
                                   # named arch of the project's own seed (mobilenet_v2, resnet18, ...)
    search_init: str = "remap"     # the paper's Table 5: Remap or RandInit before ArchAdapt
    train_init: str = "remap"      # ... and before ParamAdapt
    bn_recalibrate: int | None = None  # None: the fine-tuning config's adaptation.bn_recalibrate
    seed: int = 0                  # the runs' random seed (data order, augmentation, new layers)
    search_overrides: Sequence[str] = ()
    train_overrides: Sequence[str] = ()
    device: str = "cpu"


def pipeline_configs(options: AdaptOptions) -> tuple[dict, dict]:
    """(search config, fine-tuning config): the presets, then the options, then the overrides."""
    synthetic = options.data is None
    task = get_task(options.task)
    seed_arch = declared_seed_arch(options.seed_arch, options.seed_weights)
    model = task.model_name(options.model, seed_arch)
    common = [f"data.root={options.data}"] if options.data else []
    common.append(f"train.seed={options.seed}")
    search_config = task.resolve_config(task.search_preset(model, synthetic, seed_arch), None,
                                        [*common, f"search.init={options.search_init}", *options.search_overrides])
    train_config = task.resolve_config(task.finetune_preset(model, synthetic), None,
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
    seed_path = seed_weights_path(options.seed_weights, options.data, options.seed_arch)
    seed = load_seed_network(seed_path, options.seed_arch)
    phases["seed"] = time.perf_counter() - started

    announce(f"architecture adaptation ({options.search_init} init) -> {out_dir / 'search'}")
    found = search(search_config, seed, out_dir / "search", device=options.device)
    phases.update({f"search: {k}": v for k, v in found.phase_seconds.items()})

    announce(f"parameter adaptation ({options.train_init} init) -> {out_dir / 'train'}")
    trained = finetune(get_task(options.task), train_config, found.arch, out_dir / "train",
                       seed_weights=seed_path, seed_arch=options.seed_arch, init=options.train_init,
                       bn_recalibrate=options.bn_recalibrate,
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
    task = get_task(options.task)
    return {
        "format": SUMMARY_FORMAT, "task": task.name, "model": record["model"],
        "data": options.data or "embedded synthetic default", "seed_weights": str(seed_path),
        "pipeline": f"{'Remap' if options.search_init == 'remap' else 'RandInit'} -> ArchAdapt -> "
                    f"{'Remap' if options.train_init == 'remap' else 'RandInit'} -> ParamAdapt",
        "run_seed": options.seed,
        "arch": str(found.arch), "seed_arch": record["seed_arch"],
        "adapted": record["adapted"], "seed": record["seed"],
        "search_layers": [{k: layer[k] for k in ("layer", "winner", "winner_probability", "runner_up",
                                                 "runner_up_probability", "margin", "uniform", "decided")}
                          for layer in record["layers"]],
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
    names = [name for name in get_task(summary["task"]).metric_names if name in metrics]
    size = "x".join(map(str, adapted["input_size"]))
    lines = [
        f"# FNA adaptation: {summary['model']} on {summary['data']}", "",
        f"Pipeline: {summary['pipeline']} (run seed {summary['run_seed']})", "",
        "## Architecture", "", f"- seed: `{summary['seed_arch']}`", f"- adapted: `{summary['arch']}`", "",
        f"| network ({size}) | Params | MAdds | backbone Params | backbone MAdds |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {c['params']:,} | {c['madds']:,} | {c['backbone_params']:,} | {c['backbone_madds']:,} |"
          for name, c in (("seed", seed), ("adapted", adapted))),
        "", "## How decided the search's choices are", "",
        *decisions_markdown(summary["search_layers"]),
        "", f"## {summary['task']} metrics (validation split)", "",
        "| " + " | ".join(names) + " |", "|" + " ---: |" * len(names),
        "| " + " | ".join(f"{metrics[name]:.3f}" for name in names) + " |",
        "", "## Time and cost", "", "| phase | seconds |", "| --- | ---: |",
        *(f"| {name} | {value:.1f} |" for name, value in summary["seconds"].items()),
        "",
        f"Cost on {cost['device']} x {cost['processes']}: search {cost['search_device_hours']:.3f}, "
        f"parameter adaptation {cost['parameter_adaptation_device_hours']:.3f}, total "
        f"{cost['total_device_hours']:.3f} device-hours.", "",
        f"Weights: `{summary['outputs']['weights']}`", "",
    ]
    return "\n".join(lines)
