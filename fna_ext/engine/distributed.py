"""Multi-process runs under ``torchrun`` (gloo on CPU, NCCL on GPU), written so that a step's
result does not depend on how many processes share its global batch:

- every process loads its slice of the same global batch;
- batch statistics are global: :func:`batch_norm` (and :class:`GlobalBatchNorm2d`, which
  replaces the networks' BatchNorm2d) reduce their sums over all processes;
- losses are normalised by global counts (:func:`global_sum`), and gradients are summed, not
  averaged, so the sum of the processes' gradients is the one-process gradient;
- rank 0 chooses a sampled path and broadcasts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass
class Context:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT: Context | None = None


def current() -> Context | None:
    """The running multi-process context, or None in a single process."""
    return _CONTEXT


def init_from_env(device: str) -> Context | None:
    """Joins the process group ``torchrun`` describes (WORLD_SIZE > 1), or returns None."""
    global _CONTEXT
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size())
    return _CONTEXT


def shutdown() -> None:
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (itself in a single process); no gradient flows."""
    if _CONTEXT is None:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def sum_gradients(parameters) -> None:
    """All-reduces (sums) every gradient that exists, in one flat buffer per dtype."""
    if _CONTEXT is None:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_ints(values: list[int]) -> list[int]:
    """Rank 0's ``values`` on every process."""
    if _CONTEXT is None:
        return values
    tensor = torch.tensor(values, dtype=torch.long)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


class _GlobalStats(torch.autograd.Function):
    """(mean, var) per channel over every process's batch, with the matching backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        # two passes (mean, then squared deviations): E[x^2] - mean^2 loses float32 precision
        dims, c = [0, 2, 3], x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        sums = torch.cat([x.sum(dims), count])
        dist.all_reduce(sums)
        n = sums[-1]
        mean = sums[:c] / n
        squares = (x - mean.view(1, c, 1, 1)).square().sum(dims)
        dist.all_reduce(squares)
        var = squares / n
        ctx.save_for_backward(x, mean)
        ctx.n = n
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor):
        x, mean = ctx.saved_tensors
        grads = torch.cat([grad_mean, grad_var])
        dist.all_reduce(grads)  # every process's loss depends on the shared statistics
        c = x.shape[1]
        g_mean, g_var = grads[:c], grads[c:]
        shape = (1, c, 1, 1)
        grad_x = (g_mean.view(shape) + 2 * g_var.view(shape) * (x - mean.view(shape))) / ctx.n
        return grad_x


def batch_norm(x: torch.Tensor, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Training-mode batch norm with statistics over the global batch (local in one process)."""
    if _CONTEXT is None:
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    mean, var = _GlobalStats.apply(x)
    shape = (1, -1, 1, 1)
    out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's batch; the same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _CONTEXT is None or not self.training:
            return super().forward(x)
        mean, var = _GlobalStats.apply(x)
        if self.track_running_stats:
            with torch.no_grad():
                # on x's device: NCCL reduces only CUDA tensors
                n = global_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
                self.num_batches_tracked += 1
        shape = (1, -1, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def batch_norm_class() -> type[nn.BatchNorm2d]:
    """The BN class a block built now should use: global statistics under ``torchrun``."""
    return GlobalBatchNorm2d if _CONTEXT is not None else nn.BatchNorm2d
