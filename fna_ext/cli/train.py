"""``python -m fna_ext.train``: trains a detector with a fixed backbone architecture on COCO-format
data and evaluates it with pycocotools. With no ``--data`` it trains on the embedded default
(synthetic shapes) with the embedded default's schedule; with ``--data`` it uses the published
COCO settings, which ``--config`` and ``--set`` override."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli
from ..arch import Arch
from ..config import resolve
from ..tasks.detection.coco_eval import STAT_NAMES
from ..tasks.detection.presets import finetune_preset
from ..tasks import DETECTORS
from ..tasks.detection.training import INITS, train_detector


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="coco", choices=["coco"])
    parser.add_argument("--detector", default="ssdlite", choices=DETECTORS)
    parser.add_argument("--data", help="COCO-format root (annotations/instances_{train,val}2017.json, "
                                       "{train,val}2017/); default: the embedded synthetic dataset")
    parser.add_argument("--seed-weights", help="pretrained backbone weights (torchvision, timm, FNA or fna_ext)")
    parser.add_argument("--config", help="YAML file of settings to override")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.optimizer.lr=0.1 (repeatable)")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def build_config(args) -> dict:
    preset = finetune_preset(args.detector, synthetic=args.data is None)
    overrides = list(args.set)
    if args.data is not None:
        overrides.insert(0, f"data.root={args.data}")
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be positive, got {args.epochs}")
        overrides.append(f"train.epochs={args.epochs}")
    return resolve(preset, args.config, overrides)


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA device; use --device cpu")


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{name} {metrics[name]:.3f}" for name in STAT_NAMES if name in metrics)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.train", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--arch", default="mobilenet_v2",
                        help="backbone: a name, an arch file (JSON or net_config) or inline net_config")
    parser.add_argument("--out", default=None, help="output folder (default: runs/train_DETECTOR)")
    parser.add_argument("--init", choices=INITS, default=None,
                        help="backbone initialisation: remap the seed into it (default when there is a "
                             "seed) or random")
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                        help="re-estimate the BN statistics on N training batches before fine-tuning")
    args = parser.parse_args(argv)
    check_device(args.device)
    config = build_config(args)
    arch = Arch.from_arg(args.arch)
    out = Path(args.out or f"runs/train_{args.detector}")
    if args.bn_recalibrate < 0:
        raise ValueError(f"--bn-recalibrate must be a number of batches >= 0, got {args.bn_recalibrate}")
    init = args.init or ("remap" if args.seed_weights else "random")
    result = train_detector(config, arch, out, seed_weights=args.seed_weights, init=init,
                            bn_recalibrate=args.bn_recalibrate, resume=args.resume, device=args.device)
    print(f"trained {args.detector} ({init} init) on {arch} in {result.seconds / 60:.1f} min")
    print(format_metrics(result.metrics))
    print(f"weights: {result.weights}\nmetrics: {out / 'metrics.json'} (log: {out / 'metrics.jsonl'}, "
          f"plot: {out / 'training.png'})")
    return 0


if __name__ == "__main__":
    cli.run(main)
