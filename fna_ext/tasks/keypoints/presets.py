"""Pose settings as data. FNA++'s pose settings are not published, so the COCO presets are the
detection search's shape with SimpleBaseline's training recipe (stated choices, README "Human
pose"): Adam at 1e-3 without weight decay (the config's WD reaches only SGD in SimpleBaseline's
code), x0.1 at epochs 90 and 120 of 140, batch 128 (32 on each of 4 GPUs), 256x192 crops, scale
+-35%, rotation +-45 degrees, flips, flip testing. The search trains the super network with that optimiser for 30 epochs (SSDLite's search length) with alpha
from epoch 15, one alpha step per weight step (RetinaNet's ratio), FNA's alpha optimiser without
its weight decay, tau 10 and a lambda scaled to the heatmap loss (POSE_LAMBDA below). The
``synthetic`` presets are the embedded default's, sized for minutes on a 2-core CPU.
"""

from __future__ import annotations

import copy

from ...config import Bool, Int, List, Number, Rule, Str
from ...data.coco import COCO_PATH_RULES
from ...engine.settings import TRAIN_DEFAULTS
from ...nas.settings import SEARCH_DEFAULTS
from .model import MODELS

MIN_INPUT = 32  # the backbone's stride-32 feature keeps a pixel

RULES: dict[str, Rule] = {
    **COCO_PATH_RULES,
    "data.input_size": List(Int(MIN_INPUT), 2),
    "data.scale": Number(0, 0.99),
    "data.rotation": Number(0, 180),
    "data.flip": Bool(),
    "model.num_classes": Int(1, nullable=True),
    "model.backbone_bn_eps": Number(0, open_low=True),
    "model.deconv_channels": Int(1),
    "eval.flip": Bool(),
    "eval.person_boxes": Str(nullable=True),
    "eval.min_box_score": Number(0),
}


def check_input_size(config: dict) -> None:
    height, width = config["data"]["input_size"]
    if height % 32 or width % 32:
        raise ValueError(f"data.input_size {[height, width]} must be multiples of 32, so the heatmaps are a quarter "
                         "of the input exactly (SimpleBaseline: 256x192 or 384x288)")


def _data(input_size: list[int]) -> dict:
    return {"root": None, "train_split": "train", "val_split": "val", "ann_file": None, "img_dir": None,
            "val_ann_file": None, "val_img_dir": None, "input_size": input_size, "scale": 0.35, "rotation": 45.0, "flip": True}


def _identity(model: str, deconv_channels: int) -> dict:
    if model not in MODELS:
        raise ValueError(f"unknown pose model {model!r}; choose one of {list(MODELS)}")
    return {"task": "keypoints", "model": {"name": model, "num_classes": None, "backbone_bn_eps": 1e-5,
                                           "deconv_channels": deconv_channels}}


def _adam(lr: float) -> dict:
    # SimpleBaseline's code passes its WD setting only to SGD: its Adam has no weight decay
    return {"name": "adam", "lr": lr, "weight_decay": 0.0}


# FNA's alpha optimiser but for its weight decay, and a lambda scaled to the heatmap loss, which
# is about a thousandth of a detector's; so is its gradient on alpha (1e-6 to 1e-5 per layer,
# benchmarks/alpha_gradients.py --task coco-keypoints). Against it, FNA's decay of 1e-3 pulls alpha
# back to uniform (lambda 1e-2 with the decay: 0 of 21 layers decided, the expected MAdds never
# moved), and detection's lambda lets the cost alone decide. At 2e-3 without the decay the
# embedded default's search decides 20 of 21 layers and buys 5x5 and 7x7 kernels in the last
# stages, where a joint needs the most context.
POSE_LAMBDA = 2e-3
_ALPHA = {"optimizer": {"name": "adam", "lr": 3e-4, "betas": [0.5, 0.999], "weight_decay": 0.0},
          "grad_clip": 35.0, "init_std": 1e-3}

COCO_SEARCH = {
    "data": _data([256, 192]),
    "search": {**SEARCH_DEFAULTS, "lambda": POSE_LAMBDA, "tau": 10.0, "alpha_start_epoch": 15,
               "weight_steps_per_alpha_step": 1, "alpha": copy.deepcopy(_ALPHA)},
    "train": {**TRAIN_DEFAULTS, "epochs": 30, "batch_size": 128, "optimizer": _adam(1e-3),
              "schedule": {"name": "step", "milestones": [20, 26], "gamma": 0.1, "warmup_iters": 0,
                           "warmup_ratio": 1.0}},
}
COCO_FINETUNE = {
    "data": _data([256, 192]),
    "train": {**TRAIN_DEFAULTS, "epochs": 140, "batch_size": 128, "eval_every": 10, "optimizer": _adam(1e-3),
              "schedule": {"name": "step", "milestones": [90, 120], "gamma": 0.1, "warmup_iters": 0,
                           "warmup_ratio": 1.0}},
}

# The embedded default: the synthetic stick figures cropped to 128x96 (heatmaps 32x24), a
# 128-channel head (SimpleBaseline's 256 costs 4x the MAdds of a MobileNetV2 backbone at this
# size), one data worker as for the other tasks.
SYNTHETIC_DECONV_CHANNELS = 128
_SYNTHETIC_TRAIN = {**TRAIN_DEFAULTS, "num_workers": 1}
SYNTHETIC_SEARCH = {
    "data": _data([128, 96]),
    "search": {**SEARCH_DEFAULTS, "lambda": POSE_LAMBDA, "tau": 10.0, "alpha_start_epoch": 1,
               "weight_steps_per_alpha_step": 1,
               "alpha": {**copy.deepcopy(_ALPHA), "optimizer": {**_ALPHA["optimizer"], "lr": 0.2,
                                                                "betas": [0.9, 0.999]}}},
    "train": {**_SYNTHETIC_TRAIN, "epochs": 4, "batch_size": 16, "grad_clip": 10.0, "optimizer": _adam(1e-3),
              "schedule": {"name": "cosine", "min_lr_ratio": 0.1, "warmup_iters": 20, "warmup_ratio": 0.1}},
}
# 30 epochs: AP still rose steeply after 12 (0.31 for the searched network, 0.36 for the seed's)
SYNTHETIC_FINETUNE = {
    "data": _data([128, 96]),
    "train": {**_SYNTHETIC_TRAIN, "epochs": 30, "batch_size": 16, "grad_clip": 10.0, "eval_every": 10,
              "optimizer": _adam(1e-3), "schedule": {"name": "cosine", "min_lr_ratio": 0.01, "warmup_iters": 50,
                                                     "warmup_ratio": 0.1}},
}
# Validation crops the ground-truth boxes unless eval.person_boxes names a COCO detection results
# file (SimpleBaseline's evaluation with a detector's people; boxes under eval.min_box_score dropped)
EVAL_DEFAULTS = {"batch_size": 32, "flip": True, "person_boxes": None, "min_box_score": 0.0}


def search_preset(model: str, synthetic: bool) -> dict:
    channels = SYNTHETIC_DECONV_CHANNELS if synthetic else 256
    return {**_identity(model, channels), **copy.deepcopy(SYNTHETIC_SEARCH if synthetic else COCO_SEARCH)}


def finetune_preset(model: str, synthetic: bool) -> dict:
    channels = SYNTHETIC_DECONV_CHANNELS if synthetic else 256
    return {**_identity(model, channels), "eval": dict(EVAL_DEFAULTS),
            **copy.deepcopy(SYNTHETIC_FINETUNE if synthetic else COCO_FINETUNE)}
