"""Training a fixed architecture on COCO-format detection data: datasets and transforms from the
config, the detector of ``fna_ext.tasks``, the shared :class:`~fna_ext.engine.Trainer`, and
pycocotools evaluation. ``python -m fna_ext.train`` is the command line over
:func:`train_detector`."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...arch import Arch
from ...atomic import atomic_torch_save, atomic_write_text
from ...engine.bn_recalibration import recalibrate_batch_norm
from ...config import dump
from . import coco_data
from ...data import transforms
from ...data.batching import collate_detection
from .inference import predict_dataset
from .model_file import detector_payload
from ...engine.trainer import Trainer, progress_enabled
from .coco_eval import evaluate_detections
from ...plots import plot_training_curves
from ...remap import load_seed_network, remap_network
from .. import build_model


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
    train_tf, _ = detection_transforms(config)
    train_json, train_dir = coco_data.resolve_coco_paths(root, data["train_split"], data.get("ann_file"),
                                                         data.get("img_dir"))
    train = coco_data.CocoDetection(train_json, train_dir, train_tf, skip_empty=True)
    val = build_val_dataset(config, root)
    check_same_categories(train.cat_ids, val.cat_ids, f"{train_json} and {val.ann_file}")
    return train, val


def build_val_dataset(config: dict, root: Path | None = None):
    """The evaluation split, with the evaluation transform."""
    data = config["data"]
    val_json, val_dir = coco_data.resolve_coco_paths(root, data["val_split"], data.get("val_ann_file"),
                                                     data.get("val_img_dir"))
    return coco_data.CocoDetection(val_json, val_dir, detection_transforms(config)[1])


def check_same_categories(expected: list[int], got: list[int], where: str) -> None:
    if list(expected) != list(got):
        raise ValueError(f"the category ids of {where} differ ({list(expected)} vs {list(got)}); "
                         "the model and the data need the same categories")


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
    phase_seconds: dict[str, float] = field(default_factory=dict)  # data, remap, ..., evaluate


INITS = ("remap", "random")


def train_detector(config: dict, arch: Arch, out_dir: str | Path, *, seed_weights: str | Path | None = None,
                   init: str = "remap", bn_recalibrate: int = 0, resume: bool = False,
                   device: str = "cpu") -> TrainResult:
    """FNA's parameter adaptation of ``config['detector']`` on ``arch``: builds the detector,
    initialises its backbone (``init="remap"``: the seed's parameters remapped into it;
    ``"random"``: left at random initialisation, the paper's Table 5 baseline), re-estimates the
    BN statistics on ``bn_recalibrate`` training batches if asked, fine-tunes and evaluates.
    Writes into ``out_dir``: ``config.yaml``, ``metrics.jsonl`` (training log), ``checkpoint.pt``
    (resumable), ``model_final.pt`` (weights with the arch embedded), ``metrics.json`` (the 12
    COCO stats) and ``training.png`` (loss and AP over the iterations)."""
    started = time.perf_counter()
    if init not in INITS:
        raise ValueError(f"--init must be one of {INITS}, got {init!r}")
    if init == "remap" and not seed_weights:
        raise ValueError("--init remap needs --seed-weights (the seed to remap); use --init random "
                         "to train from random initialisation")
    clock = _PhaseClock()
    out_dir = Path(out_dir)
    train_set, val_set = build_datasets(config, dataset_root(config))
    clock.lap("data")
    torch.manual_seed(int(config["train"].get("seed", 0)))  # the same config starts the same model
    model = build_model(config["detector"], arch, config["model"]["num_classes"] or train_set.num_classes,
                        backbone_bn_eps=config["model"]["backbone_bn_eps"])
    train_cfg = config["train"]
    collate = lambda b: collate_detection(b, 32)
    if not resume and init == "remap":
        # the seed's parameters remapped into this backbone (FNA's parameter remapping; a change
        # of layout only when the arch is the seed's own)
        remap_network(load_seed_network(seed_weights), model.backbone)
    model.to(device)  # before recalibration, which runs batches on the device
    clock.lap("remap" if init == "remap" else "build")
    if not resume and bn_recalibrate:
        recalibrate_batch_norm(model, _training_images(train_set, train_cfg, collate), bn_recalibrate, device)
        clock.lap("bn recalibration")
    atomic_write_text(out_dir / "config.yaml", dump(config))

    def evaluate(m):
        with clock.pause("evaluate"):
            return evaluate_detector(m, val_set, batch_size=config["eval"]["batch_size"], device=device)

    trainer = Trainer(model, detection_loss, train_set, collate, train_cfg, out_dir, device=device,
                      evaluate=evaluate, description=config["detector"],
                      extra_state={"arch": arch.to_json(), "detector": config["detector"]})
    if resume and not trainer.resume():
        raise FileNotFoundError(f"--resume: no checkpoint in {out_dir}; start without --resume")
    if not resume:
        trainer.metrics_path.unlink(missing_ok=True)
    history = trainer.fit()
    evals = [r["eval"] for r in history if "eval" in r]
    metrics = evals[-1] if evals else evaluate(model)
    clock.lap("fine-tune")
    weights = atomic_torch_save(detector_payload(model, config, train_set.class_names, train_set.cat_ids,
                                                 metrics=metrics, init=init),
                                out_dir / "model_final.pt")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    plot_training_curves(_read_log(trainer.metrics_path), out_dir / "training.png",
                         title=f"{config['detector']} parameter adaptation ({init} init)")
    clock.lap("write")
    return TrainResult(out_dir, metrics, weights, time.perf_counter() - started, history, clock.seconds)


class _PhaseClock:
    """Wall time per named phase: ``lap(name)`` books the time since the last lap, and
    ``pause(name)`` books a nested span to its own phase instead of the enclosing one."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self._paused = 0.0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._add(name, now - self._last - self._paused)
        self._last, self._paused = now, 0.0

    @contextlib.contextmanager
    def pause(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - began
            self._add(name, spent)
            self._paused += spent

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def _training_images(dataset, train_cfg: dict, collate):
    """Batches of training images (with the training augmentation), in a seeded order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(train_cfg["batch_size"]), shuffle=True,
                                         collate_fn=collate, num_workers=0,
                                         generator=torch.Generator().manual_seed(int(train_cfg.get("seed", 0))))
    return (images for images, _ in loader)


def _read_log(path: Path) -> list[dict]:
    """The whole run's records, including those of earlier, resumed parts."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
