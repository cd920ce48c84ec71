"""The training engine: the loop, optimiser and schedule, exact-resume checkpoints, distributed
helpers and BN recalibration, shared by every task and by the search."""

from .trainer import (CHECKPOINT_FORMAT, ResumableSampler, Schedule, SeededItems, Trainer, build_optimizer,
                      load_checkpoint, lr_factor, place_model, progress_enabled, rng_state, set_rng_state)

__all__ = ["CHECKPOINT_FORMAT", "ResumableSampler", "Schedule", "SeededItems", "Trainer", "build_optimizer",
           "load_checkpoint", "lr_factor", "place_model", "progress_enabled", "rng_state", "set_rng_state"]
