"""Reading and writing networks for remapping: weights with their arch embedded, and the seed
network of a weight file (the family of its arch loads the file)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..arch import Arch
from ..atomic import atomic_torch_save
from ..families import get_family


WEIGHTS_FORMAT = "fna_ext.weights"


def save_weights(path, network: nn.Module, **record) -> Path:
    """Writes ``network``'s weights with its arch embedded (loads with weights_only=True)."""
    payload = {"format": WEIGHTS_FORMAT, "arch": network.arch.to_dict(),
               "state_dict": network.state_dict(), **record}
    return atomic_torch_save(payload, path)


def _embedded_arch(path) -> Arch | None:
    """The arch an fna_ext weight file (``format: fna_ext.weights``) names; None for any other
    file, including other tools' checkpoints whose ``arch`` is a model name."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None  # load_seed_weights reports unreadable files with the reason
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT or "arch" not in payload:
        return None
    try:
        return Arch.from_dict(payload["arch"])
    except ValueError as err:
        raise ValueError(f"{path}: its embedded arch is not valid: {err}") from None


def declared_seed_arch(seed_arch: str | None, weights) -> Arch | None:
    """The seed's arch as the user gave it: ``--seed-arch``, else the one an fna_ext weight file
    embeds (a seed pretrained with ``--arch``), else None (the default seed, or a foreign file
    whose arch only ``--seed-arch`` can name). Presets that adjust to the seed read it."""
    if seed_arch:
        return Arch.from_arg(seed_arch, "--seed-arch")
    return _embedded_arch(weights) if weights else None


def load_seed_network(path, seed_arch: Arch | str | None = None) -> nn.Module:
    """The seed network of a weight file, without classifier: its arch is ``seed_arch``, else the
    one embedded in the file (fna_ext files), else MobileNetV2."""
    if isinstance(seed_arch, str):
        seed_arch = Arch.from_arg(seed_arch, "--seed-arch")
    seed_arch = seed_arch or _embedded_arch(path) or Arch.parse("mobilenet_v2")
    family = get_family(seed_arch.family)
    seed = family.build_network(seed_arch, num_classes=None, bn_eps=family.seed_bn_eps(path))
    family.load_seed_weights(seed, path, skip_classifier=True)
    return seed
