"""Training a fixed architecture on COCO-format detection data: datasets and transforms from the
config, the detector of ``fna_ext.tasks``, the shared :class:`~fna_ext.engine.Trainer`, and
pycocotools evaluation. ``python -m fna_ext.train`` is the command line over
:func:`train_detector`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arch import Arch
from .atomic import atomic_torch_save, atomic_write_text
from .config import dump
from .data import coco as coco_data
from .data import transforms
from .data.batching import collate_detection
from .detection.inference import predict_dataset
from .engine import Trainer, progress_enabled
from .eval.coco import evaluate_detections
from .remap import load_seed_network, remap_network
from .tasks import build_model

WEIGHTS_FORMAT = "fna_ext.detector"


def dataset_root(config: dict) -> Path | None:
    """The data root of the config, or the embedded synthetic default when it names none (and no
    explicit annotation file is given)."""
    data = config["data"]
    if data.get("root") is None and data.get("ann_file") is None:
        from .data.synthetic import default_dataset

        return default_dataset("detection")
    return Path(data["root"]) if data.get("root") is not None else None


def detection_transforms(config: dict):
    """(train, eval) transforms of the config's detector."""
    data = config["data"]
    if config["detector"] == "ssdlite":
        size = tuple(data["input_size"])
        return (transforms.ssd_train_transform(size, float(data.get("expand_max_ratio", 4.0))),
                transforms.ssd_eval_transform(size))
    short, longest = int(data["short_side"]), int(data["max_size"])
    return (transforms.retinanet_train_transform(short, longest),
            transforms.retinanet_eval_transform(short, longest))


def build_datasets(config: dict, root: Path | None = None):
    """(train, val) datasets; the training one drops images without a usable box."""
    data = config["data"]
    train_tf, eval_tf = detection_transforms(config)
    train_json, train_dir = coco_data.resolve_coco_paths(root, data["train_split"], data.get("ann_file"),
                                                         data.get("img_dir"))
    val_json, val_dir = coco_data.resolve_coco_paths(root, data["val_split"], data.get("val_ann_file"),
                                                     data.get("val_img_dir"))
    train = coco_data.CocoDetection(train_json, train_dir, train_tf, skip_empty=True)
    val = coco_data.CocoDetection(val_json, val_dir, eval_tf)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f"the category ids of {train_json} and {val_json} differ "
                         f"({train.cat_ids} vs {val.cat_ids}); both splits need the same categories")
    return train, val


def detection_loss(model, batch) -> dict[str, torch.Tensor]:
    images, targets = batch
    return model.loss(model(images), targets)


def evaluate_detector(model, dataset, *, batch_size: int = 16, device="cpu") -> dict[str, float]:
    """The 12 COCO stats of ``model`` on ``dataset``."""
    detections = predict_dataset(model, dataset, batch_size=batch_size, device=device,
                                 progress=progress_enabled())
    return evaluate_detections(dataset, detections)


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, float]
    weights: Path
    seconds: float
    history: list[dict] = field(default_factory=list)


def detector_payload(model, config: dict, class_names: list[str], cat_ids: list[int]) -> dict:
    """What a trained detector's weight file holds: enough to rebuild and evaluate it."""
    return {"format": WEIGHTS_FORMAT, "task": config["task"], "detector": config["detector"],
            "arch": model.arch.to_json(), "num_classes": len(class_names), "class_names": class_names,
            "cat_ids": cat_ids, "config": config, "state_dict": model.state_dict()}


def train_detector(config: dict, arch: Arch, out_dir: str | Path, *, seed_weights: str | Path | None = None,
                   resume: bool = False, device: str = "cpu") -> TrainResult:
    """Trains ``config['detector']`` on ``arch`` and evaluates it; writes into ``out_dir``:
    ``config.yaml``, ``metrics.jsonl`` (training log), ``checkpoint.pt`` (resumable),
    ``model_final.pt`` (weights with the arch embedded) and ``metrics.json`` (COCO stats)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_set, val_set = build_datasets(config, dataset_root(config))
    torch.manual_seed(int(config["train"].get("seed", 0)))  # the same config starts the same model
    model = build_model(config["detector"], arch, config["model"]["num_classes"] or train_set.num_classes,
                        backbone_bn_eps=config["model"]["backbone_bn_eps"])
    if seed_weights and not resume:
        # the seed's parameters remapped into this backbone (FNA's parameter remapping; a no-op
        # change of layout when the arch is the seed's own)
        remap_network(load_seed_network(seed_weights), model.backbone)
    model.to(device)
    atomic_write_text(out_dir / "config.yaml", dump(config))
    train_cfg = config["train"]
    evaluate = lambda m: evaluate_detector(m, val_set, batch_size=config["eval"]["batch_size"], device=device)
    trainer = Trainer(model, detection_loss, train_set,
                      lambda b: collate_detection(b, 32), train_cfg, out_dir, device=device,
                      evaluate=evaluate, description=config["detector"],
                      extra_state={"arch": arch.to_json(), "detector": config["detector"]})
    if resume and not trainer.resume():
        raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}; start without --resume")
    if not resume:
        trainer.metrics_path.unlink(missing_ok=True)
    history = trainer.fit()
    evals = [r["eval"] for r in history if "eval" in r]
    metrics = evals[-1] if evals else evaluate(model)
    weights = atomic_torch_save(detector_payload(model, config, train_set.class_names, train_set.cat_ids),
                                out_dir / "model_final.pt")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return TrainResult(out_dir, metrics, weights, time.perf_counter() - started, history)
