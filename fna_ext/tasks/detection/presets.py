"""Settings as data. The COCO presets are the published ones (FNA's appendix A.2 and
REFERENCE.md); the ``synthetic`` presets are the embedded default's, sized so the whole job runs
in minutes on a 2-core CPU. Learning rates are for the stated total batch size."""

from __future__ import annotations

import copy

from ...config import Int, List, Number, Rule
from ...data.coco import COCO_PATH_RULES
from ...engine.settings import TRAIN_DEFAULTS
from ...nas.settings import SEARCH_DEFAULTS

# The smallest image side the detectors take: SSDLite's last feature map is 1x1 at 64 pixels.
MIN_IMAGE_SIZE = 64

RULES: dict[str, Rule] = {
    **COCO_PATH_RULES,
    "data.input_size": List(Int(MIN_IMAGE_SIZE), 2),
    "data.expand_max_ratio": Number(1),
    "data.short_side": Int(MIN_IMAGE_SIZE),
    "data.max_size": Int(MIN_IMAGE_SIZE),
    "model.num_classes": Int(1, nullable=True),
    "model.backbone_bn_eps": Number(0, open_low=True),
    "model.fpn_channels": Int(8),
}


def check_sizes(config: dict) -> None:
    data = config["data"]
    if "short_side" in data and data["max_size"] < data["short_side"]:
        raise ValueError(f"data.max_size ({data['max_size']}) must be at least data.short_side "
                         f"({data['short_side']})")


def _data(**size) -> dict:
    """``input_size=[H, W]`` (SSDLite resizes to it) or ``short_side``/``max_size`` (RetinaNet
    keeps the aspect ratio)."""
    return {"root": None, "train_split": "train", "val_split": "val", "ann_file": None, "img_dir": None,
            "val_ann_file": None, "val_img_dir": None, **size}


# Parameter adaptation (fine-tuning) on COCO, as published.
COCO_FINETUNE = {
    # SSDLite: 60 epochs, lr 0.2 at batch 512, x0.1 at 36, 50 and 56 (A.2); the rest follows
    # MMDetection's SSD recipe (SGD, momentum 0.9, 500 warm-up iterations from a third of the lr).
    # Weight decay 4e-5 is the mobile backbones' value rather than SSD-VGG's 5e-4.
    "ssdlite": {
        "data": _data(input_size=[320, 320], expand_max_ratio=4.0),
        "train": {**TRAIN_DEFAULTS, "epochs": 60, "batch_size": 512,
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 4e-5},
                  "schedule": {"name": "step", "milestones": [36, 50, 56], "gamma": 0.1,
                               "warmup_iters": 500, "warmup_ratio": 1 / 3}},
    },
    # RetinaNet: 12 epochs, batch 32, SGD lr 0.05, momentum 0.9, wd 5e-5, 500 warm-up iterations
    # from 0, x0.1 at 8 and 11 (A.2); gradient clipping 35 as in MMDetection.
    "retinanet": {
        "data": _data(short_side=800, max_size=1333),
        "train": {**TRAIN_DEFAULTS, "epochs": 12, "batch_size": 32, "grad_clip": 35.0,
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-5},
                  "schedule": {"name": "step", "milestones": [8, 11], "gamma": 0.1,
                               "warmup_iters": 500, "warmup_ratio": 0.0}},
    },
}

# The embedded default's RetinaNet is 64 wide (FPN and head) rather than 256: at 160 pixels the
# 256-wide head costs three times a ResNet-18 backbone (4.9 of 6.6 GMAdds), and a sixteenth of
# that still serves the synthetic set's five classes. At 64 a fine-tuning step of the searched
# ResNet-18 takes 0.36 s against 0.55 s at 128, so the same minutes buy more epochs
# (benchmarks/RESULTS.md).
SYNTHETIC_FPN_CHANNELS = 64

# The embedded default: the synthetic shapes at 160x160 (SSDLite) on a small CPU. One data
# worker: on two cores, more workers take time from the model's own threads.
_SYNTHETIC_TRAIN = {**TRAIN_DEFAULTS, "num_workers": 1}
SYNTHETIC_FINETUNE = {
    "ssdlite": {
        # objects of the 160-px images are already small: SSD's zoom-out by up to 4x would
        # leave many of them a few pixels wide
        "data": _data(input_size=[160, 160], expand_max_ratio=2.0),
        # 30 epochs of the 800 training images: about 13 minutes on 2 CPU cores
        "train": {**_SYNTHETIC_TRAIN, "epochs": 30, "batch_size": 16, "grad_clip": 10.0, "eval_every": 6,
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 4e-5},
                  "schedule": {"name": "cosine", "min_lr_ratio": 0.01, "warmup_iters": 100,
                               "warmup_ratio": 0.1}},
    },
    # 17 epochs: about 14 minutes for a searched ResNet-18 at the seed's cost. AdamW: in this
    # short budget the focal loss's classifier barely starts with SGD (after 4 epochs of a
    # searched ResNet-18 RetinaNet, AP50 0.000 at lr 0.02 against 0.093 with AdamW at 1e-3; lr
    # 0.04 diverged)
    "retinanet": {
        "data": _data(short_side=160, max_size=256),
        "train": {**_SYNTHETIC_TRAIN, "epochs": 17, "batch_size": 8, "grad_clip": 35.0, "eval_every": 8,
                  "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "cosine", "min_lr_ratio": 0.01, "warmup_iters": 100,
                               "warmup_ratio": 0.1}},
    },
}


def finetune_preset(detector: str, synthetic: bool) -> dict:
    """The fixed-architecture training config of ``detector``: the published COCO settings, or
    the embedded default's when training on the synthetic data."""
    table = SYNTHETIC_FINETUNE if synthetic else COCO_FINETUNE
    return {**_identity(detector, table), "eval": {"batch_size": 16}, **copy.deepcopy(table[detector])}


# Architecture adaptation (the search), as published (REFERENCE.md, A.2). Alpha: Adam lr 3e-4,
# betas (0.5, 0.999), weight decay 1e-3, gradient clipping 35, constant lr, init 1e-3 * randn.
_ALPHA = {"optimizer": {"name": "adam", "lr": 3e-4, "betas": [0.5, 0.999], "weight_decay": 1e-3},
          "grad_clip": 35.0, "init_std": 1e-3}
COCO_SEARCH = {
    # SSDLite: 30 epochs, alpha from epoch 15, 1 alpha step per 5 weight steps, lambda 0.15,
    # tau 10; weights RMSprop lr 0.05, eps 1.0, momentum 0.9, wd 4e-5, 500 warm-up iterations,
    # x0.1 at 16 and 22 (A.2).
    "ssdlite": {
        "data": _data(input_size=[320, 320], expand_max_ratio=4.0),
        "search": {**SEARCH_DEFAULTS, "lambda": 0.15, "tau": 10.0, "alpha_start_epoch": 15,
                   "weight_steps_per_alpha_step": 5, "alpha": copy.deepcopy(_ALPHA)},
        "train": {**TRAIN_DEFAULTS, "epochs": 30, "batch_size": 64,
                  "optimizer": {"name": "rmsprop", "lr": 0.05, "momentum": 0.9, "eps": 1.0, "weight_decay": 4e-5},
                  "schedule": {"name": "step", "milestones": [16, 22], "gamma": 0.1, "warmup_iters": 500,
                               "warmup_ratio": 0.0}},
    },
    # RetinaNet: 14 epochs, alpha from epoch 8, 1:1, lambda 0.02, tau 10; weights SGD lr 0.02,
    # momentum 0.9, wd 1e-4, 500 warm-up iterations, x0.1 at 8 and 11; no flipping (A.2).
    "retinanet": {
        "data": _data(short_side=800, max_size=1333),
        "search": {**SEARCH_DEFAULTS, "lambda": 0.02, "tau": 10.0, "alpha_start_epoch": 8,
                   "weight_steps_per_alpha_step": 1, "alpha": copy.deepcopy(_ALPHA)},
        "train": {**TRAIN_DEFAULTS, "epochs": 14, "batch_size": 8, "grad_clip": 35.0,
                  "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4},
                  "schedule": {"name": "step", "milestones": [8, 11], "gamma": 0.1, "warmup_iters": 500,
                               "warmup_ratio": 0.0}},
    },
}

# The embedded default's search: a few minutes on a 2-core CPU, and a search that converges
# (issue 23; README, "Embedded default"). The published schedule's alpha (lr 3e-4, Adam betas
# (0.5, 0.999), one step per 5 weight steps) barely moves in 100 steps, and the published lambda
# of 0.15 leaves the cost term 4-200x under the task term's gradient on this small task
# (benchmarks/alpha_gradients.py), so a short search derived alpha's noise: 0 of 21 layers
# decided, and two run seeds agreed on 6. Here alpha steps once per weight step from epoch 1
# (125 steps) at lr 0.2 with betas (0.9, 0.999), whose momentum averages the task gradient's
# noise over about 10 batches, and lambda 1.5 makes the cost count where the task does not
# care: 16 and 15 of 21 layers decided, 11 agreed, the backbone at about half the seed's MAdds.
SYNTHETIC_SEARCH = {
    "ssdlite": {
        "data": _data(input_size=[160, 160], expand_max_ratio=2.0),
        "search": {**SEARCH_DEFAULTS, "lambda": 1.5, "tau": 10.0, "alpha_start_epoch": 1,
                   "weight_steps_per_alpha_step": 1,
                   "alpha": {**copy.deepcopy(_ALPHA),
                             "optimizer": {**_ALPHA["optimizer"], "lr": 0.2, "betas": [0.9, 0.999]}}},
        "train": {**_SYNTHETIC_TRAIN, "epochs": 6, "batch_size": 16, "grad_clip": 10.0,
                  "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 4e-5},
                  "schedule": {"name": "cosine", "min_lr_ratio": 0.1, "warmup_iters": 20, "warmup_ratio": 0.1}},
    },
    # 4 epochs, alpha from the second, one alpha step (on 4 images) per 2 weight steps: about 9
    # minutes with a ResNet-18 seed, whose alpha steps run 9 kernel x group candidates per layer.
    # AdamW for the weights: RetinaNet's head starts at std 0.01, and after 50 SGD steps it still
    # passed the backbone almost no gradient, so alpha's task gradient was ~1e-6 against the cost
    # term's ~2e-4 and the search just took the cheapest op everywhere (the published schedule
    # trains 8 epochs of COCO before alpha starts; this one has 50 steps). With the task heard,
    # lambda 0.02 let it buy k5/k7 convs at 1.4x the seed's MAdds; 0.06 lands at the seed's cost
    # (benchmarks/alpha_gradients.py prints the two terms' gradients per layer)
    "retinanet": {
        "data": _data(short_side=160, max_size=256),
        "search": {**SEARCH_DEFAULTS, "lambda": 0.06, "tau": 10.0, "alpha_start_epoch": 1,
                   "weight_steps_per_alpha_step": 2, "alpha_batch_size": 4,
                   "alpha": {**copy.deepcopy(_ALPHA), "optimizer": {**_ALPHA["optimizer"], "lr": 3e-2}}},
        "train": {**_SYNTHETIC_TRAIN, "epochs": 4, "batch_size": 8, "grad_clip": 35.0,
                  "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "cosine", "min_lr_ratio": 0.1, "warmup_iters": 20, "warmup_ratio": 0.1}},
    },
}


def search_preset(detector: str, synthetic: bool) -> dict:
    """The architecture-adaptation config of ``detector`` (published, or the embedded default's)."""
    table = SYNTHETIC_SEARCH if synthetic else COCO_SEARCH
    return {**_identity(detector, table), **copy.deepcopy(table[detector])}


def _identity(detector: str, table: dict) -> dict:
    """The keys every detection config starts with: the task, which detector it builds, and
    that detector's own model settings (RetinaNet's FPN width)."""
    if detector not in table:
        raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(table)}")
    model = {"name": detector, "num_classes": None, "backbone_bn_eps": 1e-5}
    if detector == "retinanet":
        model["fpn_channels"] = SYNTHETIC_FPN_CHANNELS if table in (SYNTHETIC_SEARCH, SYNTHETIC_FINETUNE) else 256
    return {"task": "detection", "model": model}
