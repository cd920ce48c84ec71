"""The training engine: the loop, optimiser and schedule, exact-resume checkpoints, distributed
helpers and BN recalibration, shared by every task and by the search."""

from .checkpoint import CHECKPOINT_FORMAT, CheckpointManager, Progress, load_checkpoint
from .rng import rng_state, set_rng_state
from .trainer import (ResumableSampler, Schedule, SeededItems, Trainer, build_optimizer, lr_factor, place_model,
                      progress_enabled, to_device)

__all__ = ["CHECKPOINT_FORMAT", "CheckpointManager", "Progress", "to_device", "ResumableSampler", "Schedule", "SeededItems", "Trainer", "build_optimizer",
           "load_checkpoint", "lr_factor", "place_model", "progress_enabled", "rng_state", "set_rng_state"]
