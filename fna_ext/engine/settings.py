"""The rules of the settings the engine reads: ``train`` (the loop, its optimiser and schedule)
and ``eval``. They are checked when a config is resolved (:func:`fna_ext.config.validate`), so a
bad value is refused before any work, with its key and what is allowed."""

from __future__ import annotations

from ..config import Bool, Choice, Int, List, Number, Rule
from ..remap.core import GROUP_MODES, KERNEL_MODES, WIDTH_MODES

OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")
# how a backbone starts: the seed remapped into it (FNA), or random initialisation
INITS = ("remap", "random")

# Training settings every task's presets start from. channels_last: store conv weights NHWC
# (fna_ext.engine.place_model); null: as the backbone's family prefers (MBConv networks train
# faster NHWC, ResNets slower).
TRAIN_DEFAULTS = {"grad_clip": None, "eval_every": 0, "checkpoint_every": 0, "log_every": 20,
                  "num_workers": 4, "seed": 0, "channels_last": None}

# How parameter adaptation starts, the ``adaptation`` section every fine-tuning config has (a
# task's preset may change any of it): the remapping's width and kernel rules (FNA's ``first``
# and ``center``; Table 7's variants ``bn``, ``std``, ``l1`` and ``dilate``; grouped convs'
# ``diagonal`` or ``first`` slice, fna_ext.families.resnet.blocks), and how many
# training batches re-estimate the BN statistics first (0: none; the published segmentation
# recipe used 2000). --bn-recalibrate N sets the last.
ADAPTATION_DEFAULTS = {"remap_width": "first", "remap_kernel": "center", "remap_groups": "diagonal",
                       "bn_recalibrate": 0}


def optimizer_rules(prefix: str) -> dict[str, Rule]:
    """The rules of an optimiser section (``prefix`` is its dotted key), as build_optimizer reads it."""
    return {f"{prefix}.name": Choice(*OPTIMIZERS),
            f"{prefix}.lr": Number(0, open_low=True),
            f"{prefix}.momentum": Number(0, 1, open_high=True),
            f"{prefix}.weight_decay": Number(0),
            f"{prefix}.eps": Number(0, open_low=True),
            f"{prefix}.nesterov": Bool(),
            f"{prefix}.betas": List(Number(0, 1, open_high=True), 2)}


TRAINING_RULES: dict[str, Rule] = {
    "train.epochs": Int(1),
    "train.batch_size": Int(1),
    "train.grad_clip": Number(0, open_low=True, nullable=True),
    "train.eval_every": Int(0),
    "train.checkpoint_every": Int(0),
    "train.log_every": Int(1),
    "train.num_workers": Int(0),
    "train.seed": Int(0),
    "train.channels_last": Bool(nullable=True),
    "train.label_smoothing": Number(0, 1, open_high=True),
    **optimizer_rules("train.optimizer"),
    "train.schedule.name": Choice(*SCHEDULES),
    "train.schedule.milestones": List(Int(0)),
    "train.schedule.gamma": Number(0, open_low=True),
    "train.schedule.warmup_iters": Int(0),
    "train.schedule.warmup_ratio": Number(0, 1),
    "train.schedule.min_lr_ratio": Number(0, 1),
    "train.schedule.power": Number(0, open_low=True),
    "eval.batch_size": Int(1),
    "adaptation.remap_width": Choice(*WIDTH_MODES),
    "adaptation.remap_kernel": Choice(*KERNEL_MODES),
    "adaptation.remap_groups": Choice(*GROUP_MODES),
    "adaptation.bn_recalibrate": Int(0),
}


def check_milestones(config: dict) -> None:
    """Step milestones are epochs in increasing order."""
    milestones = config.get("train", {}).get("schedule", {}).get("milestones")
    if milestones and list(milestones) != sorted(set(milestones)):
        raise ValueError(f"train.schedule.milestones must be increasing epochs, got {milestones}")


TRAINING_CHECKS = (check_milestones,)
