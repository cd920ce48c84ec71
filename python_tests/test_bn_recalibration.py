"""BN re-estimation before fine-tuning: the running statistics become the plain average of the
per-batch statistics, and nothing else changes."""

import pytest
import torch
from torch import nn

from fna_ext.engine.bn_recalibration import recalibrate_batch_norm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.1), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.BatchNorm2d(2))


def test_running_stats_are_the_average_of_the_batches():
    net = _net().eval()
    batches = [torch.randn(5, 3, 8, 8) * (i + 1) + i for i in range(3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    used = recalibrate_batch_norm(net, iter(batches), num_batches=3)
    assert used == 3 and not net.training  # the mode is restored
    # independent reference: the first BN's input per batch, its mean and unbiased variance
    with torch.no_grad():
        pre = [net[0](b) for b in batches]
    means = torch.stack([p.mean(dim=(0, 2, 3)) for p in pre]).mean(0)
    variances = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in pre]).mean(0)
    torch.testing.assert_close(net[1].running_mean, means, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, variances, rtol=1e-5, atol=1e-5)
    assert net[1].momentum == 0.1  # restored
    for key, value in weights.items():
        torch.testing.assert_close(net.state_dict()[key], value)


def test_uses_fewer_batches_when_the_data_runs_out():
    net = _net()
    assert recalibrate_batch_norm(net, iter([torch.randn(2, 3, 8, 8)]), num_batches=5) == 1
    assert net.training


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match="--bn-recalibrate"):
        recalibrate_batch_norm(_net(), iter([]), num_batches=0)
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batch_norm(_net(), iter([]), num_batches=2)
