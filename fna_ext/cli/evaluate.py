"""``python -m fna_ext.evaluate``: evaluates a trained detector (``model_final.pt``) with
pycocotools, on the validation split it was trained with or on the one of ``--data``."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from .. import cli
from ..atomic import atomic_write_text
from ..tasks.detection.model_file import load_detector
from .train import check_device, format_metrics
from ..tasks.detection.training import build_val_dataset, check_same_categories, dataset_root, evaluate_detector


def evaluate_checkpoint(checkpoint: str | Path, data_root: str | Path | None = None, *,
                        batch_size: int | None = None, device: str = "cpu") -> tuple[dict, Path]:
    """(the 12 COCO stats, the annotation file they were measured on)."""
    model, payload = load_detector(checkpoint)
    config = copy.deepcopy(payload["config"])
    if data_root is not None:  # another dataset in the standard layout replaces the trained one's
        config["data"].update(root=str(data_root), val_ann_file=None, val_img_dir=None)
    root = dataset_root(config)
    dataset = build_val_dataset(config, root)
    check_same_categories(payload["cat_ids"], dataset.cat_ids, f"{checkpoint} and {dataset.ann_file}")
    metrics = evaluate_detector(model.to(device), dataset, device=device,
                                batch_size=batch_size or int(config["eval"]["batch_size"]))
    return metrics, dataset.ann_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fna_ext.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="model_final.pt written by python -m fna_ext.train")
    parser.add_argument("--data", help="COCO-format root to evaluate on (default: the data it was trained on)")
    parser.add_argument("--out", help="JSON file for the stats (default: evaluation.json beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    check_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    started = time.perf_counter()
    metrics, ann_file = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                            device=args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("evaluation.json")
    record = {"checkpoint": str(args.checkpoint), "annotations": str(ann_file), "metrics": metrics,
              "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"evaluated {args.checkpoint} on {ann_file}")
    print(format_metrics(metrics))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
