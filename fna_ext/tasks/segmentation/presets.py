"""Segmentation settings as data. The Cityscapes presets are FNA's appendix A.1 and the published
fine-tuning config (``../shared/REFERENCE.md``); the ``synthetic`` presets are the embedded
default's, sized for minutes on a 2-core CPU. Learning rates are for the stated total batch.

Choices the paper leaves open, stated here: the alpha optimiser's betas follow FNA's detection
code (0.5, 0.999); one alpha step per weight step; the search's cost is counted at the training
crop. Iteration counts become epochs of Cityscapes' 2975 training images: 100K iterations of 16
are 538 epochs of 185 iterations.
"""

from __future__ import annotations

import copy

from ...config import Bool, Choice, Int, List, Number, Rule, Str
from ...engine.settings import TRAIN_DEFAULTS
from ...nas.settings import SEARCH_DEFAULTS
from .model import VERSIONS

MIN_CROP = 32  # the backbone's stride-32 stage still has a pixel
LAYOUTS = ("cityscapes", "folder")
CITYSCAPES_TRAIN_IMAGES = 2975

RULES: dict[str, Rule] = {
    "data.root": Str(nullable=True),
    "data.layout": Choice(*LAYOUTS),
    "data.train_split": Str(),
    "data.val_split": Str(),
    "data.resize": List(Int(MIN_CROP), 2, nullable=True),
    "data.crop_size": List(Int(MIN_CROP), 2),
    "data.scales": List(Number(0, open_low=True), nullable=True),
    "data.eval_crop": List(Int(MIN_CROP), 2),
    "model.num_classes": Int(1, nullable=True),
    "model.backbone_bn_eps": Number(0, open_low=True),
    "model.output_stride": Choice(16, 8),
    "eval.flip": Bool(),
    "eval.scales": List(Number(0, open_low=True)),
}

# Evaluation as the published code ran it: one scale, no flip (eval.flip and eval.scales add
# mirrored and rescaled copies, e.g. scales [0.75, 1.0, 1.25, 1.5, 1.75])
EVAL_DEFAULTS = {"batch_size": 1, "flip": False, "scales": [1.0]}



def _data(**transform) -> dict:
    return {"root": None, "layout": "cityscapes", "train_split": "train", "val_split": "val", "resize": None,
            "scales": None, "eval_crop": [769, 769], **transform}


def _identity(model: str) -> dict:
    if model not in VERSIONS:
        raise ValueError(f"unknown segmentation model {model!r}; choose one of {list(VERSIONS)}")
    return {"task": "segmentation",
            "model": {"name": model, "num_classes": None, "backbone_bn_eps": 1e-5, "output_stride": 16}}


# A.1: 80 epochs, alpha from epoch 30, 20% of the training images for alpha, lambda 9e-3, tau 45;
# weights SGD momentum 0.9, wd 5e-4, 5 warm-up epochs from 1e-4 to 0.02, cosine to 1e-3; alpha
# Adam lr 1e-3, wd 4e-5; batch 16; images resized to 512x1024, 321x321 crops; output stride 16.
def _search(alpha_start_epoch: int, alpha_lr: float) -> dict:
    return {**SEARCH_DEFAULTS, "split_fraction": 0.2, "lambda": 9e-3, "tau": 45.0,
            "alpha_start_epoch": alpha_start_epoch, "weight_steps_per_alpha_step": 1,
            "alpha": {"optimizer": {"name": "adam", "lr": alpha_lr, "betas": [0.5, 0.999], "weight_decay": 4e-5},
                      "grad_clip": None, "init_std": 1e-3}}


def _sgd(lr: float) -> dict:
    return {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}


_WARMUP_EPOCHS = 5 * (CITYSCAPES_TRAIN_IMAGES * 8 // 10 // 16)
CITYSCAPES_SEARCH = {
    "data": _data(resize=[512, 1024], crop_size=[321, 321]),
    "search": _search(alpha_start_epoch=30, alpha_lr=1e-3),
    "train": {**TRAIN_DEFAULTS, "epochs": 80, "batch_size": 16, "optimizer": _sgd(0.02),
              "schedule": {"name": "cosine", "min_lr_ratio": 0.05, "warmup_iters": _WARMUP_EPOCHS,
                           "warmup_ratio": 0.005}},
}

# Fine-tuning (A.1 and the published config): 100K iterations of 16, SGD lr 0.01, momentum 0.9,
# wd 5e-4, 5000 warm-up iterations from 1e-4, poly 0.9; random scale 0.75-2.0, 769x769 crops, flip.
CITYSCAPES_FINETUNE = {
    "data": _data(scales=[0.75, 1.0, 1.25, 1.5, 1.75, 2.0], crop_size=[769, 769]),
    "train": {**TRAIN_DEFAULTS, "epochs": 538, "batch_size": 16, "eval_every": 50, "optimizer": _sgd(0.01),
              "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 5000, "warmup_ratio": 0.01}},
    # the BN statistics re-estimated on 2000 training batches before fine-tuning, as published
    "adaptation": {"bn_recalibrate": 2000},
}

# The embedded default: the synthetic shapes at 160x160 in the Cityscapes layout, 128x128 crops.
_SYNTHETIC_TRAIN = {**TRAIN_DEFAULTS, "num_workers": 1}
SYNTHETIC_SEARCH = {  # alpha's lr raised so that so few steps move it (as for detection)
    "data": _data(crop_size=[128, 128], eval_crop=[160, 160]),
    "search": _search(alpha_start_epoch=2, alpha_lr=3e-2),
    "train": {**_SYNTHETIC_TRAIN, "epochs": 5, "batch_size": 16, "optimizer": _sgd(0.02),
              "schedule": {"name": "cosine", "min_lr_ratio": 0.05, "warmup_iters": 20, "warmup_ratio": 0.05}},
}
# Batches of 8 for twice the steps at the same cost per image: 40 epochs at lr 0.03 reached mIoU
# 0.495 on the synthetic val split against 0.465 with batches of 16 (20 epochs of 16 at lr 0.01:
# 0.297); 50 epochs for the rest of the way (benchmarks/RESULTS.md)
SYNTHETIC_FINETUNE = {
    "data": _data(scales=[0.75, 1.0, 1.25, 1.5], crop_size=[128, 128], eval_crop=[160, 160]),
    "train": {**_SYNTHETIC_TRAIN, "epochs": 50, "batch_size": 8, "eval_every": 25, "optimizer": _sgd(0.03),
              "schedule": {"name": "poly", "power": 0.9, "warmup_iters": 50, "warmup_ratio": 0.01}},
}


def search_preset(model: str, synthetic: bool) -> dict:
    return {**_identity(model), **copy.deepcopy(SYNTHETIC_SEARCH if synthetic else CITYSCAPES_SEARCH)}


def finetune_preset(model: str, synthetic: bool) -> dict:
    return {**_identity(model), "eval": dict(EVAL_DEFAULTS),
            **copy.deepcopy(SYNTHETIC_FINETUNE if synthetic else CITYSCAPES_FINETUNE)}
