"""Semantic segmentation as a :class:`~fna_ext.tasks.base.Task`: Cityscapes (or a folder of
images and label PNGs) with DeepLabv3 or DeepLabv3+ at output stride 16 or 8."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...arch import Arch
from ...nas.search_space import SearchSpace
from ..base import Task, TaskData, load_trained_weights
from . import presets
from . import transforms as T
from .data import cityscapes, segmentation_folder
from .evaluation import EvalSettings, evaluate_segmentation
from .labels import CITYSCAPES_CLASSES
from .model import VERSIONS, DeepLabConfig, build_deeplab, collate_segmentation

# A.1: the MobileNetV2 stages of expansion 6 are searched, at most {4, 4, 6, 6, 4, 1} layers deep
SEGMENTATION_SPACE = SearchSpace("segmentation", (4, 4, 6, 6, 4, 1))
OUTPUT_STRIDES = (16, 8)  # A.1 searches and fine-tunes at 16; Table 1 also counts DeepLabv3+ at 8
COUNT_SIZE = (1024, 2048)  # Table 1 counts at Cityscapes' full resolution
MODEL_FORMAT = "fna_ext.segmentation.v1"
_REQUIRED = ("task", "model", "arch", "num_classes", "class_names", "config", "state_dict")


def train_transform(data: dict) -> T.Compose:
    """The training recipe a config's data section names: an optional fixed resize (the search's
    512x1024), an optional random scale (fine-tuning's 0.75-2.0), the crop and the flip."""
    steps = [T.Resize(data["resize"])] if data.get("resize") else []
    steps += [T.RandomScale(data["scales"])] if data.get("scales") else []
    return T.Compose([*steps, T.RandomCrop(data["crop_size"]), T.RandomHorizontalFlip(), T.ToTensors()])


def dataset_root(config: dict) -> Path:
    """The configured root, or the embedded synthetic set (generated once into the cache)."""
    if config["data"].get("root"):
        return Path(config["data"]["root"]).expanduser()
    from ...data.synthetic import default_dataset

    return default_dataset("segmentation")


def load_split(config: dict, root: Path, split: str, transform) -> torch.utils.data.Dataset:
    build = cityscapes if config["data"]["layout"] == "cityscapes" else segmentation_folder
    dataset = build(root, split, transform)
    dataset.eval_settings = EvalSettings.from_config(config)  # how evaluate() predicts its images
    return dataset


class SegmentationTask(Task):
    name = "segmentation"
    aliases = ("cityscapes",)
    description = "Cityscapes semantic segmentation with DeepLabv3 or DeepLabv3+ (output stride 16 or 8)"
    models = VERSIONS
    output_strides = OUTPUT_STRIDES
    default_model = "deeplabv3"
    metric_names = ("mIoU", "pixel_accuracy", "mean_accuracy")
    primary_metric = "mIoU"
    data_help = "Cityscapes root (leftImg8bit/, gtFine/), or a folder of images/, labels/ and classes.txt"

    def presets(self, model: str, synthetic: bool) -> tuple[dict, dict]:
        return presets.search_preset(model, synthetic), presets.finetune_preset(model, synthetic)

    def config_rules(self, model: str) -> dict:
        return presets.RULES

    def build_model(self, model: str, arch: Arch, num_classes: int, *, backbone: nn.Module | None = None,
                    backbone_bn_eps: float = 1e-5, output_stride: int = OUTPUT_STRIDES[0]) -> nn.Module:
        config = DeepLabConfig(self.model_name(model), output_stride, backbone_bn_eps=backbone_bn_eps)
        return build_deeplab(arch, num_classes, config, backbone=backbone)

    def model_options(self, config: dict) -> dict:
        return {**super().model_options(config), "output_stride": self.output_stride(config)}

    def search_space(self, model: str) -> SearchSpace:
        return SEGMENTATION_SPACE

    def output_stride(self, config: dict) -> int:
        # model files written before the setting existed were all at 16
        return int(config["model"].get("output_stride", OUTPUT_STRIDES[0]))

    def count_size(self, model: str) -> tuple[int, int]:
        return COUNT_SIZE

    def input_size(self, config: dict) -> tuple[int, int]:
        return tuple(config["data"]["crop_size"])

    def default_num_classes(self, model: str) -> int:
        return len(CITYSCAPES_CLASSES)

    def data(self, config: dict) -> TaskData:
        root = dataset_root(config)
        train = load_split(config, root, config["data"]["train_split"], train_transform(config["data"]))
        val = load_split(config, root, config["data"]["val_split"], T.eval_transform())
        return TaskData(train, val, collate_segmentation, train.num_classes, list(train.class_names))

    def val_data(self, config: dict, root: str | Path | None = None):
        return load_split(config, Path(root) if root is not None else dataset_root(config),
                          config["data"]["val_split"], T.eval_transform())

    def evaluate(self, model: nn.Module, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        return evaluate_segmentation(model, dataset, settings=getattr(dataset, "eval_settings", EvalSettings()),
                                     device=device)

    def write_examples(self, model: nn.Module, dataset, path: Path, *, device="cpu") -> Path:
        from .pictures import write_predictions

        return write_predictions(model, dataset, path, settings=getattr(dataset, "eval_settings", EvalSettings()),
                                 device=device)

    def model_payload(self, model: nn.Module, config: dict, data: TaskData, **extra) -> dict:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        # the classifier's width, which model.num_classes may set apart from the data's classes
        return {"format": MODEL_FORMAT, "task": self.name, "model": config["model"]["name"],
                "arch": model.arch.to_json(), "num_classes": model.head.classifier.out_channels,
                "class_names": list(data.class_names), "config": config, "state_dict": state, **extra}

    def model_from_payload(self, payload: dict, source: str) -> nn.Module:
        missing = [key for key in _REQUIRED if key not in payload]
        if payload.get("format") != MODEL_FORMAT or missing:
            raise ValueError(f"{source} is not a trained segmentation model (format {MODEL_FORMAT!r}"
                             f"{', lacks ' + str(missing) if missing else ''}); pass the model_final.pt of fna_ext.train")
        model = self.build_model(payload["model"], Arch.parse(payload["arch"]), int(payload["num_classes"]),
                                 **self.model_options(payload["config"]))
        return load_trained_weights(model, payload["state_dict"], source, payload["model"])

    def export_module(self, model: nn.Module, payload: dict, input_size: tuple[int, int]) -> nn.Module:
        from .export import SegmentationLogits

        return SegmentationLogits(model, input_size)

    def export_input_size(self, payload: dict) -> tuple[int, int]:
        # the evaluation window: what the model sees at a time when it is evaluated
        return tuple(payload["config"]["data"]["eval_crop"])

    def check_same_classes(self, payload: dict, dataset, where: str) -> None:
        if list(payload["class_names"]) != list(dataset.class_names):
            raise ValueError(f"{where} has the classes {dataset.class_names}, not the {payload['class_names']} "
                             "the model was trained on")


SEGMENTATION = SegmentationTask()
