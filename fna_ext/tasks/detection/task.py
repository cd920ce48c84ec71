"""COCO object detection as a :class:`~fna_ext.tasks.base.Task`: SSDLite and RetinaNet on any
backbone, COCO-format data, pycocotools AP."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...arch import Arch
from ...data.batching import collate_detection
from ...nas.search_space import SearchSpace
from ..base import Task, TaskData
from . import presets
from ...data.coco_eval import STAT_NAMES
from .detector import BUILDERS, detector_options, takes_ssdlite
from .model_file import check_detector_payload, detector_from_payload, detector_payload
from .training import build_datasets, build_val_dataset, check_same_categories, dataset_root, evaluate_detector

# (H, W) of the paper's Params/MAdds tables
COUNT_SIZES = {"ssdlite": (320, 320), "retinanet": (800, 1088)}
COCO_CLASSES = 80
# FNA's detection search space (REFERENCE.md): every stage after the first grows to 4 layers, the
# last to 1. SSDLite taps the expansion of the first stride-32 stage's first layer (576 channels in
# MobileNetV2), so that layer's inner width must stay.
RETINANET_SPACE = SearchSpace("detection", (4, 4, 4, 4, 4, 1))
# SSDLite taps the expansion of the first stride-32 stage's first layer (stage 5 of MobileNetV2)
SSDLITE_SPACE = SearchSpace("ssdlite", (4, 4, 4, 4, 4, 1), keep_width_first_layers=(4,), keep_width_stride=32)


class DetectionTask(Task):
    name = "detection"
    aliases = ("coco",)
    description = "COCO object detection with SSDLite (320x320) or RetinaNet (short side 800)"
    models = ("ssdlite", "retinanet")
    default_model = "ssdlite"
    metric_names = STAT_NAMES
    primary_metric = "AP"
    data_help = ("COCO-format root (annotations/instances_{train,val}2017.json, {train,val}2017/); "
                 "default: the embedded synthetic dataset")

    def presets(self, model: str, synthetic: bool) -> tuple[dict, dict]:
        return presets.search_preset(model, synthetic), presets.finetune_preset(model, synthetic)

    def config_rules(self, model: str) -> dict:
        return presets.RULES

    def config_checks(self, model: str) -> tuple:
        return (presets.check_sizes,)

    def default_model_for(self, seed_arch: Arch) -> str:
        """SSDLite where the backbone has its expansion and head conv (MobileNetV2, MBConv
        networks), else RetinaNet, which reads only stage outputs (ResNets)."""
        return self.default_model if takes_ssdlite(seed_arch) else "retinanet"

    def build_model(self, model: str, arch: Arch, num_classes: int, *, backbone: nn.Module | None = None,
                    **options) -> nn.Module:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        return BUILDERS[self.model_name(model)](arch, num_classes, backbone=backbone, **options)

    def model_options(self, config: dict) -> dict:
        return detector_options(config["model"])

    def search_space(self, model: str) -> SearchSpace:
        return SSDLITE_SPACE if self.model_name(model) == "ssdlite" else RETINANET_SPACE

    def count_size(self, model: str) -> tuple[int, int]:
        return COUNT_SIZES[self.model_name(model)]

    def default_num_classes(self, model: str) -> int:
        return COCO_CLASSES

    def input_size(self, config: dict) -> tuple[int, int]:
        data = config["data"]
        if data.get("input_size"):
            return tuple(data["input_size"])
        return (int(data["short_side"]),) * 2

    def data(self, config: dict) -> TaskData:
        train, val = build_datasets(config, dataset_root(config))
        return TaskData(train, val, collate_detection, train.num_classes, list(train.class_names))

    def val_data(self, config: dict, root: str | Path | None = None):
        if root is not None:  # another dataset in the standard layout replaces the trained one's
            config = {**config, "data": {**config["data"], "root": str(root), "val_ann_file": None,
                                         "val_img_dir": None}}
        return build_val_dataset(config, dataset_root(config))

    def evaluate(self, model: nn.Module, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        return evaluate_detector(model, dataset, batch_size=batch_size, device=device)

    def model_payload(self, model: nn.Module, config: dict, data: TaskData, **extra) -> dict:
        return detector_payload(model, config, data.class_names, data.train.cat_ids, **extra)

    def model_from_payload(self, payload: dict, source: str) -> nn.Module:
        return detector_from_payload(check_detector_payload(payload, source), source)

    def check_same_classes(self, payload: dict, dataset, where: str) -> None:
        check_same_categories(payload["cat_ids"], dataset.cat_ids, where)

    def export_module(self, model: nn.Module, payload: dict, input_size: tuple[int, int]) -> nn.Module:
        from .export import DecodedDetector

        return DecodedDetector(model, input_size)


DETECTION = DetectionTask()
