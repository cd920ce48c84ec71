"""A trained detector's weight file (``model_final.pt``): the state dict together with everything
needed to rebuild and evaluate the detector without its training run: the task, the detector
kind, the backbone arch, the classes and their COCO category ids, and the config it was trained
with. It loads with ``torch.load(..., weights_only=True)``: plain tensors, strings and numbers."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...arch import Arch
from ...engine.checkpoint import load_safely
from ..base import load_trained_weights
from .detector import BUILDERS, detector_options

WEIGHTS_FORMAT = "fna_ext.detector"
_REQUIRED = ("detector", "arch", "num_classes", "class_names", "cat_ids", "config", "state_dict")


def detector_payload(model: nn.Module, config: dict, class_names: list[str], cat_ids: list[int],
                     **extra) -> dict:
    """What a trained detector's weight file holds; ``extra`` adds plain fields (metrics, ...)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}  # plain layout on disk
    return {"format": WEIGHTS_FORMAT, "task": config["task"], "detector": config["model"]["name"],
            "arch": model.arch.to_json(), "num_classes": len(class_names), "class_names": class_names,
            "cat_ids": cat_ids, "config": config, "state_dict": state, **extra}


def read_detector_file(path: str | Path) -> dict:
    """The checked contents of a detector weight file, read without unpickling code."""
    return check_detector_payload(load_safely(Path(path), "--checkpoint"), Path(path))


def check_detector_payload(payload, path) -> dict:
    """``payload`` when it is a trained detector's, else one ValueError naming ``path``."""
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a trained detector (format {WEIGHTS_FORMAT!r}); pass the "
                         "model_final.pt that python -m fna_ext.train writes")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing}; it was not written by fna_ext.train")
    if payload["detector"] not in BUILDERS:
        raise ValueError(f"{path}: unknown detector {payload['detector']!r} (known: {sorted(BUILDERS)})")
    return payload


def detector_from_payload(payload: dict, source: str = "weights") -> nn.Module:
    """The detector a payload describes, with its trained weights, in eval mode."""
    arch = Arch.parse(payload["arch"])
    model = BUILDERS[payload["detector"]](arch, int(payload["num_classes"]),
                                          **detector_options(payload["config"]["model"]))
    return load_trained_weights(model, payload["state_dict"], source, payload["detector"])


def load_detector(path: str | Path) -> tuple[nn.Module, dict]:
    """(detector in eval mode, the file's payload) from ``model_final.pt``."""
    payload = read_detector_file(path)
    return detector_from_payload(payload, str(path)), payload
