"""Re-estimating BatchNorm statistics before fine-tuning (``--bn-recalibrate N``).

A remapped network carries its seed's running means and variances, but its layers now see other
inputs: other kernels, widths and depths before them, another task's images. Running N batches
through the network in training mode, with every BN's running statistics reset and averaged
equally over the N batches (``momentum=None``: a cumulative average), gives statistics of the
network as it now is. The weights do not change."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: Iterable[torch.Tensor], num_batches: int,
                           device: str | torch.device = "cpu") -> int:
    """Replaces the running statistics of every BN of ``model`` with their average over the first
    ``num_batches`` batches of ``images``; returns how many batches were used (fewer when
    ``images`` runs out). The model's mode and the BNs' momenta are restored afterwards."""
    if num_batches < 1:
        raise ValueError(f"--bn-recalibrate must be a positive number of batches, got {num_batches}")
    norms = batch_norms(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    used = 0
    try:
        model.train()
        for batch in images:
            if used == num_batches:
                break
            model(batch.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("--bn-recalibrate: the training data gave no batch")
    return used
