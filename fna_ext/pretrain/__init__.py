"""Pretraining the project's own seed on the synthetic shapes: see :mod:`.core`."""

from .core import (  # noqa: F401
    PretrainResult, default_seed_path, run_dir_for, pretrain_config, classification_datasets,
    cross_entropy_loss, top1_accuracy, zero_init_residual, pretrain_seed, seed_network, build_default_seed,
    default_seed_weights, seed_weights_path, DEFAULT_SEED_NAME, DEFAULT_MINUTES, MIN_IMAGE_SIZE,
    DEFAULT_IMAGE_SIZE, PRETRAIN_PRESET,
)
