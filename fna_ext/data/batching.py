"""Batches of detection samples: images of different sizes padded into one tensor, and a
DataLoader whose shuffling and augmentation a single seed reproduces."""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``size_divisor`` (the backbone's total stride)."""
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def collate_detection(batch: list[tuple[torch.Tensor, dict]], size_divisor: int = 32
                      ) -> tuple[torch.Tensor, list[dict]]:
    """Pads every image at the bottom and right with zeros to the batch's largest size, rounded
    up to ``size_divisor``; boxes keep their coordinates since the top-left corner stays put.
    Each target's ``size`` still says which part of the padded image is real."""
    if not batch:
        raise ValueError("collate_detection: empty batch")
    if size_divisor < 1:
        raise ValueError(f"collate_detection: size_divisor must be >= 1, got {size_divisor}")
    images, targets = zip(*batch)
    height, width = padded_size(max(im.shape[-2] for im in images), max(im.shape[-1] for im in images),
                                size_divisor)
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for slot, image in zip(padded, images):
        slot[:, :image.shape[-2], :image.shape[-1]].copy_(image)
    return padded, list(targets)


def seed_worker(worker_id: int) -> None:
    """Seeds numpy and Python in a DataLoader worker from the torch seed DataLoader gave it
    (itself drawn from the loader's seeded generator), for transforms that use them."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def detection_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                     seed: int = 0, drop_last: bool = False, size_divisor: int = 32,
                     sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader of ``collate_detection`` batches; the same ``seed`` gives the same order and,
    with workers, the same augmentations (with ``num_workers=0`` the transforms draw from the main
    process's generator, so ``torch.manual_seed`` fixes them)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle=False with a sampler: the sampler decides the order "
                         "(e.g. DistributedSampler(shuffle=True))")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last,
                      collate_fn=functools.partial(collate_detection, size_divisor=size_divisor),
                      generator=torch.Generator().manual_seed(seed), worker_init_fn=seed_worker,
                      persistent_workers=num_workers > 0)
