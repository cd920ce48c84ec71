"""``python -m fna_ext.adapt``: the whole FNA pipeline in one command. The seed's parameters are
remapped into the super network, the architecture is adapted on the task (the search), the seed
is remapped again into the derived architecture, and its parameters are adapted (fine-tuning)
and evaluated with the task's metrics (pycocotools AP for detection).

``OUT/search/`` and ``OUT/train/`` hold each phase's own outputs; ``OUT/summary.json`` and
``OUT/summary.md`` sum them up: the architecture, Params/MAdds next to the seed's, the task's
metrics, the time per phase and the cost in device-hours, as the paper reports it.

With no ``--data`` it runs on the embedded default (the synthetic shapes and the project's own
pretrained seed) with schedules sized for a small CPU; with ``--data``, on the published
settings, and it needs ``--seed-weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import ArgumentParser, check_output_folder, removed_if_failed, run
from .common import DEVICES, add_task_arguments, check_device
from ..engine.finetune import INITS
from ..pipeline import AdaptOptions, adapt
from ..tasks import get_task


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.adapt", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(parser)
    parser.add_argument("--data", help="the dataset root (COCO layout for detection); default: the embedded "
                                       "synthetic dataset")
    parser.add_argument("--seed-weights", help="pretrained seed weights (torchvision, timm, FNA or fna_ext)")
    parser.add_argument("--seed-arch", help="the seed's arch, when its weight file does not embed one; without "
                                            "--seed-weights, the project's own seed of that named arch "
                                            "(mobilenet_v2, the default, or resnet18, resnet34, resnet50)")
    parser.add_argument("--out", default="runs/adapt", help="output folder (default: runs/adapt)")
    parser.add_argument("--search-init", choices=INITS, default="remap",
                        help="how the super network starts (default: remap the seed)")
    parser.add_argument("--init", choices=INITS, default="remap",
                        help="how the derived network starts fine-tuning (default: remap the seed)")
    parser.add_argument("--bn-recalibrate", type=int, default=None, metavar="N",
                        help="re-estimate BN statistics on N batches before fine-tuning")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the runs (default 0)")
    parser.add_argument("--search-epochs", type=int, help="shortcut for --search-set train.epochs=N")
    parser.add_argument("--train-epochs", type=int, help="shortcut for --train-set train.epochs=N")
    parser.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a search setting, e.g. search.lambda=0.2 (repeatable)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fine-tuning setting, e.g. train.optimizer.lr=0.1 (repeatable)")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--no-fused", action="store_true",
                        help="search with the pure-PyTorch sampled MBConv instead of the fused kernels")
    args = parser.parse_args(argv)
    check_device(args.device)
    for flag, value in (("--search-epochs", args.search_epochs), ("--train-epochs", args.train_epochs)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.bn_recalibrate is not None and args.bn_recalibrate < 0:
        raise ValueError(f"--bn-recalibrate must be a number of batches >= 0, got {args.bn_recalibrate}")
    options = AdaptOptions(
        task=args.task, model=args.model, data=args.data, seed_weights=args.seed_weights, seed_arch=args.seed_arch,
        search_init=args.search_init, train_init=args.init, bn_recalibrate=args.bn_recalibrate,
        seed=args.seed, device=args.device,
        search_overrides=[*args.search_set] + ([f"train.epochs={args.search_epochs}"] if args.search_epochs else [])
        + (["search.fused=false"] if args.no_fused else []),
        train_overrides=[*args.train_set] + ([f"train.epochs={args.train_epochs}"] if args.train_epochs else []))
    check_output_folder(args.out)
    with removed_if_failed(args.out):
        summary = adapt(options, args.out, announce=lambda message: print(f"== {message}", flush=True))
    adapted, seed = summary["adapted"], summary["seed"]
    print(f"adapted architecture: {summary['arch']}")
    print(f"params {seed['params']:,} -> {adapted['params']:,}, MAdds {seed['madds']:,} -> {adapted['madds']:,}")
    print(get_task(args.task).format_metrics(summary["metrics"]))
    print(f"total {summary['seconds']['total'] / 60:.1f} min "
          f"({summary['cost']['total_device_hours']:.3f} device-hours on {summary['cost']['device']})")
    print(f"wrote {Path(args.out) / 'summary.md'} and summary.json")
    return 0


if __name__ == "__main__":
    run(main)
