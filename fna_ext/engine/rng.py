"""Every random number generator a training step may draw from, saved and restored as tensors and
lists (loadable with ``weights_only=True``)."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict:
    """Every RNG a training step may draw from, as tensors and lists (loadable with
    ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # the current device's only: a resume may see other GPUs (or fewer) than this run did
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if isinstance(saved, torch.Tensor):
            torch.cuda.set_rng_state(saved)
        else:  # older checkpoints: one state per GPU then visible
            for index, device_state in enumerate(saved[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, index)
