"""The detection task's data and evaluation for training: datasets and transforms from the
config, the detector's loss, and pycocotools evaluation of a whole dataset."""

from __future__ import annotations

from pathlib import Path


from ...data import transforms
from ...engine.trainer import progress_enabled
from . import coco_data
from ...data.coco_eval import evaluate_detections
from .inference import predict_dataset


def dataset_root(config: dict) -> Path | None:
    """The data root of the config, or the embedded synthetic default when it names none (and no
    explicit annotation file is given)."""
    data = config["data"]
    if data.get("root") is None and data.get("ann_file") is None:
        from ...data.synthetic import default_dataset

        return default_dataset("detection")
    return Path(data["root"]) if data.get("root") is not None else None


def detection_transforms(config: dict):
    """(train, eval) transforms of the config's detector."""
    data = config["data"]
    if config["model"]["name"] == "ssdlite":
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
    val = coco_data.CocoDetection(val_json, val_dir, detection_transforms(config)[1])
    if not any(record.num_usable for record in val.records):
        # pycocotools would report -1 for every stat: a run would train blind
        raise ValueError(f"the validation annotations {val_json} hold no usable box, so every COCO metric "
                         "would be -1; give a validation split with annotations (data.val_split, "
                         "data.val_ann_file)")
    return val


def check_same_categories(expected: list[int], got: list[int], where: str) -> None:
    if list(expected) != list(got):
        raise ValueError(f"the category ids of {where} differ ({list(expected)} vs {list(got)}); "
                         "the model and the data need the same categories")


def evaluate_detector(model, dataset, *, batch_size: int = 16, device="cpu") -> dict[str, float]:
    """The 12 COCO stats of ``model`` on ``dataset``."""
    detections = predict_dataset(model, dataset, batch_size=batch_size, device=device,
                                 progress=progress_enabled())
    return evaluate_detections(dataset, detections)
