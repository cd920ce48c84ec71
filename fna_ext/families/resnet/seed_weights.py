"""Loading pretrained ResNet weights: torchvision's layout (``conv1``, ``bn1``, ``layerS.J.*``,
``fc``) and fna_ext's own (:func:`fna_ext.remap.save_weights`: the network's keys). Blocks keep
torchvision's inner names, so a key maps by renaming its prefix; every shape is checked and nothing
is copied unless everything fits."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..mbconv.seed_weights import LoadReport, read_state_dict  # layout-independent file reading

# layout -> (a key only it has, [(fna_ext prefix pattern, file prefix)], classifier prefix in the file)
_STAGE = re.compile(r"^stages\.(\d+)\.")
LAYOUTS = {
    "torchvision": ("layer1.0.conv1.weight", [("stem.conv.", "conv1."), ("stem.bn.", "bn1.")], "fc."),
    "fna_ext": ("stages.0.0.conv1.weight", [], "classifier."),
}


def detect_layout(state: dict) -> str | None:
    return next((name for name, (marker, _, _) in LAYOUTS.items() if marker in state), None)


def source_key(key: str, layout: str) -> str:
    """The file's key for the network's ``key`` in ``layout``."""
    if layout == "fna_ext":
        return key
    _, renames, classifier = LAYOUTS[layout]
    for ours, theirs in renames:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if key.startswith("classifier."):
        return classifier + key[len("classifier."):]
    return _STAGE.sub(lambda m: f"layer{int(m[1]) + 1}.", key)


def _problems(missing, mismatched, unexpected) -> str:
    return "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                     for what, keys in (("missing keys", missing), ("shape mismatches", mismatched),
                                        ("unexpected keys", unexpected)) if keys)


def load_seed_weights(model: nn.Module, path: str | Path, *, skip_classifier: bool = False) -> LoadReport:
    """Copies the weights in ``path`` into ``model`` (a ResNet-family network). Every tensor of the
    network must be found with its shape and every tensor of the file must have a place, except the
    classifier when the network has none or ``skip_classifier`` is set; else one ValueError line
    names the keys."""
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout is None:
        raise ValueError(f"{path}: unrecognised ResNet weight layout (first keys: {list(state)[:5]}); "
                         "expected torchvision (conv1, layer1.0.conv1, fc) or fna_ext (stem.conv, stages.0.0.conv1) keys")
    targets = model.state_dict()
    copies, missing, mismatched, placed = [], [], [], set()  # placed: file keys the network has a place for
    for key, tensor in targets.items():
        if skip_classifier and key.startswith("classifier."):
            continue
        source = source_key(key, layout)
        placed.add(source)
        if source not in state:
            if not key.endswith("num_batches_tracked"):  # absent from some exporters, never needed
                missing.append(source)
        elif state[source].shape != tensor.shape:
            mismatched.append(f"{source}: file {tuple(state[source].shape)} vs network {tuple(tensor.shape)} ({key})")
        else:
            copies.append((key, source))
    optional = LAYOUTS[layout][2] if model.classifier is None or skip_classifier else None
    ignored = [k for k in state if k not in placed and optional and k.startswith(optional)]
    unexpected = [k for k in state if k not in placed and k not in ignored and not k.endswith("num_batches_tracked")]
    if missing or mismatched or unexpected:
        raise ValueError(f"{path} ({layout} layout) does not fit the network {model.arch}: "
                         + _problems(missing, mismatched, unexpected))
    with torch.no_grad():
        for key, source in copies:
            targets[key].copy_(state[source])
    return LoadReport(str(path), layout, len(copies), ignored)
