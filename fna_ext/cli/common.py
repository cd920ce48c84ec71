"""Arguments and checks the task commands (search, train, adapt) share. Tasks and their models
come from the registry, so a registered task is on every command line at once."""

from __future__ import annotations

import argparse

from ..arch import Arch
from ..tasks import DEFAULT_TASK, Task, get_task, model_names, task_names

DEVICES = ("cpu", "cuda")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=DEFAULT_TASK, choices=task_names(),
                        help=f"the dense task (default: {DEFAULT_TASK})")
    parser.add_argument("--model", choices=model_names(),
                        help="the task's model (detection: ssdlite or retinanet; default: the task's first "
                             "that the seed's family can feed, so retinanet on a ResNet seed)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    add_task_arguments(parser)
    parser.add_argument("--data", help="the dataset root (COCO layout for detection); default: the embedded "
                                       "synthetic dataset")
    parser.add_argument("--seed-weights", help="pretrained backbone weights (torchvision, timm, FNA or fna_ext)")
    parser.add_argument("--config", help="YAML file of settings to override")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.optimizer.lr=0.1 (repeatable)")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--device", default="cpu", choices=DEVICES)


def task_and_model(args, backbone: Arch | None = None) -> tuple[Task, str]:
    """The task of ``--task`` and its model of ``--model`` (checked against each other). Without
    ``--model``, the task's default for ``backbone`` (the arch a command trains), else for
    ``--seed-arch``: a ResNet backbone gets RetinaNet, not SSDLite."""
    task = get_task(args.task)
    return task, task.model_name(args.model, backbone if backbone is not None else seed_arch_of(args))


def seed_arch_of(args) -> Arch | None:
    """``--seed-arch`` as an Arch, else the arch embedded in ``--seed-weights`` (an fna_ext file),
    else None (the command has neither flag, or they name no arch)."""
    from ..remap import declared_seed_arch  # torch: not needed for --help

    return declared_seed_arch(getattr(args, "seed_arch", None), getattr(args, "seed_weights", None))


def config_from_preset(task: Task, preset: dict, args, extra: list[str] = ()) -> dict:
    """``preset``, then ``--config``, then ``--data``, ``--set``, the command's own flags
    (``extra``) and ``--epochs``."""
    overrides = [f"data.root={args.data}"] if args.data is not None else []
    overrides += list(args.set) + list(extra)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be positive, got {args.epochs}")
        overrides.append(f"train.epochs={args.epochs}")
    return task.resolve_config(preset, args.config, overrides)


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA device; use --device cpu")
