"""``python -m fna_ext.pretrain``: pretrains the project's own seed (MobileNetV2 on the synthetic
shapes, or on ``--data``), the seed the embedded default adapts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from . import ArgumentParser, check_output_file, removed_if_failed, run
from ..arch import Arch
from ..pretrain import DEFAULT_IMAGE_SIZE, default_seed_path, pretrain_seed, run_dir_for


def format_seconds(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m fna_ext.pretrain", description=(
        "Pretrain the project's own seed: MobileNetV2 on the synthetic shapes classification set "
        "(or on --data), written in the fna_ext weights layout with the arch embedded. "
        "Not an ImageNet model."))
    parser.add_argument("--data", help="classification root, <root>/{train,val}/<class>/<image>; "
                                       "default: the synthetic shapes, generated on first use")
    parser.add_argument("--out", help=f"output weights file (default: the cached default seed, "
                                      f"{default_seed_path()}, which the embedded default then reuses)")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--batch-size", type=int, help="shortcut for --set train.batch_size=N")
    parser.add_argument("--width-mult", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--arch", help="pretrain this architecture instead of MobileNetV2 (a name, an arch file "
                                       "such as a search's arch.json, or inline net_config)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"training and eval resolution (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--config", help="YAML file of settings to override")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set train.optimizer.lr=0.05 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder beside --out")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def _customised(args: argparse.Namespace) -> bool:
    """Whether the command line departs from the embedded default's settings."""
    return bool(args.data or args.epochs or args.batch_size or args.config or args.set
                or args.arch or args.width_mult != 1.0 or args.image_size != DEFAULT_IMAGE_SIZE)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.arch and args.width_mult != 1.0:
        raise ValueError("--width-mult scales MobileNetV2; with --arch the architecture gives the widths")
    arch = Arch.from_arg(args.arch) if args.arch else None
    out = Path(args.out) if args.out else default_seed_path()
    check_output_file(out, example="seed.pt")
    if args.out is None and _customised(args):
        print(f"note: without --out this replaces the embedded default's cached seed ({out}) "
              "with a non-default one", file=sys.stderr)
    with removed_if_failed(run_dir_for(out)):
        result = pretrain_seed(out, data_root=args.data, epochs=args.epochs, batch_size=args.batch_size,
                               width_mult=args.width_mult, image_size=args.image_size, device=args.device,
                               config_overrides=args.set, config_file=args.config, resume=args.resume,
                               announce=lambda line: print(line, file=sys.stderr, flush=True), arch=arch)
    print(f"val top-1 {result.accuracy:.4f}")
    print(f"weights: {result.path}")
    print(f"time: {format_seconds(result.seconds)}")
    return 0


if __name__ == "__main__":
    run(main)
