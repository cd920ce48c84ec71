"""Human pose estimation as a :class:`~fna_ext.tasks.base.Task`: COCO keypoints, top-down, with
SimpleBaseline on any backbone and pycocotools' OKS AP. The model's "classes" are its joints."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...arch import Arch
from ...nas.search_space import SearchSpace
from ..base import Task, TaskData, load_trained_weights
from . import presets
from .data import CocoKeypoints, collate_keypoints, standard_paths
from ...data.coco_eval import KEYPOINT_STAT_NAMES
from .evaluation import evaluate_pose
from .model import MODELS, SimpleBaselineConfig, build_simplebaseline
from .skeleton import COCO_KEYPOINT_NAMES, Skeleton
from .transforms import Augmentation

# FNA's detection space (every stage after the first grows to 4 layers, the last to 1): the head
# reads only the backbone's last feature, so no layer must keep its inner width
POSE_SPACE = SearchSpace("keypoints", (4, 4, 4, 4, 4, 1))
COUNT_SIZE = (256, 192)
MODEL_FORMAT = "fna_ext.keypoints.v1"
_REQUIRED = ("task", "model", "arch", "num_classes", "skeleton", "config", "state_dict")


def dataset_root(config: dict) -> Path | None:
    """The configured root, the embedded synthetic set when no root or file is named, or None
    when explicit files are (then no root is needed)."""
    data = config["data"]
    if data.get("root"):
        return Path(data["root"]).expanduser()
    if data.get("ann_file") or data.get("val_ann_file"):
        return None
    from ...data.synthetic import default_dataset

    return default_dataset("keypoints")


def split_paths(config: dict, root: Path | None, split: str, ann_key: str, img_key: str) -> tuple[Path, Path]:
    data = config["data"]
    if data.get(ann_key) and data.get(img_key):
        base = root or Path(".")
        return base / Path(data[ann_key]).expanduser(), base / Path(data[img_key]).expanduser()
    if root is None:
        raise ValueError(f"data.{ann_key} and data.{img_key} go together: name both, or data.root")
    return standard_paths(root, data[split])


def load_split(config: dict, root: Path | None, *, train: bool) -> CocoKeypoints:
    data = config["data"]
    ann, images = split_paths(config, root, "train_split" if train else "val_split",
                              "ann_file" if train else "val_ann_file", "img_dir" if train else "val_img_dir")
    augmentation = (Augmentation(scale=float(data["scale"]), rotation=float(data["rotation"]),
                                 flip_p=0.5 if data["flip"] else 0.0) if train else None)
    evaluation = config.get("eval", {})  # a search's config has none: it validates on ground-truth boxes
    dataset = CocoKeypoints(ann, images, tuple(data["input_size"]), augmentation=augmentation,
                            person_boxes=None if train else evaluation.get("person_boxes"),
                            min_box_score=float(evaluation.get("min_box_score", 0.0)))
    dataset.eval_flip = bool(evaluation.get("flip", True))
    return dataset


class KeypointsTask(Task):
    name = "keypoints"
    aliases = ("coco-keypoints", "pose")
    description = "COCO human pose estimation, top-down, with SimpleBaseline (256x192)"
    models = MODELS
    default_model = "simplebaseline"
    metric_names = KEYPOINT_STAT_NAMES
    primary_metric = "AP"
    # what the evaluate command offers for this task's settings
    evaluation_flags = {"--person-boxes": ("eval.person_boxes", "pose: a COCO detection results json whose person "
                                           "boxes are cropped instead of the ground truth's")}
    data_help = ("COCO keypoints root (annotations/person_keypoints_{train,val}2017.json, {train,val}2017/); "
                 "default: the embedded synthetic stick figures")

    def presets(self, model: str, synthetic: bool) -> tuple[dict, dict]:
        return presets.search_preset(model, synthetic), presets.finetune_preset(model, synthetic)

    def config_rules(self, model: str) -> dict:
        return presets.RULES

    def config_checks(self, model: str) -> tuple:
        return (presets.check_input_size,)

    def build_model(self, model: str, arch: Arch, num_classes: int, *, backbone: nn.Module | None = None,
                    backbone_bn_eps: float = 1e-5, deconv_channels: int = 256) -> nn.Module:
        self.model_name(model)
        config = SimpleBaselineConfig(deconv_channels=deconv_channels, backbone_bn_eps=backbone_bn_eps)
        return build_simplebaseline(arch, num_classes, config, backbone=backbone)

    def model_options(self, config: dict) -> dict:
        return {**super().model_options(config),
                "deconv_channels": int(config["model"].get("deconv_channels", 256))}

    def search_space(self, model: str) -> SearchSpace:
        return POSE_SPACE

    def count_size(self, model: str) -> tuple[int, int]:
        return COUNT_SIZE

    def input_size(self, config: dict) -> tuple[int, int]:
        return tuple(config["data"]["input_size"])

    def default_num_classes(self, model: str) -> int:
        return len(COCO_KEYPOINT_NAMES)

    def data(self, config: dict) -> TaskData:
        root = dataset_root(config)
        train, val = load_split(config, root, train=True), load_split(config, root, train=False)
        if train.skeleton.names != val.skeleton.names:
            raise ValueError(f"the training and validation files name different joints ({list(train.skeleton.names)} "
                             f"and {list(val.skeleton.names)})")
        return TaskData(train, val, collate_keypoints, train.num_joints, list(train.skeleton.names))

    def val_data(self, config: dict, root: str | Path | None = None):
        if root is not None:  # another dataset in the standard layout replaces the trained one's
            config = {**config, "data": {**config["data"], "root": str(root), "val_ann_file": None,
                                         "val_img_dir": None}}
        return load_split(config, dataset_root(config), train=False)

    def evaluate(self, model: nn.Module, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        return evaluate_pose(model, dataset, batch_size=batch_size, device=device,
                             flip=getattr(dataset, "eval_flip", True))

    def write_examples(self, model: nn.Module, dataset, path: Path, *, device="cpu") -> Path:
        from .pictures import write_predictions

        return write_predictions(model, dataset, path, device=device)

    def model_payload(self, model: nn.Module, config: dict, data: TaskData, **extra) -> dict:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        return {"format": MODEL_FORMAT, "task": self.name, "model": config["model"]["name"],
                "arch": model.arch.to_json(), "num_classes": model.num_joints,
                "skeleton": data.train.skeleton.to_json(), "config": config, "state_dict": state, **extra}

    def model_from_payload(self, payload: dict, source: str) -> nn.Module:
        missing = [key for key in _REQUIRED if key not in payload]
        if payload.get("format") != MODEL_FORMAT or missing:
            raise ValueError(f"{source} is not a trained pose model (format {MODEL_FORMAT!r}"
                             f"{', lacks ' + str(missing) if missing else ''}); pass the model_final.pt of fna_ext.train")
        model = self.build_model(payload["model"], Arch.parse(payload["arch"]), int(payload["num_classes"]),
                                 **self.model_options(payload["config"]))
        return load_trained_weights(model, payload["state_dict"], source, payload["model"])

    def check_same_classes(self, payload: dict, dataset, where: str) -> None:
        trained = Skeleton.from_json(payload["skeleton"]).names
        if tuple(trained) != tuple(dataset.skeleton.names):
            raise ValueError(f"{where} has the joints {list(dataset.skeleton.names)}, not the {list(trained)} "
                             "the model was trained on")

    def export_module(self, model: nn.Module, payload: dict, input_size: tuple[int, int]) -> nn.Module:
        from .export import PoseHeatmaps

        return PoseHeatmaps(model, input_size)


KEYPOINTS = KeypointsTask()
