"""``python -m fna_ext.evaluate``: evaluates a trained model (``model_final.pt``) with its task's
metrics (pycocotools AP for detection, mIoU for segmentation), on the validation split it was
trained with or on the one of ``--data``. A task that draws its predictions (segmentation) also
writes a PNG of a few images beside the JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import ArgumentParser, check_output_file, run
from .common import DEVICES, check_device
from ..atomic import atomic_write_text
from ..engine.finetune import evaluate_checkpoint
from ..tasks import TASKS


def task_evaluation_flags() -> dict[str, tuple[str, str]]:
    """Every registered task's own evaluation flags (e.g. pose's --person-boxes)."""
    return {flag: entry for task in TASKS.values() for flag, entry in task.evaluation_flags.items()}


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m fna_ext.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="model_final.pt written by python -m fna_ext.train")
    parser.add_argument("--data", help="dataset root to evaluate on (default: the data it was trained on)")
    parser.add_argument("--out", help="JSON file for the stats (default: evaluation.json beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE", dest="assignments",
                        help="change an evaluation setting, e.g. eval.flip=true or eval.scales=[0.75,1,1.25] "
                             "(segmentation; repeatable)")
    flags = task_evaluation_flags()
    for flag, (setting, text) in flags.items():
        parser.add_argument(flag, metavar="VALUE", help=f"{text} (sets {setting})")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    args = parser.parse_args(argv)
    for flag, (setting, _) in flags.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:  # as a JSON string, which the YAML of --set reads back unchanged
            args.assignments.append(f"{setting}={json.dumps(value)}")
    check_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    out = check_output_file(args.out or Path(args.checkpoint).with_name("evaluation.json"))
    started = time.perf_counter()
    result = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                 eval_settings=args.assignments, device=args.device)
    source = getattr(result.dataset, "ann_file", None) or getattr(result.dataset, "root", None) or args.data
    record = {"checkpoint": str(args.checkpoint), "task": result.task.name, "annotations": str(source),
              "settings": args.assignments, "metrics": result.metrics,
              "seconds": round(time.perf_counter() - started, 1)}
    picture = result.task.write_examples(result.model, result.dataset, out.with_suffix(".png"), device=args.device)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"evaluated {args.checkpoint} on {source}")
    print(result.task.format_metrics(result.metrics))
    print(f"wrote {out}" + (f" and {picture}" if picture else ""))
    return 0


if __name__ == "__main__":
    run(main)
